import json

import numpy as np
import pandas as pd
import pytest

from transfer_influence import RunStore
from transfer_influence.files import read_arrays, write_arrays


def test_run_status_estimate(make_config, cli, tmp_path):
    config = make_config(models=24)
    run_dir = tmp_path / "run"
    code, out, err = cli("run", config, "--run-dir", run_dir, "--quiet")
    assert code == 0, err
    assert "24 models done" in out
    code, out, _ = cli("status", run_dir)
    assert code == 0
    assert "24 of 24 done" in out and "6 done, 0 running, 0 missing" in out
    code, out, _ = cli("estimate", run_dir, "--top", "2")
    assert code == 0
    assert "most helpful" in out and "least helpful (below the average class)" in out
    table = pd.read_csv(run_dir / "influence" / "classes.csv")
    assert list(table.columns) == [
        "group",
        "influence",
        "stderr",
        "ci_low",
        "ci_high",
        "q_value",
        "n_in",
        "n_out",
        "simultaneous_low",
        "simultaneous_high",
        "unit",
    ]
    # The list on screen carries the simultaneous intervals, as the CSV has them.
    row = table.iloc[0]
    assert f"[{row.simultaneous_low:+.3f}, {row.simultaneous_high:+.3f}]" in out
    assert "95% simultaneous over the" in out
    assert len(table) == 12 and table["influence"].is_monotonic_decreasing
    # One unit: the console prints the file's numbers, and both name it.
    assert set(table["unit"]) == {"points of p(correct class)"} and "points of p(correct" in out
    first = out.split("most helpful:")[1].split()[:2]
    assert first == [table.group[0], f"{table.influence[0]:+.3f}"]
    assert (table.n_in + table.n_out == 24).all()
    assert np.load(run_dir / "influence" / "influence.npy").shape == (12, 120)
    summary = json.loads((run_dir / "influence" / "summary.json").read_text())
    assert summary["n_models"] == 24 and summary["key"] == "sim/fixed_feature"
    assert summary["unit"] == "points of p(correct class)"
    assert summary["most_helpful"][0]["influence"] == pytest.approx(table.influence[0])
    per_class = pd.read_csv(run_dir / "influence" / "per_target_class.csv")
    assert len(per_class) == 12 * 4


def test_dry_run_creates_nothing(make_config, cli, tmp_path):
    code, out, _ = cli("run", make_config(models=30), "--run-dir", tmp_path / "r", "--dry-run")
    assert code == 0
    assert "30 models to train in 8 chunks" in out and "cost: about" in out
    assert not (tmp_path / "r").exists()


def test_resume_by_run_dir_and_raise_models(make_config, cli, tmp_path):
    run_dir = tmp_path / "run"
    assert cli("run", make_config(models=10), "--run-dir", run_dir, "--quiet")[0] == 0
    before = RunStore(run_dir).chunks
    code, out, err = cli("run", run_dir, "--set", "run.models=18", "--quiet")
    assert code == 0, err
    store = RunStore(run_dir)
    assert store.chunks[: len(before)] == before  # boundaries never move
    assert [(c.start, c.stop) for c in store.chunks] == [
        (0, 4),
        (4, 8),
        (8, 10),
        (10, 14),
        (14, 18),
    ]
    assert not store.missing_chunks()


def test_estimate_other_outputs_from_stored_logits(make_config, cli, tmp_path):
    run_dir = tmp_path / "run"
    cli("run", make_config(), "--run-dir", run_dir, "--quiet")
    code, _, err = cli(
        "estimate",
        run_dir,
        "--output",
        "neg_loss",
        "--mode",
        "finetune",
        "--out",
        tmp_path / "loss",
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "loss" / "summary.json").read_text())
    assert summary["output"] == "neg_loss" and summary["key"] == "sim/finetune"


def _one_line_error(result, pattern):
    code, _, err = result
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert pattern in err, err


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda text: text.replace("[run]", "[run]\nbogus = 1"), "unknown config key run.bogus"),
        (lambda text: text.replace("alpha = 0.5", "alpha = 1.5"), "run.alpha must be in (0, 1)"),
        (lambda text: text.replace("models = 24", "models = 1"), "run.models"),
        (lambda text: text.replace("groups = 12", "groupz = 12"), "groupz"),
        (lambda text: text.replace('"simulated"', '"nope"'), "unknown trainer type"),
        (lambda text: text + "\n[[[", "not valid TOML"),
    ],
)
def test_bad_config_is_one_line(make_config, cli, tmp_path, edit, pattern):
    config = make_config()
    config.write_text(edit(config.read_text()))
    _one_line_error(cli("run", config, "--run-dir", tmp_path / "r", "--quiet"), pattern)
    assert not (tmp_path / "r").exists()


def test_bad_paths_and_values_are_one_line(make_config, cli, tmp_path):
    _one_line_error(cli("run", tmp_path / "missing.toml"), "config file not found")
    _one_line_error(cli("status", tmp_path), "is not a run directory")
    _one_line_error(cli("estimate", tmp_path / "nowhere"), "is not a run directory")
    _one_line_error(cli("run", make_config(), "--set", "run.alpha=0"), "run.alpha")
    _one_line_error(cli("run", make_config(), "--set", "nonsense"), "key=value")
    _one_line_error(cli("worker", tmp_path, "--shard", "3/2"), "not a run directory")
    # A value that asks for 745 GiB: one line, not numpy's traceback.
    huge = ("--set", "trainer.params.examples=100000000000", "--dry-run")
    _one_line_error(cli("run", make_config(), *huge), "out of memory (Unable to allocate")


def test_estimate_needs_two_models(make_config, cli, tmp_path):
    run_dir = tmp_path / "run"
    cli("run", make_config(models=4, chunk_size=1), "--run-dir", run_dir, "--quiet")
    for path in sorted((run_dir / "chunks").glob("*.npz"))[1:]:
        path.unlink()
    _one_line_error(cli("estimate", run_dir), "need at least 2")


def test_other_config_is_refused_and_results_kept(make_config, cli, tmp_path):
    run_dir = tmp_path / "run"
    cli("run", make_config(seed=0), "--run-dir", run_dir, "--quiet")
    before = {p.name: p.read_bytes() for p in (run_dir / "chunks").iterdir()}
    other_seed = make_config(name="other.toml", seed=1)
    _one_line_error(cli("run", other_seed, "--run-dir", run_dir), "run.seed: 0 -> 1")
    other_groups = make_config(name="g.toml", groups=13)
    _one_line_error(
        cli("run", other_groups, "--run-dir", run_dir), "trainer.params.groups: 12 -> 13"
    )
    assert {p.name: p.read_bytes() for p in (run_dir / "chunks").iterdir()} == before


def test_corrupt_chunk_is_detected_and_redone(make_config, cli, tmp_path):
    run_dir = tmp_path / "run"
    cli("run", make_config(), "--run-dir", run_dir, "--quiet")
    victim = sorted((run_dir / "chunks").glob("*.npz"))[2]
    good = read_arrays(victim)
    victim.write_bytes(victim.read_bytes()[:-100])  # truncated
    code, out, _ = cli("status", run_dir, "--verify")
    assert code == 0 and "1 damaged" in out and "1 missing" in out
    assert len(list((run_dir / "corrupt").iterdir())) == 1
    assert cli("run", run_dir, "--quiet")[0] == 0
    redone = read_arrays(victim)
    for key in good.keys() - {"meta", "seconds"}:
        np.testing.assert_array_equal(redone[key], good[key])


def test_flipped_byte_fails_checksum_not_silently_read(make_config, cli, tmp_path):
    run_dir = tmp_path / "run"
    cli("run", make_config(), "--run-dir", run_dir, "--quiet")
    victim = sorted((run_dir / "chunks").glob("*.npz"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    store = RunStore(run_dir)
    assert store.read_chunk(store.chunks[0]) is None
    assert not victim.exists()


def test_unhealthy_models_are_flagged_and_excluded(make_config, cli, tmp_path):
    config = make_config()
    config.write_text(config.read_text() + "diverge = [3, 7]\n")
    run_dir = tmp_path / "run"
    assert cli("run", config, "--run-dir", run_dir, "--quiet")[0] == 0
    code, out, _ = cli("estimate", run_dir)
    assert code == 0 and "22 models (2 unhealthy excluded)" in out


def test_worker_shards_cover_the_run(make_config, cli, tmp_path):
    run_dir = tmp_path / "run"
    code, _, _ = cli("run", make_config(models=20), "--run-dir", run_dir, "--dry-run")
    assert code == 0
    store = RunStore.open_or_create(run_dir, *_config_and_task(make_config(models=20)))
    assert cli("worker", run_dir, "--shard", "0/2")[0] == 0
    assert len(store.missing_chunks()) == 2
    assert cli("worker", run_dir, "--shard", "1/2")[0] == 0
    assert not store.missing_chunks()


def _config_and_task(path):
    from transfer_influence import load_config
    from transfer_influence.trainers import load_trainer

    config = load_config(path)
    return config, load_trainer(config.trainer.type, config.trainer.params).describe()


def test_run_until_stable_grows_the_run_until_the_target_or_budget(make_config, cli, tmp_path):
    config = make_config(models=16, chunk_size=8, groups=12)
    config.write_text(config.read_text() + "effect_scale = 0.3\nactive = 1.0\n")
    run_dir = tmp_path / "run"
    code, out, err = cli(
        "run", config, "--run-dir", run_dir, "--quiet",
        "--until-stable", "spearman=0.6", "--max-models", "400",
    )  # fmt: skip
    assert code == 0, err
    lines = [line for line in out.splitlines() if "would agree on Spearman" in line]
    assert lines and float(lines[-1].split("Spearman ")[1].split(" (")[1].split()[0]) >= 0.6
    assert "target met" in out
    planned = RunStore(run_dir).planned_models
    assert 16 < planned < 400 and not RunStore(run_dir).missing_chunks()
    code, out, _ = cli(
        "run", run_dir, "--quiet", "--until-stable", "0.99", "--max-models", str(planned + 8)
    )
    assert code == 0 and RunStore(run_dir).planned_models <= planned + 8  # never past the budget
    said_why = "out of reach" in out or "beyond budget" in out
    assert said_why or RunStore(run_dir).planned_models == planned + 8


def test_until_stable_targets_are_read_as_printed_and_refused_in_one_line(cli, tmp_path):
    from transfer_influence.experiments.growth import grown_models, parse_stability_targets

    assert parse_stability_targets("top=8,bottom=8", 40) == {"top": 0.8, "bottom": 0.8}
    assert parse_stability_targets("0.9", 40) == {"spearman": 0.9}
    assert parse_stability_targets("top=2", 12) == {"top": 2 / 3}  # 3 read at each end of 12
    for bad, message in [
        ("top=11", "whole number from 1 to 10"),
        ("spearman=1.5", "between 0 and 1"),
        ("middle=3", "is not top=N"),
        ("top=8.5", "whole number"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_stability_targets(bad, 40)
    assert grown_models(360.0, 40, 8, 1000) == 60  # at most 1.5x, then measure again
    assert grown_models(float("nan"), 40, 8, 1000) == 60  # no projection: 1.5x
    assert grown_models(360.0, 8, 8, 1000) == 16  # but at least a chunk more
    assert grown_models(50.0, 40, 8, 1000) == 50
    assert grown_models(41.0, 40, 8, 1000) == 48  # at least a chunk more
    assert grown_models(float("inf"), 40, 8, 60) == 60  # within the budget


def test_until_stable_says_when_the_target_is_out_of_reach(make_config, cli, tmp_path):
    """Most groups have no effect at all (active = 0.25): their order is chance at any size,
    so the bottom 3 of 12 cannot repeat; the run stops and says why, far below the budget."""
    config = make_config(models=48, chunk_size=16, groups=12)
    config.write_text(config.read_text() + "effect_scale = 0.3\nactive = 0.25\n")
    code, out, err = cli(
        "run", config, "--run-dir", tmp_path / "run", "--quiet",
        "--until-stable", "bottom=3", "--max-models", "100000",
    )  # fmt: skip
    assert code == 0, err
    assert "stopped: the target is out of reach" in out or "beyond budget" in out, out
    assert RunStore(tmp_path / "run").planned_models < 20000


def test_estimate_reports_lds_and_stability(make_config, cli, tmp_path):
    run_dir = tmp_path / "run"
    cli("run", make_config(models=40), "--run-dir", run_dir, "--quiet")
    code, out, _ = cli("estimate", run_dir)
    assert code == 0 and "held-out LDS" in out and "Whole ranking: Spearman about" in out
    assert "an independent run of 40 models would share about" in out
    assert "of this top 3 (80% range" in out and "0.8 by chance" in out
    assert "the halves share" in out and "of their bottom 3 (0.8 by chance)" in out
    summary = json.loads((run_dir / "influence" / "summary.json").read_text())
    agreement = summary["agreement"]
    assert agreement["models"] == 40 and agreement["k"] == 3
    for metric in ("spearman", "top", "bottom"):
        low, high = agreement["ranges"][metric]
        assert low <= high and -1 <= agreement["expected"][metric] <= 1
    stability = summary["stability"]
    assert -1 <= summary["lds"] <= 1 and -1 <= stability["spearman"] <= 1
    assert 0 <= stability["bottom_overlap"] <= 1 and stability["chance_overlap"] == 3 / 12
    assert summary["explained_by_subsets"] <= 1 and "subsets explain" in out


def test_time_limit_zero_starts_nothing_and_a_rerun_continues(make_config, cli, tmp_path):
    run_dir = tmp_path / "run"
    code, out, _ = cli("run", make_config(), "--run-dir", run_dir, "--quiet", "--time-limit", 0)
    assert code == 0 and "stopped at the time limit with 24 models to go" in out
    assert len(RunStore(run_dir).missing_chunks()) == 6
    assert cli("run", run_dir, "--quiet")[0] == 0 and not RunStore(run_dir).missing_chunks()


def test_estimate_says_when_stability_is_within_one_seed(make_config, cli, tmp_path):
    for seeds in ("model", "run"):
        run_dir = tmp_path / seeds
        cli("run", make_config(models=40), "--run-dir", run_dir, "--quiet",
            "--set", f'run.seeds="{seeds}"')  # fmt: skip
        code, out, _ = cli("estimate", run_dir)
        assert code == 0 and ("share one seed" in out) == (seeds == "run")
        summary = json.loads((run_dir / "influence" / "summary.json").read_text())
        assert summary["stability"]["within_one_seed"] is (seeds == "run")


def test_counts_are_whole_numbers_of_at_least_one(make_config, cli, tmp_path):
    """--workers -1 spun at full CPU forever and --workers 0 was silently the default."""
    config = make_config()
    for bad, message in ((["--workers", "-1"], "must be at least 1, got -1"),
                         (["--workers", "0"], "must be at least 1, got 0"),
                         (["--workers", "two"], "expected a whole number, got 'two'"),
                         (["--max-models", "0"], "must be at least 1")):  # fmt: skip
        code, _, err = cli("run", config, "--run-dir", tmp_path / "run", "--quiet", *bad)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_estimate_says_when_damaged_chunks_were_left_out(make_config, cli, tmp_path):
    """A damaged chunk is moved aside and the estimate goes on without it: the user is told,
    and summary.json records it."""
    run_dir = tmp_path / "run"
    cli("run", make_config(), "--run-dir", run_dir, "--quiet")
    victim = sorted((run_dir / "chunks").glob("*.npz"))[1]
    victim.write_bytes(victim.read_bytes()[:-100])
    code, out, err = cli("estimate", run_dir)
    assert code == 0 and "20 models" in out
    assert "warning: 1 damaged chunk(s) moved to" in err and "trains them again" in err
    summary = json.loads((run_dir / "influence" / "summary.json").read_text())
    assert summary["damaged_chunks_left_out"] == [victim.stem]


def test_two_stores_raising_the_plan_never_lower_it(make_config, cli, tmp_path):
    """Each store read the plan before the other wrote it: the second write used to put the
    plan back to 160, leaving chunks of models 160-199 on disk and ignored."""
    run_dir = tmp_path / "run"
    cli("run", make_config(models=24), "--run-dir", run_dir, "--quiet", "--time-limit", "0")
    a, b = RunStore(run_dir), RunStore(run_dir)
    a.set_models(200)
    b.set_models(160)
    assert RunStore(run_dir).planned_models == 200 and b.planned_models == 200


def _restamp_chunks(run_dir):
    """Chunks carry the digest of the run that made them: after run.json was edited, they are
    made to claim the edited run (a test's forgery; the tool itself never does this)."""
    store = RunStore(run_dir)
    for path in (run_dir / "chunks").glob("*.npz"):
        arrays = read_arrays(path)
        write_arrays(path, dict(arrays, run_digest=np.array(store.run_digest)))


def test_reading_a_run_never_imports_code_the_run_names(make_config, cli, tmp_path, monkeypatch):
    """A run.json naming an output "evilmod:f" made `status` import evilmod.py from the
    current directory. Reading a run (status, estimate, top, report) must not."""
    run_dir = tmp_path / "run"
    cli("run", make_config(), "--run-dir", run_dir, "--quiet")
    meta = json.loads((run_dir / "run.json").read_text())
    meta["config"]["run"]["outputs"].append("evilmod:f")
    (run_dir / "run.json").write_text(json.dumps(meta))
    _restamp_chunks(run_dir)  # as if the run had been made where evilmod exists
    marker = tmp_path / "imported"
    (tmp_path / "evilmod.py").write_text(f"open({str(marker)!r}, 'w').close()\nf = len\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for command in (("status", run_dir), ("estimate", run_dir), ("top", run_dir),
                    ("report", run_dir, "--quiet")):  # fmt: skip
        code, _, err = cli(*command)
        assert code == 0, (command, err)
    assert not marker.exists()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda meta: [meta], "not a JSON object"),
        (lambda meta: {k: v for k, v in meta.items() if k != "task"}, "missing 'task'"),
        (lambda meta: dict(meta, chunks=[["a", "b"]]), "is damaged"),
    ],
)
def test_a_damaged_run_json_is_one_line(make_config, cli, tmp_path, damage, message):
    run_dir = tmp_path / "run"
    cli("run", make_config(), "--run-dir", run_dir, "--quiet")
    meta = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps(damage(meta)))
    for command in ("status", "estimate"):
        code, _, err = cli(command, run_dir)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_config_without_a_trainer_is_refused(cli, tmp_path):
    config = tmp_path / "bare.toml"
    config.write_text("[run]\nmodels = 4\n")
    code, _, err = cli("run", config, "--run-dir", tmp_path / "run", "--quiet")
    assert code == 2 and "has no [trainer] table" in err and not (tmp_path / "run").exists()


def test_a_chunk_of_another_run_is_not_taken_for_this_one(make_config, cli, tmp_path):
    """A chunk copied from a run with another seed passed `status --verify` and was used."""
    for name, seed in (("mine", 0), ("other", 1)):
        cli("run", make_config(f"{name}.toml", seed=seed), "--run-dir", tmp_path / name, "--quiet")
    name = sorted((tmp_path / "mine" / "chunks").glob("*.npz"))[1].name
    (tmp_path / "mine" / "chunks" / name).write_bytes(
        (tmp_path / "other" / "chunks" / name).read_bytes()
    )
    code, out, _ = cli("status", tmp_path / "mine", "--verify")
    assert code == 0 and "1 of another run, in foreign/" in out
    assert cli("run", tmp_path / "mine", "--quiet")[0] == 0
    assert not RunStore(tmp_path / "mine").verify()


def test_a_reader_that_stops_early_stops_the_command_quietly(make_config, cli, tmp_path):
    """`estimate RUN | head -2` printed "error: [Errno 32] Broken pipe"."""
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    assert cli("run", make_config(), "--run-dir", run_dir, "--quiet")[0] == 0
    process = subprocess.Popen(
        [sys.executable, "-m", "transfer_influence", "estimate", run_dir],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    process.stdout.close()  # before the command prints its first line
    err = process.stderr.read()
    assert process.wait(timeout=120) == 141
    assert "Broken pipe" not in err and "Traceback" not in err and "Exception" not in err


def test_dry_run_of_a_builtin_run_says_the_data_size_and_cost(
    tmp_path, cli, tiny_data, monkeypatch
):
    from conftest import tiny_builtin_config

    config = tiny_builtin_config(tmp_path / "tiny.toml", tiny_data())
    code, out, err = cli("run", config, "--run-dir", tmp_path / "r", "--dry-run")
    assert code == 0, err
    # 6 classes x 6 images in each source split, 2 x 6 in each target split, at 16 x 16 x 3.
    assert "data: 0.1 MB of decoded images" in out  # (36 + 36 + 12 + 12) x 16 x 16 x 3 bytes
    assert "per model (the trainer's estimate)" in out and not (tmp_path / "r").exists()
    assert "as much on the device (cpu, as on this machine)" in out
    # Counted, not decoded: a dry run must not read all of ImageNet's 140 GB first.
    assert "not decoded yet: 96 images" in out and not (tmp_path / "cache").exists()
    from transfer_influence import load_config
    from transfer_influence.trainers.builtin import BuiltinTrainer
    from transfer_influence.trainers.dry_run import BuiltinPlan

    params = load_config(config).trainer.params
    plan, trainer = BuiltinPlan.of(**params), BuiltinTrainer(**params)  # the trainer decodes
    assert plan.data_bytes() == trainer.data_bytes() == 96 * 16 * 16 * 3
    assert plan.estimate_seconds_per_model() == trainer.estimate_seconds_per_model()
    code, out, err = cli("run", config, "--run-dir", tmp_path / "r", "--dry-run")
    assert code == 0 and "data: 0.1 MB" in out and "not decoded" not in out, err
    monkeypatch.setenv("TRANSFER_INFLUENCE_STREAM", "always")  # as if it did not fit
    code, out, err = cli("run", config, "--run-dir", tmp_path / "r", "--dry-run")
    assert code == 0 and "the source streamed to the device in batches" in out, err


def test_the_api_reads_the_ends_as_the_console_prints_them(make_config, cli, tmp_path):
    from transfer_influence import ClassInfluence

    run = tmp_path / "run"
    assert cli("run", make_config(models=60), "--run-dir", run, "--quiet")[0] == 0
    code, out, _ = cli("estimate", run)
    fitted = ClassInfluence().fit(RunStore(run))
    stability, agreement = fitted.stability_, fitted.agreement_
    k = stability.k
    assert f"share {stability.top_shared:.1f} of their top and " in out
    assert f"{stability.bottom_shared:.1f} of their bottom {k}" in out
    for end in ("top", "bottom"):
        shared = agreement.expected[end] * agreement.k
        assert f"would share about {shared:.1f} of this {end} {k}" in out
    assert f"Spearman about {agreement.expected['spearman']:.2f}" in out
    assert "regression estimator" in out or "difference estimator" in out


def test_source_and_target_swapped_are_refused_before_any_decoding(tmp_path, cli, tiny_data):
    from conftest import tiny_builtin_config

    data = tiny_data()
    config = tiny_builtin_config(tmp_path / "tiny.toml", data)
    created = cli("run", config, "--run-dir", tmp_path / "r", "--time-limit", "0", "--quiet")
    assert created[0] == 0, created[2]
    swapped = tmp_path / "swapped.toml"
    text = config.read_text().replace("/source", "/SWAP").replace("/target", "/source")
    swapped.write_text(text.replace("/SWAP", "/target"))
    cached = sorted((tmp_path / "cache").iterdir())
    code, _, err = cli("run", swapped, "--run-dir", tmp_path / "r", "--quiet")
    assert code == 2 and "the run's source has 6 classes (a, b, c, ...)" in err
    assert "has 2 (x, y): it holds the classes of the run's target 'tgt': swapped?" in err
    assert sorted((tmp_path / "cache").iterdir()) == cached and "decoding" not in err
