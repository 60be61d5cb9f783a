"""Counterfactual pruning: conditions, honesty (validation ranks, test reports), resume, CLI."""

import pandas as pd
import pytest

from conftest import tiny_builtin_config
from transfer_influence import RunStore
from transfer_influence.experiments.pruning import Pruning, plan_conditions, user_condition
from transfer_influence.report import Report

SIMULATED = """
[run]
models = 60
chunk_size = 20
[trainer]
type = "simulated"
[trainer.params]
groups = 16
examples = 400
classes = 4
modes = ["fixed_feature"]
effect_scale = 0.3
seconds_per_model = {seconds}
"""


@pytest.fixture
def simulated_run(tmp_path, cli):
    def make(name="run", seconds=0.0):
        config = tmp_path / f"{name}.toml"
        config.write_text(SIMULATED.format(seconds=seconds))
        assert cli("run", config, "--run-dir", tmp_path / name, "--quiet")[0] == 0
        return tmp_path / name

    return make


def test_conditions_pair_seeds_and_remove_the_right_groups():
    ranking = [3, 0, 4, 1, 2]  # most helpful first
    conditions = plan_conditions(ranking, ["bottom", "top", "random"], [1, 2], seeds=2)
    assert len(conditions) == 2 * (1 + 3 * 2)
    by_label = {c.label: c for c in conditions}
    assert by_label["full-k0-s0"].mask.all()
    assert by_label["bottom-k2-s1"].mask.tolist() == [True, False, False, True, True]
    assert by_label["top-k1-s0"].mask.tolist() == [True, True, True, False, True]
    random = [by_label[f"random-k2-s{s}"].keep for s in (0, 1)]
    assert all(sum(keep) == 3 for keep in random)
    again = plan_conditions(ranking, ["random"], [2], 2)  # the same draw, whatever else runs
    assert random == [c.keep for c in again if c.name == "random"]
    with pytest.raises(ValueError, match="k = 5 must be between 1 and 4"):
        plan_conditions(ranking, ["bottom"], [5], 1)
    with pytest.raises(ValueError, match="unknown remove rule 'worst'"):
        plan_conditions(ranking, ["worst"], [1], 1)
    keep = user_condition("keep", ["a", "c"], ("a", "b", "c"), 2)
    assert keep[0].mask.tolist() == [True, False, True] and keep[0].k == 1
    with pytest.raises(ValueError, match="unknown source group 'z'"):
        user_condition("drop", ["z"], ("a", "b"), 1)


def test_prune_finds_the_gain_of_removing_harmful_groups(simulated_run, tmp_path):
    run = simulated_run()
    keep_file = tmp_path / "keep.txt"
    keep_file.write_text("# hand-picked\ngroup000\ngroup001\ngroup002\ngroup003\n")
    pruning = Pruning(k=(2, 4), seeds=3, keep_file=str(keep_file)).fit(
        RunStore(run), progress=False
    )
    assert pruning.complete_
    results = pd.read_csv(run / "prune" / "results.csv")
    assert len(results) == 3 * (1 + 3 * 2 + 1)
    assert set(results["condition"]) == {"full", "bottom", "top", "random", "keep-file"}
    summary = pruning.summary_.set_index(["condition", "k"])
    chosen = pruning.chosen_k_
    assert chosen in (2, 4)
    assert summary.loc[("bottom", chosen), "test_vs_full_low"] > 0  # a real, paired gain
    assert summary.loc[("top", chosen), "test_vs_full_high"] < 0
    removed = set(pruning.ranking_[-chosen:])
    kept = (run / "prune" / f"keep-bottom-k{chosen}.txt").read_text().split()
    assert sorted(kept) == sorted(set(RunStore(run).groups) - removed)
    assert [c for c in results.columns if c.startswith("test_acc/")] == [
        f"test_acc/class{c}" for c in range(4)
    ]
    html = Report().build(RunStore(run)).path_.read_text()
    assert 'id="pruning"' in html and "chosen on the validation split" in html


@pytest.mark.slow
def test_prune_resumes_after_a_time_limit_and_equals_an_uninterrupted_one(simulated_run):
    first, second = simulated_run("a", seconds=0.02), simulated_run("b", seconds=0.02)
    options = {"k": (2,), "seeds": 4}
    partial = Pruning(**options).fit(RunStore(first), progress=False, time_limit=0.1)
    assert not partial.complete_ and 0 < len(partial.results_) < 16
    resumed = Pruning(**options).fit(RunStore(first), progress=False)
    whole = Pruning(**options).fit(RunStore(second), progress=False)
    assert resumed.complete_
    columns = ["condition", "k", "seed", "validation_accuracy", "test_accuracy"]
    key = ["condition", "k", "seed"]
    pd.testing.assert_frame_equal(
        resumed.results_[columns].sort_values(key, ignore_index=True),
        whole.results_[columns].sort_values(key, ignore_index=True),
    )


def test_prune_refuses_what_would_mix_or_leak(simulated_run, tmp_path, cli):
    run = simulated_run()
    drop = tmp_path / "drop.txt"
    drop.write_text("group005\n")
    assert cli("prune", run, "--remove", "bottom", "--k", "2", "--seeds", "1",
               "--drop-file", drop, "--quiet")[0] == 0  # fmt: skip
    drop.write_text("group006\n")  # same condition name, other classes: refused, not mixed
    code, _, err = cli("prune", run, "--remove", "bottom", "--k", "2", "--seeds", "1",
                       "--drop-file", drop, "--quiet")  # fmt: skip
    assert code == 2 and "trained for another drop-file source" in err
    for args, message in (
        (["--k", "two"], "--k takes comma-separated integers"),
        (["--k", "99"], "k = 99 must be between 1 and 15"),
        (["--remove", "worst"], "unknown remove rule 'worst'"),
        (["--k", "2", "--keep-file", tmp_path / "none.txt"], "cannot read class list"),
    ):
        code, _, err = cli("prune", run, "--seeds", "1", "--quiet", *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_prune_with_the_builtin_trainer_ranks_on_validation_only(tmp_path, cli, tiny_data):
    data = tiny_data(target_per_class=10)
    on_test = tiny_builtin_config(tmp_path / "test.toml", data)
    assert cli("run", on_test, "--run-dir", tmp_path / "t", "--quiet")[0] == 0
    code, _, err = cli("prune", tmp_path / "t", "--quiet")
    assert code == 2 and "never the test set" in err and 'evaluate = "validation"' in err
    validation = ', validation = 0.3, evaluate = "validation"'
    on_validation = tiny_builtin_config(tmp_path / "validation.toml", data, validation)
    run = tmp_path / "v"
    assert cli("run", on_validation, "--run-dir", run, "--quiet")[0] == 0
    code, out, err = cli("prune", run, "--k", "1,2", "--seeds", "2", "--quiet")
    assert code == 0, err
    results = pd.read_csv(run / "prune" / "results.csv")
    assert len(results) == 2 * (1 + 3 * 2)
    assert results["test_accuracy"].between(0, 1).all()
    assert "keep list" in out


def test_prune_trains_with_a_users_own_trainer_and_engine_options(tmp_path, cli):
    config = tmp_path / "own.toml"
    config.write_text(
        '[run]\nmodels = 40\nchunk_size = 20\n[trainer]\ntype = "conftest:users_own_trainer"\n'
        "[trainer.params]\ngroups = 10\nexamples = 200\nclasses = 4\neffect_scale = 0.3\n"
    )
    run = tmp_path / "run"
    assert cli("run", config, "--run-dir", run, "--quiet")[0] == 0
    code, _, err = cli("prune", run, "--k", "2", "--seeds", "2", "--quiet")
    assert code == 2 and "no target 'val@test'" in err and "test_target" in err
    engine = ("--engine", "local", "--workers", "1")
    code, _, err = cli("prune", run, "--k", "2", "--seeds", "2", "--quiet",
                       "--test-target", "test", *engine)  # fmt: skip
    assert code == 0, err
    conditions = RunStore(run / "prune" / "run")
    assert conditions.planned_models == 2 * 4 and not conditions.missing_chunks()
    assert conditions.config.trainer.type == "conftest:users_own_trainer"
    results = pd.read_csv(run / "prune" / "results.csv")
    assert len(results) == 8 and results["test_accuracy"].between(0, 1).all()
    again = cli("prune", run, "--k", "2,3", "--seeds", "2", "--quiet", "--test-target", "test")
    assert again[0] == 0  # more conditions: the run grows, the trained ones are kept
    assert RunStore(run / "prune" / "run").planned_models == 2 * 7


def test_a_prune_folder_of_an_earlier_version_gets_one_line(simulated_run, cli):
    run = simulated_run()
    (run / "prune" / "models").mkdir(parents=True)
    (run / "prune" / "models" / "full-k0-s0.json").write_text("{}")
    code, _, err = cli("prune", run, "--k", "2", "--seeds", "1", "--quiet")
    assert code == 2 and "earlier version" in err and "mv " in err
    assert len(err.strip().splitlines()) == 1
