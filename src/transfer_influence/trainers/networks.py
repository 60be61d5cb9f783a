"""The networks of the built-in trainer, each as G independent models in one grouped network.

Subset models are small, so one of them leaves a GPU mostly idle. Stacking G of them as a
network whose convolutions have ``groups=G`` (and whose batch norms and heads are per model)
is exactly G independent models — no weight, statistic or gradient is shared — but runs as
large kernels. ``recipe.arch`` picks the network:

- ``"cnn"``: a small ResNet-style CNN for 16-32 px (stem, one pooled stage per width, residual
  pairs on the first and last stages); fast enough to train hundreds of models on a CPU.
- ``"resnet18"``: the ResNet-18 of the paper (torchvision's layout: BasicBlocks of widths
  64-128-256-512, strides 1-2-2-2, projection shortcuts). Images of 64 px or less get the
  low-resolution stem (a 3x3 convolution, stride 1, no max pool) instead of the 7x7 stride-2
  convolution and max pool that are made for 224 px.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .stack import Recipe

__all__ = [
    "ARCHS",
    "DEFAULT_POOL",
    "DEFAULT_WIDTHS",
    "StackedNetwork",
    "build_network",
    "forward_macs",
]

ARCHS = ("cnn", "resnet18")
DEFAULT_WIDTHS = {"cnn": (64, 128, 256), "resnet18": (64, 128, 256, 512)}
DEFAULT_POOL = {"cnn": "max", "resnet18": "mean"}
LOW_RES_STEM = 64  # pixels: at or below this, ResNet-18 keeps the full resolution in its stem


def _conv(models: int, c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(
        models * c_in, models * c_out, kernel, stride, kernel // 2, groups=models, bias=False
    )


def _norm(models: int, channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(models * channels)


class StackedNetwork(nn.Module):
    """G models: a body (``self.stem``, ``self.stages``) whose last stage has ``widths[-1]``
    channels per model, globally pooled, with per-model linear heads."""

    def __init__(self, models: int, widths: tuple[int, ...], classes: int, pool: str) -> None:
        super().__init__()
        self.models, self.widths, self.classes, self.pool = models, widths, classes, pool
        self.head_weight = nn.Parameter(torch.zeros(models, self.feature_dim, classes))
        self.head_bias = nn.Parameter(torch.zeros(models, classes))

    @property
    def feature_dim(self) -> int:
        return self.widths[-1] * (2 if self.pool == "max+mean" else 1)

    def reset_parameters(self, seeds: list[int]) -> None:
        """Initialise model g's slice of every weight from ``seeds[g]`` alone."""
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    per = module.out_channels // self.models
                    bound = math.sqrt(6.0 / (module.weight[0].numel()))  # He uniform
                    for g, gen in enumerate(generators):
                        shape = module.weight[g * per : (g + 1) * per].shape
                        module.weight[g * per : (g + 1) * per] = (
                            torch.rand(shape, generator=gen) * 2 - 1
                        ) * bound
                elif isinstance(module, nn.BatchNorm2d):
                    module.reset_parameters()
            bound = 1.0 / math.sqrt(self.feature_dim)
            for g, gen in enumerate(generators):
                shape = self.head_weight[g].shape
                self.head_weight[g] = (torch.rand(shape, generator=gen) * 2 - 1) * bound
            self.head_bias.zero_()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: batch x (G*3) x H x W  ->  batch x G x feature_dim (globally pooled)."""
        x = self.stages(self.stem(x))
        if self.pool == "mean":
            return x.mean(dim=(2, 3)).view(x.shape[0], self.models, -1)
        pooled = torch.amax(x, dim=(2, 3)).view(x.shape[0], self.models, -1)
        if self.pool == "max+mean":
            mean = x.mean(dim=(2, 3)).view(x.shape[0], self.models, -1)
            pooled = torch.cat([pooled, mean], dim=2)
        return pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x).float()
        return torch.einsum("bgf,gfc->bgc", features, self.head_weight) + self.head_bias


class _PooledStage(nn.Module):
    def __init__(self, models: int, c_in: int, c_out: int, residual: bool) -> None:
        super().__init__()
        self.conv = _conv(models, c_in, c_out)
        self.bn = _norm(models, c_out)
        self.residual = (
            nn.Sequential(
                _conv(models, c_out, c_out),
                _norm(models, c_out),
                nn.ReLU(inplace=True),
                _conv(models, c_out, c_out),
                _norm(models, c_out),
                nn.ReLU(inplace=True),
            )
            if residual
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(F.max_pool2d(self.conv(x), 2)), inplace=True)
        return x + self.residual(x) if self.residual is not None else x


class StackedResNet(StackedNetwork):
    """G small ResNet-style CNNs (``recipe.arch = "cnn"``)."""

    def __init__(
        self, models: int, widths: tuple[int, ...], classes: int, pool: str = "max"
    ) -> None:
        super().__init__(models, widths, classes, pool)
        self.stem = nn.Sequential(
            _conv(models, 3, widths[0]), _norm(models, widths[0]), nn.ReLU(inplace=True)
        )
        stages, c_in = [], widths[0]
        for i, width in enumerate(widths):
            stages.append(_PooledStage(models, c_in, width, residual=i in (0, len(widths) - 1)))
            c_in = width
        self.stages = nn.Sequential(*stages)


class _BasicBlock(nn.Module):
    def __init__(self, models: int, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv(models, c_in, c_out, 3, stride)
        self.bn1 = _norm(models, c_out)
        self.conv2 = _conv(models, c_out, c_out)
        self.bn2 = _norm(models, c_out)
        self.shortcut = (
            nn.Sequential(_conv(models, c_in, c_out, 1, stride), _norm(models, c_out))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x), inplace=True)


class StackedResNet18(StackedNetwork):
    """G ResNet-18s (``recipe.arch = "resnet18"``), two BasicBlocks per width."""

    def __init__(
        self,
        models: int,
        widths: tuple[int, ...],
        classes: int,
        pool: str = "mean",
        low_res: bool = True,
    ) -> None:
        super().__init__(models, widths, classes, pool)
        stem: list[nn.Module] = [
            _conv(models, 3, widths[0], 3 if low_res else 7, 1 if low_res else 2),
            _norm(models, widths[0]),
            nn.ReLU(inplace=True),
        ]
        if not low_res:
            stem.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem)
        blocks, c_in = [], widths[0]
        for i, width in enumerate(widths):
            blocks += [_BasicBlock(models, c_in, width, 1 if i == 0 else 2)]
            blocks += [_BasicBlock(models, width, width, 1)]
            c_in = width
        self.stages = nn.Sequential(*blocks)


def _network(models: int, recipe: Recipe, classes: int, size: int) -> StackedNetwork:
    if recipe.arch == "resnet18":
        return StackedResNet18(models, recipe.widths, classes, recipe.pool, size <= LOW_RES_STEM)
    return StackedResNet(models, recipe.widths, classes, recipe.pool)


def build_network(
    seeds: list[int], recipe: Recipe, classes: int, size: int, device: torch.device
) -> StackedNetwork:
    """One model per seed for ``size``-pixel images, initialised from it, on ``device``
    (channels-last on CUDA)."""
    net = _network(len(seeds), recipe, classes, size)
    net.reset_parameters(seeds)
    net = net.to(device)
    return net.to(memory_format=torch.channels_last) if device.type == "cuda" else net


def forward_macs(recipe: Recipe, size: int) -> int:
    """Multiply-accumulates of one model's forward pass on one ``size`` x ``size`` image,
    counted over every convolution of the network as built (on the meta device: no memory)."""
    net = _network(1, recipe, 1, size).to("meta")
    counted = []

    def count(module: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        counted.append(output.numel() * per_output)

    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(count)
    net.eval()
    with torch.no_grad():
        net.features(torch.empty(1, 3, size, size, device="meta"))
    return sum(counted)
