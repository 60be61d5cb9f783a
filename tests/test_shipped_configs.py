"""Every shipped config reads, validates and names a recipe and datasets the tool knows."""

from pathlib import Path

import pytest

from transfer_influence.config import load_config
from transfer_influence.trainers.stack import Recipe

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.toml"))
KINDS = {"demo", "folder", "imagenet", "npz", "torchvision", "huggingface"}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_a_shipped_config_validates(path):
    config = load_config(path)
    params = config.trainer.params
    if config.trainer.type != "builtin":
        return
    recipe = Recipe.from_dict(params.get("recipe"))
    assert config.run.chunk_size % recipe.stack == 0  # a chunk is what whole stacks train
    for spec in [params["source"], *params["targets"]]:
        assert spec["kind"] in KINDS
    if path.stem.startswith("imagenet"):
        assert recipe.arch == "resnet18" and params["source"]["size"] == 64
        assert config.run.alpha == 0.5
        assert len(params["targets"]) >= (3 if "paper" in path.stem else 1)


def test_the_configs_are_all_there():
    assert {p.stem for p in CONFIGS} >= {"imagenet-to-cifar10", "imagenet-to-paper-targets"}
