"""The built-in CNN trainer: it learns, its transfer beats an untrained backbone, it is
deterministic on CPU, and it runs on CUDA when there is one."""

import json

import numpy as np
import pytest
import torch

from transfer_influence.subsets import Job
from transfer_influence.trainers.builtin import MODES, BuiltinTrainer
from transfer_influence.trainers.networks import StackedResNet, build_network, forward_macs
from transfer_influence.trainers.stack import Recipe, extract_features

DEMO = {"kind": "demo", "source_per_class": 80, "target_per_class": 100}
RECIPE = {"widths": [16, 32, 64], "epochs": 8, "batch_size": 64, "stack": 2}


def _trainer(**recipe):
    return BuiltinTrainer(
        DEMO, [dict(DEMO, name="stripes")], ("fixed_feature", "finetune"), dict(RECIPE, **recipe)
    )


def _jobs(groups=(0, 1, 2, 3, 8, 9, 10, 11)):
    mask = np.zeros(16, dtype=bool)
    mask[list(groups)] = True
    return [Job(0, 11, mask), Job(1, 12, mask)]


def _accuracy(logits, labels):
    return float((logits.argmax(1) == labels).mean())


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    trainer = _trainer()
    return trainer, trainer.train(_jobs())


def test_pretraining_learns_the_source(trained):
    _, results = trained
    for result in results:  # 12 classes: chance is 8%
        assert result.source_accuracy > 0.5, result.source_accuracy
        assert result.status == "ok" and result.seconds > 0


def test_transfer_beats_an_untrained_backbone(trained):
    trainer, results = trained
    labels = trainer.targets[0].test.labels
    net = StackedResNet(2, trainer.recipe.widths, 16)
    net.reset_parameters([11, 12])
    untrained = trainer.fixed_feature_logits(net, trainer.targets[0])
    for g, result in enumerate(results):
        trained_accuracy = _accuracy(result.logits["stripes/fixed_feature"], labels)
        control = _accuracy(untrained[g], labels)
        assert trained_accuracy > control + 0.1, (trained_accuracy, control)


def test_finetune_mode_gives_usable_logits(trained):
    trainer, results = trained
    labels = trainer.targets[0].test.labels
    for result in results:
        logits = result.logits["stripes/finetune"]
        assert logits.shape == (labels.size, 4) and np.isfinite(logits).all()
        assert _accuracy(logits, labels) > 0.3  # 4 classes: chance is 25%


@pytest.mark.slow
def test_deterministic_on_cpu(trained):
    trainer, results = trained
    again = _trainer().train(_jobs())
    for a, b in zip(results, again, strict=True):
        for key in a.logits:
            np.testing.assert_array_equal(a.logits[key], b.logits[key])
        assert a.source_accuracy == b.source_accuracy


def test_bad_recipe_and_modes_are_refused():
    with pytest.raises(ValueError, match="unknown recipe key 'epoch'"):
        BuiltinTrainer(DEMO, [dict(DEMO, name="t")], recipe={"epoch": 3})
    with pytest.raises(ValueError, match="unknown transfer mode"):
        BuiltinTrainer(DEMO, [dict(DEMO, name="t")], modes=["linear"])
    with pytest.raises(ValueError, match="needs a name"):
        BuiltinTrainer(DEMO, [DEMO])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_recipe_trains(monkeypatch):
    monkeypatch.setenv("TRANSFER_INFLUENCE_DEVICE", "cuda")
    trainer = _trainer()
    assert trainer.device.type == "cuda"
    results = trainer.train(_jobs())
    labels = trainer.targets[0].test.labels
    for result in results:
        assert result.source_accuracy > 0.5
        assert _accuracy(result.logits["stripes/fixed_feature"], labels) > 0.3


def test_groups_beyond_classes(tmp_path):
    """Masks over superclasses: a model trains on every class of the groups in its mask."""
    from transfer_influence.datasets.synthetic import demo_dataset

    names = demo_dataset("source", "test", source_per_class=10).class_names
    mapping = {name: f"super{i // 4}" for i, name in enumerate(names)}  # 4 groups of 4
    (tmp_path / "coarse.json").write_text(json.dumps(mapping))
    trainer = BuiltinTrainer(
        DEMO,
        [dict(DEMO, name="stripes")],
        recipe=dict(RECIPE, epochs=1),
        groups=str(tmp_path / "coarse.json"),
    )
    assert trainer.describe().groups == tuple(f"super{g}" for g in range(4))
    mask = np.array([True, False, False, True])
    [result] = trainer.train([Job(0, 3, mask)])
    assert result.logits["stripes/fixed_feature"].shape == (len(trainer.targets[0].test), 4)
    assert 0.0 <= result.source_accuracy <= 1.0
    with pytest.raises(ValueError, match="a mask over 4 groups, got shape"):
        trainer.train([Job(0, 3, np.ones(16, dtype=bool))])  # a mask over classes, not groups
    (tmp_path / "partial.json").write_text(json.dumps({names[0]: "a"}))
    with pytest.raises(ValueError, match="no group for 15 source class"):
        BuiltinTrainer(DEMO, [dict(DEMO, name="s")], groups=str(tmp_path / "partial.json"))


FAST_KNOBS = {"pool": "max+mean", "low_res_size": 8, "low_res_epochs": 1}


@pytest.mark.parametrize(
    "knobs",
    [{}, FAST_KNOBS, {"data_order": "coupled"}],
    ids=["default", "maxmean-lowres", "coupled"],
)
def test_a_stack_trains_exactly_its_models_independently(knobs):
    """Model g of a stack ends where the same model trained alone ends: nothing is shared."""
    from transfer_influence.trainers.stack import Recipe, train_stack

    torch.manual_seed(0)
    images = torch.randint(0, 256, (64, 16, 16, 3), dtype=torch.uint8)
    labels = torch.randint(0, 5, (64,))
    members = [np.arange(0, 40), np.arange(20, 64)]
    recipe = Recipe(widths=(8, 16), epochs=2, batch_size=16, **knobs)
    low = recipe.low_res_epochs
    stacked = StackedResNet(2, recipe.widths, 5, recipe.pool)
    stacked.reset_parameters([1, 2])
    train_stack(stacked, images, labels, members, [1, 2], recipe, 2, recipe.lr, None, low)
    for g, seed in enumerate([1, 2]):
        alone = StackedResNet(1, recipe.widths, 5, recipe.pool)
        alone.reset_parameters([seed])
        train_stack(alone, images, labels, [members[g]], [seed], recipe, 2, recipe.lr, None, low)
        got = stacked.head_weight[g].detach()
        np.testing.assert_allclose(
            got.numpy(), alone.head_weight[0].detach().numpy(), rtol=1e-3, atol=1e-4
        )
        x = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8)
        np.testing.assert_allclose(
            extract_features(stacked, x)[g].numpy(),
            extract_features(alone, x)[0].numpy(),
            rtol=1e-3,
            atol=1e-4,
        )


def test_progressive_resizing_and_pooling_change_the_model():
    """The fast-recipe knobs take effect: low-resolution epochs train a different model,
    max+mean pooling doubles the features."""
    from transfer_influence.trainers.stack import Recipe, train_stack

    torch.manual_seed(0)
    images = torch.randint(0, 256, (48, 16, 16, 3), dtype=torch.uint8)
    labels = torch.randint(0, 4, (48,))
    weights = []
    for low_res_epochs in (0, 1):
        recipe = Recipe(widths=(8, 16), epochs=2, batch_size=16, low_res_size=8)
        net = StackedResNet(1, recipe.widths, 4, "max+mean")
        net.reset_parameters([3])
        train_stack(net, images, labels, [np.arange(48)], [3], recipe, 2, 0.2, None, low_res_epochs)
        weights.append(net.head_weight.detach().clone())
        assert extract_features(net, images[:5]).shape == (1, 5, 32)
    assert not torch.allclose(weights[0], weights[1])


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"pool": "min"}, "recipe.pool must be one of max, max.mean, mean"),
        ({"low_res_size": 16, "low_res_epochs": 9}, "low_res_epochs"),
        ({"data_order": "shared"}, "recipe.data_order must be one of independent, coupled"),
    ],
)
def test_recipe_refuses_bad_fast_knobs(knobs, message):
    from transfer_influence.trainers.stack import Recipe

    with pytest.raises(ValueError, match=message):
        Recipe(epochs=6, **knobs)


def test_coupled_order_shows_a_seed_s_models_their_common_images_alike():
    """Two models of one seed, half their images in common: each passes over exactly its own
    images, and they meet the common ones in the same order, cropped and flipped alike. With
    the independent order (or another seed) the common images come in unrelated orders."""
    from transfer_influence.trainers.stack import _plan_batches

    members = [np.arange(0, 60), np.arange(30, 90)]
    common = np.arange(30, 60)

    def first_pass(seeds, coupled):
        plan = _plan_batches(members, 100, 10, 12, seeds, 4, True, coupled)
        streams = []
        for g in range(2):
            index, dy, dx, flip = (t[:, g].reshape(-1)[:60].numpy() for t in plan)
            assert sorted(index) == members[g].tolist()  # every image once per pass
            shared = np.isin(index, common)
            streams.append(np.stack([index[shared], dy[shared], dx[shared], flip[shared]]))
        return streams

    a, b = first_pass([5, 5], coupled=True)
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a[1])) > 1 and 0 < a[3].mean() < 1  # crops and flips still vary
    for seeds, coupled in (([5, 5], False), ([5, 6], True)):
        a, b = first_pass(seeds, coupled)
        assert (a[0] != b[0]).mean() > 0.5


def _counted_macs(net: torch.nn.Module, size: int) -> int:
    counted = []

    def count(module, inputs, output):
        per_output = module.in_channels // module.groups * module.kernel_size[0] ** 2
        counted.append(output.numel() * per_output)

    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(count)
    net.eval()
    with torch.no_grad():
        net.features(torch.zeros(1, 3, size, size))
    return sum(counted)


@pytest.mark.parametrize("widths, size", [((16, 32, 64), 32), ((8, 16, 32, 64), 16)])
def test_forward_macs_counts_every_convolution(widths, size):
    """The dry-run's cost estimate rests on this count: check it against the real network and
    against the closed form for the small CNN (stem, a conv per stage, residual pairs on the
    first and last stages after pooling)."""
    recipe = Recipe(widths=widths)
    net = build_network([0], recipe, 10, size, torch.device("cpu"))
    assert forward_macs(recipe, size) == _counted_macs(net, size)
    closed, c_in, side = size * size * 3 * widths[0] * 9, widths[0], size
    for i, width in enumerate(widths):
        closed += side * side * c_in * width * 9
        side //= 2
        if i in (0, len(widths) - 1):
            closed += 2 * side * side * width * width * 9
        c_in = width
    assert forward_macs(recipe, size) == closed


def test_resnet18_is_torchvisions_layout_with_a_low_resolution_stem():
    """ResNet-18 as torchvision builds it: 11,176,512 backbone weights (its 11,689,512 less the
    1000-way fc's 513,000) and 1,813,561,344 convolution multiply-accumulates at 224 px (with
    the fc's 512,000: the usual 1.814 G); at 32 px the low-resolution stem keeps the full
    32 x 32 grid; features are mean-pooled as torchvision's."""
    full = build_network([0], Recipe(arch="resnet18"), 10, 224, torch.device("cpu"))
    backbone = sum(p.numel() for n, p in full.named_parameters() if "head" not in n)
    assert backbone == 11_176_512
    assert forward_macs(Recipe(arch="resnet18"), 224) == 1_813_561_344
    assert _counted_macs(full, 224) == forward_macs(Recipe(arch="resnet18"), 224)
    small = build_network([0, 1], Recipe(arch="resnet18", widths=(8, 16, 32, 64)), 3, 32,
                          torch.device("cpu"))  # fmt: skip
    assert full.stem[0].kernel_size == (7, 7) and isinstance(full.stem[-1], torch.nn.MaxPool2d)
    assert small.stem[0].kernel_size == (3, 3) and small.stem[0].stride == (1, 1)
    assert small.pool == "mean" and Recipe().pool == "max"
    with torch.no_grad():
        assert small.features(torch.zeros(5, 6, 32, 32)).shape == (5, 2, 64)
    with pytest.raises(ValueError, match="four channel counts"):
        Recipe(arch="resnet18", widths=(8, 16))
    with pytest.raises(ValueError, match="recipe.arch must be one of cnn, resnet18"):
        Recipe(arch="vgg")


@pytest.mark.slow
def test_a_resnet18_trains_and_transfers_at_32_px(tmp_path, monkeypatch):
    """One full-width ResNet-18 pretrained on 32 px folders and transferred both ways."""
    from conftest import make_image_folder

    monkeypatch.setenv("TRANSFER_INFLUENCE_CACHE", str(tmp_path / "cache"))
    make_image_folder(tmp_path / "source", list("abcd"), 8, ("train", "test"), size=32)
    make_image_folder(tmp_path / "target", ["x", "y"], 8, ("train", "test"), size=32)
    recipe = {"arch": "resnet18", "epochs": 1, "batch_size": 16, "stack": 1,
              "finetune_epochs": 1, "probe_steps": 10}  # fmt: skip
    trainer = BuiltinTrainer(
        {"kind": "folder", "path": str(tmp_path / "source")},
        [{"kind": "folder", "path": str(tmp_path / "target"), "name": "t"}],
        ("fixed_feature", "finetune"),
        recipe,
    )
    (result,) = trainer.train([Job(0, 3, np.array([True, True, False, True]))])
    assert result.status == "ok" and 0 <= result.source_accuracy <= 1
    for mode in ("fixed_feature", "finetune"):
        logits = result.logits[f"t/{mode}"]
        assert logits.shape == (16, 2) and np.isfinite(logits).all()
    assert trainer.estimate_seconds_per_model() > 0


def test_streamed_batches_train_the_same_models_as_images_held_on_the_device(monkeypatch):
    """A source too large for the device is read a batch at a time from host memory (the
    memory-mapped cache); the models must not notice."""
    results = {}
    for choice in ("never", "always"):
        monkeypatch.setenv("TRANSFER_INFLUENCE_STREAM", choice)
        small = dict(DEMO, source_per_class=20, target_per_class=25)
        recipe = dict(RECIPE, widths=[8, 16, 32], epochs=1)
        trainer = BuiltinTrainer(small, [dict(small, name="stripes")], ("fixed_feature",), recipe)
        assert trainer.source_placement == ("streamed" if choice == "always" else "on the device")
        results[choice] = trainer.train(_jobs())
        assert ("source" in trainer._on_device) == (choice == "never")
    for held, streamed in zip(results["never"], results["always"], strict=True):
        np.testing.assert_array_equal(
            held.logits["stripes/fixed_feature"], streamed.logits["stripes/fixed_feature"]
        )
        assert held.source_accuracy == streamed.source_accuracy


def test_streaming_is_decided_by_the_memory_there_is(monkeypatch):
    from transfer_influence.trainers.builtin import streams_source

    cpu = torch.device("cpu")
    megabyte, petabyte, side = 10**6, 10**15, (20, 50)
    monkeypatch.delenv("TRANSFER_INFLUENCE_STREAM", raising=False)
    assert not streams_source(megabyte, side, 4, cpu)
    assert streams_source(petabyte, side, 4, cpu)  # a petabyte is streamed
    monkeypatch.setenv("TRANSFER_INFLUENCE_STREAM", "never")
    assert not streams_source(petabyte, side, 4, cpu)
    monkeypatch.setenv("TRANSFER_INFLUENCE_STREAM", "sometimes")
    with pytest.raises(ValueError, match="choose from auto, always, never"):
        streams_source(megabyte, side, 4, cpu)


@pytest.mark.parametrize("knobs", [{}, FAST_KNOBS], ids=["default", "low-res"])
def test_warming_up_changes_no_model(knobs):
    """The warm-up trains a throwaway stack before the first chunk; the models trained after it
    are the models a cold trainer trains (it draws from no random state they use)."""
    small = dict(DEMO, source_per_class=20, target_per_class=25)
    recipe = dict(RECIPE, widths=[8, 16, 32], epochs=2, **knobs)
    results = {}
    for warm in (False, True):
        trainer = BuiltinTrainer(small, [dict(small, name="stripes")], MODES, recipe)
        if warm:
            trainer.warm_up()
        results[warm] = trainer.train(_jobs())
    for cold, warmed in zip(results[False], results[True], strict=True):
        for key in cold.logits:
            np.testing.assert_array_equal(cold.logits[key], warmed.logits[key])
        assert cold.source_accuracy == warmed.source_accuracy
