import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from transfer_influence.cli import main

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURE = SHARED / "fixtures" / "cifar100-to-cifar10-149-models.npz"


def pytest_collection_modifyitems(config, items):
    """The heaviest tests first: handed out to parallel workers in collection order, they
    would otherwise start late and leave the other workers idle at the end."""
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)


def pytest_configure(config):
    """Parallel workers (`pytest -n auto`, as the README runs both steps) share the cores: one
    thread each, since N workers of as many threads as cores oversubscribe them and run slower."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"


# A simulated task whose noise mostly follows the training seed (as a shared seed measured on
# real CNNs suggests); the rest is per model.
NOISY_SEEDS = {
    "groups": 20,
    "examples": 200,
    "classes": 4,
    "modes": ["fixed_feature"],
    "effect_scale": 0.05,
    "model_noise": 0.1,
    "example_noise": 0.3,
    "unshared_noise": 0.05,
    "seed": 4,
}

CONFIG = """
[run]
seed = {seed}
alpha = 0.5
models = {models}
chunk_size = {chunk_size}

[trainer]
type = "simulated"

[trainer.params]
groups = {groups}
examples = 120
classes = 4
seconds_per_model = {seconds}
"""


@pytest.fixture
def make_config(tmp_path):
    def make(name="sim.toml", seed=0, models=24, chunk_size=4, groups=12, seconds=0.0):
        path = tmp_path / name
        path.write_text(
            CONFIG.format(
                seed=seed, models=models, chunk_size=chunk_size, groups=groups, seconds=seconds
            )
        )
        return path

    return make


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""

    def run(*args):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit:  # argparse's own errors
            code = exit.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def run_subprocess(*args, env=None, **kwargs):
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "transfer_influence", *map(str, args)],
        env=full_env,
        capture_output=True,
        text=True,
        **kwargs,
    )


def chunk_arrays(run_dir):
    """Every chunk file's arrays (checksum verified), by file name."""
    from transfer_influence.files import read_arrays

    return {p.name: read_arrays(p) for p in sorted(Path(run_dir, "chunks").glob("*.npz"))}


def assert_same_results(a, b, exact=True):
    ca, cb = chunk_arrays(a), chunk_arrays(b)
    assert list(ca) == list(cb)
    for name in ca:
        for key in ca[name]:
            if key == "meta" or key == "seconds":
                continue
            x, y = ca[name][key], cb[name][key]
            if exact:
                assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), (name, key)
            else:
                np.testing.assert_array_equal(x, y, err_msg=f"{name} {key}")


def make_image_folder(root, classes, per_class, splits=("train",), as_tar=True, size=8):
    """An ImageFolder dataset of solid-colour PNGs: class k, image i has colour (40k, 10i, 100)."""
    from PIL import Image

    root.mkdir(parents=True)
    for split in splits:
        files = {}
        for k, name in enumerate(classes):
            for i in range(per_class):
                buffer = io.BytesIO()
                Image.new("RGB", (size, size), (40 * k % 256, 10 * i % 256, 100)).save(
                    buffer, format="PNG"
                )
                files[f"{name}/{i:03d}.png"] = buffer.getvalue()
        if as_tar:
            with tarfile.open(root / f"{split}.tar.gz", "w:gz") as archive:
                for name, blob in files.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(blob)
                    archive.addfile(info, io.BytesIO(blob))
        else:
            for name, blob in files.items():
                (root / split / name).parent.mkdir(parents=True, exist_ok=True)
                (root / split / name).write_bytes(blob)


TINY_BUILTIN = """
[run]
models = 8
chunk_size = 4
[trainer]
type = "builtin"
[trainer.params]
source = {{ kind = "folder", path = "{data}/source" }}
targets = [{{ name = "tgt", kind = "folder", path = "{data}/target"{target_options} }}]
[trainer.params.recipe]
widths = [8, 8, 8]
epochs = 1
batch_size = 16
stack = 4
probe_steps = 5
"""


@pytest.fixture
def tiny_data(tmp_path, monkeypatch):
    """Tiny ImageFolder tarballs for the built-in trainer: ``make(source_classes,
    target_per_class)`` writes DATA/source and DATA/target (classes x, y) and returns DATA."""
    monkeypatch.setenv("TRANSFER_INFLUENCE_CACHE", str(tmp_path / "cache"))

    def make(source_classes=tuple("abcdef"), target_per_class=6):
        data = tmp_path / "data"
        make_image_folder(data / "source", list(source_classes), 6, ("train", "test"), size=16)
        make_image_folder(data / "target", ["x", "y"], target_per_class, ("train", "test"), size=16)
        return data

    return make


def tiny_builtin_config(path, data, target_options=""):
    """A built-in trainer config over ``data``/source and ``data``/target that trains in
    seconds on CPU; ``target_options`` are extra keys of the target table (", k = v")."""
    path.write_text(TINY_BUILTIN.format(data=data, target_options=target_options))
    return path


def users_own_trainer(**params):
    """A trainer as a user plugs one in (``trainer.type = "conftest:users_own_trainer"``): it
    describes its validation target and its test target itself."""
    from transfer_influence.trainers.simulated import SimulatedTrainer

    return SimulatedTrainer(**{"targets": ["val", "test"], "modes": ["fixed_feature"], **params})
