"""Fixed-feature transfer: multinomial logistic regression on frozen features, G at once."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["fit_linear_probe"]


def fit_linear_probe(
    train: torch.Tensor,
    labels: torch.Tensor,
    test: torch.Tensor,
    classes: int,
    l2: float,
    steps: int,
) -> torch.Tensor:
    """Fit G independent heads (features G x N x F) with L-BFGS; return test logits G x Nt x C.

    Features are standardised with each model's training statistics. The G problems share
    nothing but the optimiser's line search, which only couples their step sizes.
    """
    mean = train.mean(dim=1, keepdim=True)
    std = train.std(dim=1, keepdim=True) + 1e-5
    x = (train - mean) / std
    models, _, dim = x.shape
    weight = torch.zeros(models, dim, classes, device=x.device, requires_grad=True)
    bias = torch.zeros(models, 1, classes, device=x.device, requires_grad=True)
    target = labels.repeat(models)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=steps,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = torch.bmm(x, weight) + bias
        loss = F.cross_entropy(logits.reshape(-1, classes), target) * models
        loss = loss + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return torch.bmm((test - mean) / std, weight) + bias
