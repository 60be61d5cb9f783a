"""Importing results trained outside the tool, including the shared real-model fixture."""

import io
import json
import re
import zipfile

import numpy as np
import pandas as pd
import pytest

from conftest import FIXTURE
from transfer_influence import ClassInfluence, RunStore, estimate_influence, record_arrays
from transfer_influence.store import RecordError


def _fake_results(m=12, k=6, n=30, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "masks": rng.random((m, k)) < 0.5,
        "logits": rng.normal(size=(m, n, c)).astype(np.float32),
        "labels": np.arange(n) % c,
        "example_ids": np.array([f"img{j:03d}" for j in range(n)]),
        "source_classes": np.array([f"src{i}" for i in range(k)]),
    }


def test_record_creates_then_appends_and_matches_direct_estimate(tmp_path):
    data = _fake_results()
    run = tmp_path / "imported"
    first = record_arrays(
        run, {k: (v[:7] if k in ("masks", "logits") else v) for k, v in data.items()}
    )
    second = record_arrays(
        run, {k: (v[7:] if k in ("masks", "logits") else v) for k, v in data.items()}
    )
    assert [(c.start, c.stop) for c in first + second] == [(0, 7), (7, 12)]
    model = ClassInfluence(output="margin").fit(RunStore(run))
    from transfer_influence.outputs import margin

    outputs = np.stack([margin(lg, data["labels"]) for lg in data["logits"]])
    direct = estimate_influence(data["masks"], outputs)
    got = model.classes_.set_index("group").loc[list(data["source_classes"]), "influence"]
    np.testing.assert_allclose(got.to_numpy(), direct.overall.values[:, 0], atol=1e-6)


def test_record_reorders_by_example_id_and_refuses_unknown_ids(tmp_path):
    data = _fake_results()
    run = tmp_path / "imported"
    record_arrays(run, data)
    order = np.random.default_rng(1).permutation(30)
    shuffled = dict(
        data,
        logits=data["logits"][:, order],
        example_ids=data["example_ids"][order],
        labels=data["labels"][order],
    )
    # The same models in another example order are the same models: known, not added.
    with pytest.raises(RecordError, match="recorded into .* before; nothing written"):
        record_arrays(run, shuffled)
    other = tmp_path / "other"
    record_arrays(other, data)
    ((_, first),) = RunStore(run).iter_chunks()
    ((_, second),) = RunStore(other).iter_chunks()
    np.testing.assert_array_equal(
        first["logits/target/fixed_feature"], second["logits/target/fixed_feature"]
    )
    wrong = dict(data, example_ids=np.array([f"other{j}" for j in range(30)]))
    with pytest.raises(RecordError, match="missing from the results"):
        record_arrays(run, wrong)
    with pytest.raises(RecordError, match="masks have 4 groups, the run has 6"):
        unnamed = {k: v for k, v in data.items() if k != "source_classes"}
        record_arrays(run, dict(unnamed, masks=data["masks"][:, :4]))
    assert len(RunStore(run).chunks) == 1  # refused records left nothing behind


def test_record_with_seeds_writes_a_chunk_per_seed_and_removes_each_seeds_offset(tmp_path, cli):
    data = _fake_results(m=12)
    seeds = np.array([7, 7, 7, 3, 3, 3, 7, 9, 9, 9, 3, 9])
    chunks = record_arrays(tmp_path / "run", dict(data, seeds=seeds))
    assert [(c.start, c.stop) for c in chunks] == [(0, 4), (4, 8), (8, 12)]  # 7, 3, 9
    store = RunStore(tmp_path / "run")
    assert store.config.run.seeds == "chunk"
    np.testing.assert_array_equal(
        store.model_metrics("target/fixed_feature")["seed"], [7] * 4 + [3] * 4 + [9] * 4
    )
    recorded = list(store.iter_outputs("target/fixed_feature", "margin"))
    for chunk, seed in zip(recorded, (7, 3, 9), strict=True):
        np.testing.assert_array_equal(chunk.masks, data["masks"][seeds == seed])
    fit = ClassInfluence(output="margin", estimator="difference").fit(store)
    assert fit.seeds_ == "chunk" and fit.n_models_ == 12
    blocks = np.repeat([0, 1, 2], 4)
    by_seed = np.concatenate([seeds[seeds == s] for s in (7, 3, 9)])
    assert (by_seed == np.repeat([7, 3, 9], 4)).all()
    masks = np.concatenate([c.masks for c in recorded])
    values = np.concatenate([c.values for c in recorded])
    direct = estimate_influence(masks, values, blocks=blocks).overall.values[:, 0]
    np.testing.assert_allclose(fit.estimate_.overall.values[:, 0], direct, atol=1e-6)
    # A seed's models are recorded together, and a run is recorded with seeds or without.
    other = dict(data, logits=data["logits"] + 1.0, seeds=seeds)  # other models, same seeds
    with pytest.raises(RecordError, match="seed\\(s\\) 3, 7, 9 were recorded before"):
        record_arrays(tmp_path / "run", other)
    with pytest.raises(RecordError, match="recorded with 'seeds'"):
        record_arrays(tmp_path / "run", data)
    more = record_arrays(tmp_path / "run", dict(data, seeds=np.repeat([11, 12], 6)))
    assert [(c.start, c.stop) for c in more] == [(12, 18), (18, 24)]
    record_arrays(tmp_path / "plain", data)
    with pytest.raises(RecordError, match="recorded without 'seeds'"):
        record_arrays(tmp_path / "plain", dict(data, seeds=seeds))
    for bad, message in (
        (np.arange(12), "seed 0 has one model"),
        (np.zeros(5, int), "12 integers, one per model"),
        (np.full(12, 0.5), "12 integers, one per model"),
        (np.full(12, -1), "non-negative"),
    ):
        with pytest.raises(RecordError, match=message):
            record_arrays(tmp_path / "refused", dict(data, seeds=bad))
    assert not (tmp_path / "refused").exists()
    path = tmp_path / "seeded.npz"
    np.savez(path, **dict(data, seeds=seeds))
    code, out, err = cli("record", tmp_path / "cli-run", "--from", path)
    assert code == 0, err
    assert "recorded models 0..11 (3 seeds, a chunk each)" in out


def test_saved_files_rebuild_the_per_example_intervals(tmp_path):
    from scipy.special import stdtrit

    data = _fake_results(m=60)
    rng = np.random.default_rng(3)
    data["logits"][:, :, 0] += 2.0 * data["masks"][:, :1] + rng.normal(0, 1, (60, 1))
    record_arrays(tmp_path / "run", data)
    store = RunStore(tmp_path / "run")
    out = store.root / "influence"  # the run's own folder, where an older version wrote
    out.mkdir()
    (out / "interval_center.npy").write_bytes(b"an earlier version's ridge centre")
    for estimator in ("regression", "difference"):
        fit = ClassInfluence(output="margin", estimator=estimator).fit(store)
        fit.save(out)
        values, stderr = (np.load(out / f"{name}.npy") for name in ("influence", "stderr"))
        summary = json.loads((out / "summary.json").read_text())
        half = stdtrit(summary["dof"], 0.975) * stderr
        low, high = fit.estimate_.per_example.ci(0.95)
        np.testing.assert_allclose(values - half, low, atol=1e-5)
        np.testing.assert_allclose(values + half, high, atol=1e-5)
        assert not (out / "interval_center.npy").exists()  # it would belong to other values


def test_record_cli_refuses_corrupt_file(tmp_path, cli):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    code, _, err = cli("record", tmp_path / "run", "--from", bad)
    assert code == 2 and "not a readable .npz" in err and err.count("\n") == 1
    code, _, err = cli("record", tmp_path / "run", "--from", tmp_path / "absent.npz")
    assert code == 2 and "not found" in err


def test_record_refuses_pickled_objects(tmp_path, cli):
    path = tmp_path / "pickled.npz"
    np.savez(path, masks=np.array([{"a": 1}], dtype=object))
    code, _, err = cli("record", tmp_path / "run", "--from", path)
    assert code == 2 and "pickled" in err


@pytest.mark.skipif(not FIXTURE.exists(), reason="needs ../shared/fixtures (real model outputs)")
def test_shared_fixture_imports_and_estimates(tmp_path, cli):
    code, out, err = cli("record", tmp_path / "fixture", "--from", FIXTURE, "--target", "cifar10")
    assert code == 0, err
    assert "models 0..148" in out
    code, out, err = cli("estimate", tmp_path / "fixture")
    assert code == 0, err
    # The regression's error is 0.9x the difference in means' here, within auto's margin
    # (its held-out LDS is also the worse), so the default keeps the difference in means.
    assert "held-out LDS (difference" in out
    model = ClassInfluence(estimator="difference").fit(RunStore(tmp_path / "fixture"))
    assert model.n_models_ == 149 and len(model.classes_) == 100
    with np.load(FIXTURE) as fixture:
        masks = fixture["masks"]
        p = fixture["p_correct"].astype(np.float32)
        # In points (hundredths) of p(correct), the unit of every number users read.
        assert model.unit_ == "points of p(correct class)"
        assert model.mean_output_ == pytest.approx(100 * p.mean(), abs=1e-3)
        direct = estimate_influence(masks, p)
        names = fixture["source_classes"].tolist()
    got = model.classes_.set_index("group").loc[names, "influence"].to_numpy()
    np.testing.assert_allclose(got, 100 * direct.overall.values[:, 0], atol=1e-4)
    # Real effects are small next to the noise of 149 models: errors of 0.05-1 points.
    assert model.classes_["stderr"].between(0.05, 1.0).all()
    assert ClassInfluence().fit(RunStore(tmp_path / "fixture")).estimate_.estimator == (
        "difference"
    )
    adjusted = ClassInfluence(estimator="regression").fit(RunStore(tmp_path / "fixture"))
    ratio = adjusted.classes_["stderr"].median() / model.classes_["stderr"].median()
    assert 0.8 < ratio < 1.0, ratio
    table = adjusted.classes_
    assert ((table.ci_low <= table.influence) & (table.influence <= table.ci_high)).all()


@pytest.mark.skipif(not FIXTURE.exists(), reason="needs ../shared/fixtures (real model outputs)")
def test_fixture_split_half_stability_matches_the_measured_figure():
    """Split-half Spearman on this fixture is about 0.25, projecting about 4,000 models for 0.9
    (an independent script measured it so; the tool must read it alike)."""
    from transfer_influence.estimation.diagnostics import split_half_stability

    with np.load(FIXTURE) as fixture:
        masks, p = fixture["masks"], fixture["p_correct"].astype(np.float32)
    stability = split_half_stability(masks, p.mean(axis=1), splits=200)
    assert 0.2 <= stability.spearman <= 0.32
    assert 2500 <= stability.models_needed(0.9) <= 6000


def test_class_names_that_look_like_formulas_are_text_in_every_csv(tmp_path, cli):
    """A spreadsheet evaluates a cell that starts with =, +, - or @: class names from users'
    folders must reach CSV files as text."""
    data = _fake_results(m=20)
    names = ['=HYPERLINK("http://x")', "+1", "-cmd", "@SUM(A1)", "plain", "b"]
    data["source_classes"] = np.array(names)
    record_arrays(tmp_path / "run", data)
    assert cli("estimate", tmp_path / "run")[0] == 0
    written = (tmp_path / "run" / "influence" / "classes.csv").read_text()
    code, printed, _ = cli("top", tmp_path / "run", "--csv")
    for text in (written, printed):
        cells = [line.split(",")[1 if text is printed else 0] for line in text.splitlines()[1:]]
        assert not any(cell.lstrip('"').startswith(("=", "+", "-", "@")) for cell in cells), cells
        assert "'=HYPERLINK" in text and "'-cmd" in text and "plain" in text
    table = pd.read_csv(tmp_path / "run" / "influence" / "classes.csv")
    assert (table["influence"] < 0).any()  # numbers stay numbers


@pytest.mark.parametrize(
    "change, message",
    [
        ({"masks": np.where(np.random.default_rng(0).random((12, 6)) < 0.5, -1, 1)},
         "found the values -1, 1"),
        ({"masks": np.ones(12, bool)}, "masks must be 2-D"),
        ({"logits": np.zeros((12, 30, 3), np.complex64)}, "logits must be real numbers"),
        ({"logits": np.full((12, 30, 3), "x")}, "logits must be real numbers"),
        ({"logits": np.zeros((12, 30))}, "logits must have shape (12, examples, classes)"),
    ],
)  # fmt: skip
def test_record_refuses_what_it_would_have_coerced(tmp_path, change, message):
    with pytest.raises(RecordError, match=re.escape(message)):
        record_arrays(tmp_path / "run", dict(_fake_results(), **change))
    assert not (tmp_path / "run").exists()


def test_record_accepts_zero_one_masks_and_refuses_a_header_larger_than_memory(tmp_path, cli):
    data = _fake_results()
    record_arrays(tmp_path / "run", dict(data, masks=data["masks"].astype(np.int8)))
    assert (RunStore(tmp_path / "run").read_chunk(RunStore(tmp_path / "run").chunks[0])["mask"]
            == data["masks"]).all()  # fmt: skip
    # An .npy header that claims terabytes, in a small file.
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1))
    header["shape"] = (2**40,)
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as archive:
        archive.writestr("masks.npy", buffer.getvalue() + b"\0" * 64)
    code, _, err = cli("record", tmp_path / "other", "--from", tmp_path / "huge.npz")
    assert code == 2 and "not a readable .npz" in err and len(err.strip().splitlines()) == 1


def test_recording_the_same_results_twice_is_refused(tmp_path, cli):
    """Running the README's `record` twice silently appended the same models (298 from 149,
    with standard errors shrunk by sqrt(2))."""
    path = tmp_path / "results.npz"
    np.savez(path, **_fake_results())
    assert cli("record", tmp_path / "run", "--from", path)[0] == 0
    code, _, err = cli("record", tmp_path / "run", "--from", path)
    assert code == 2 and "recorded into" in err and "before; nothing written" in err
    assert len(err.strip().splitlines()) == 1 and RunStore(tmp_path / "run").planned_models == 12


@pytest.mark.slow
def test_a_record_killed_midway_is_completed_once_by_running_it_again(tmp_path):
    """Killed while writing its second of three chunks (the 5th atomic write, after the
    target, the plan, the first chunk and its plan), a retry used to append all three
    again (12 -> 36 models); now it writes the two that are missing."""
    from conftest import run_subprocess

    data = _fake_results(m=12)
    path = tmp_path / "seeded.npz"
    np.savez(path, **dict(data, seeds=np.repeat([5, 6, 7], 4)))
    args = ("record", tmp_path / "run", "--from", path)
    killed = run_subprocess(*args, env={"TRANSFER_INFLUENCE_CRASH_AT": "write:5"})
    assert killed.returncode != 0
    assert 0 < len(list((tmp_path / "run" / "chunks").glob("*.npz"))) < 3
    retried = run_subprocess(*args)
    assert retried.returncode == 0, retried.stderr
    store = RunStore(tmp_path / "run")
    assert store.planned_models == 12 and not store.missing_chunks()
    seeds = store.model_metrics("target/fixed_feature")["seed"]
    assert sorted(seeds.tolist()) == [5] * 4 + [6] * 4 + [7] * 4
    again = run_subprocess(*args)
    assert again.returncode == 2 and "nothing written" in again.stderr


@pytest.mark.parametrize("write", [1, 2])
def test_a_record_killed_while_creating_its_run_leaves_no_phantom_chunk(tmp_path, write):
    """Killed while its run was being created (the target's file, then the plan), a record
    used to leave a run planning 2 models it never held ("12 of 14 done" forever) or a
    `.run.<uuid>.creating` folder; a retry now gives exactly the 12 models, and nothing else."""
    from conftest import run_subprocess

    path = tmp_path / "results.npz"
    np.savez(path, **_fake_results(m=12))
    args = ("record", tmp_path / "run", "--from", path)
    killed = run_subprocess(*args, env={"TRANSFER_INFLUENCE_CRASH_AT": f"write:{write}"})
    assert killed.returncode != 0 and not (tmp_path / "run").exists()
    assert len(list(tmp_path.glob(".run.*.creating"))) == 1  # what the kill left
    retried = run_subprocess(*args)
    assert retried.returncode == 0, retried.stderr
    store = RunStore(tmp_path / "run")
    assert store.planned_models == 12 and not store.missing_chunks()
    assert not list(tmp_path.glob(".run.*.creating"))  # removed: its creator is dead
    assert not (tmp_path / "run" / "claims" / "creating").exists()


def test_a_creation_in_progress_is_left_alone(tmp_path):
    """Only a dead creator's folder is removed: one whose creator lives (this process) stays."""
    from transfer_influence.store.claims import try_claim

    building = tmp_path / ".run.0123.creating"
    (building / "claims").mkdir(parents=True)
    try_claim(building / "claims" / "creating", "create", 3600.0)
    path = tmp_path / "results.npz"
    np.savez(path, **_fake_results(m=12))
    record_arrays(tmp_path / "run", dict(np.load(path)))
    assert building.exists() and RunStore(tmp_path / "run").planned_models == 12


def test_a_full_disk_while_saving_an_estimate_keeps_the_whole_previous_one(tmp_path, monkeypatch):
    """A full disk while `estimate` wrote its files used to leave classes.csv of one output
    beside summary.json of another: now every file is written before any is replaced."""
    import errno

    import transfer_influence.files as files

    path = tmp_path / "results.npz"
    np.savez(path, **_fake_results(m=24))
    record_arrays(tmp_path / "run", dict(np.load(path)))
    store = RunStore(tmp_path / "run")
    folder = tmp_path / "influence"
    ClassInfluence(output="p_correct", diagnostics=False).fit(store).save(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real_open, opened = open, []

    def full_after_two(file, mode="r", *args, **kwargs):
        if "w" in mode:
            opened.append(file)
            if len(opened) > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(files, "open", full_after_two, raising=False)
    with pytest.raises(OSError, match="No space"):
        ClassInfluence(output="margin", diagnostics=False).fit(store).save(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no temps either


@pytest.mark.skipif(not FIXTURE.exists(), reason="needs ../shared/fixtures (real model outputs)")
def test_the_fixtures_classes_csv_is_byte_for_byte_what_it_was(tmp_path, cli):
    """tests/data/fixture-classes.csv was written by the tool before its run store, engines
    and saved estimates were reworked: what a user reads has not moved by a digit (its
    columns compared as text; columns added since, the simultaneous intervals, come after).
    It was written by the regression, which auto then chose; auto now keeps the difference in
    means there, so the estimator is named."""
    from pathlib import Path

    assert cli("record", tmp_path / "run", "--from", FIXTURE, "--target", "cifar10")[0] == 0
    assert cli("estimate", tmp_path / "run", "--estimator", "regression")[0] == 0
    expected = pd.read_csv(Path(__file__).with_name("data") / "fixture-classes.csv", dtype=str)
    written = pd.read_csv(tmp_path / "run" / "influence" / "classes.csv", dtype=str)
    pd.testing.assert_frame_equal(written[expected.columns], expected)
    assert list(written.columns[: len(expected.columns) - 1]) == list(expected.columns[:-1])


def test_an_exported_run_recorded_anew_gives_the_same_estimate(make_config, cli, tmp_path):
    """export writes what record reads: the same models, outputs, ids and names."""
    run, results, copy = tmp_path / "run", tmp_path / "results.npz", tmp_path / "copy"
    assert cli("run", make_config(models=24), "--run-dir", run, "--quiet")[0] == 0
    code, out, err = cli("export", run, "--to", results)
    assert code == 0 and "24 models" in out, err
    with np.load(results, allow_pickle=False) as arrays:
        assert {"masks", "p_correct", "labels", "example_ids", "source_classes"} <= set(arrays)
        assert "seeds" not in arrays  # each model its own seed: nothing shared to record
    assert cli("record", copy, "--from", results, "--target", "sim")[0] == 0
    for folder in (run, copy):
        assert cli("estimate", folder)[0] == 0
    original, recorded = (
        pd.read_csv(folder / "influence" / "classes.csv") for folder in (run, copy)
    )
    assert original.equals(recorded)
