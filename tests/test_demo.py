"""The offline demo at a smaller, faster size: the planted truth is found, and with nothing
planted no more intervals exclude zero than chance allows."""

import json

import pytest

from transfer_influence.experiments.demo import run_demo


@pytest.mark.slow
def test_demo_recovers_planted_truth(tmp_path, cli):
    code, out, err = cli("demo", "--out", tmp_path / "demo", "--models", 64, "--quiet")
    assert code == 0, err
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    planted = summary["planted"]
    assert planted["helpful_in_top_quarter"], planted["ranks"]
    assert planted["harmful_ci_below_zero"], planted["ranks"]
    assert summary["models"] == 64 and "recovered: True" in out
    assert (tmp_path / "demo" / "influence" / "classes.csv").exists()


@pytest.mark.slow
def test_demo_control_has_no_more_discoveries_than_chance(tmp_path):
    summary = run_demo(tmp_path / "control", models=48, control=True, progress=False)
    planted = summary["planted"]
    assert planted["intervals_excluding_zero"] <= planted["chance_bound"], planted
    assert planted["chance_bound"] == 5  # 99.9th percentile of Binomial(24, 0.05)
