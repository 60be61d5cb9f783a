"""The offline demo at a smaller, faster size: the planted truth is found, and with nothing
planted no more intervals exclude zero than chance allows."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from transfer_influence.experiments.demo import run_demo

DATA = Path(__file__).parent / "data"


@pytest.mark.slow
@pytest.mark.heavy
def test_demo_recovers_planted_truth(tmp_path, cli):
    """The demo at 64 models, asserting what 64 models show on any machine (kernels that train
    other numbers act like another run seed; research/trained_margins.py measured 3 seeds):

    - the 4 planted helpful classes are, together, clearly above the average class: the sum of
      their t statistics is above 5 (measured 9.1 to 12.0);
    - the 4 planted harmful classes are, together, clearly below it: the sum of their t
      statistics is below -5 (measured -8.7 to -10.0).

    With no planted effect such a sum is about N(0, 2) and passes with chance under 1%. Each
    class on its own side at q <= 0.05, the demo's own "recovered" at its default 128 models,
    held at 64 models in none of 3 seeds, so it is not asserted here."""
    code, out, err = cli("demo", "--out", tmp_path / "demo", "--models", 64, "--quiet")
    assert code == 0, err
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    planted = summary["planted"]
    assert summary["models"] == 64 and "recovered:" in out
    table = pd.read_csv(tmp_path / "demo" / "influence" / "classes.csv").set_index("group")
    t = table["influence"] / table["stderr"]
    assert t[planted["helpful"]].sum() > 5, t[planted["helpful"]]
    assert t[planted["harmful"]].sum() < -5, t[planted["harmful"]]
    # The same ranking and numbers as this demo made on the machine kind that
    # tests/data/demo-64-classes.json names, with a thread count it lists, so that a change
    # to training or estimation that moves any number is seen. Kernels of another CPU kind,
    # thread count or torch round otherwise and train other models, which act like another
    # run seed: there only the bounds above hold.
    before = pd.read_csv(DATA / "demo-64-classes.csv").set_index("group")
    made_on = json.loads((DATA / "demo-64-classes.json").read_text())
    here = {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }
    if all(value in np.atleast_1d(made_on[key]) for key, value in here.items()):
        assert table.index.tolist() == before.index.tolist()
        for column in ("influence", "stderr", "q_value"):
            np.testing.assert_allclose(table[column], before[column], rtol=1e-6, atol=1e-9)


@pytest.mark.slow
@pytest.mark.heavy
def test_demo_control_has_no_more_discoveries_than_chance(tmp_path):
    """Nothing planted: at most 4 of 16 intervals exclude zero, a bound chance exceeds once in
    a thousand runs (measured in 9 run seeds: at most 3, and 7 of 144 intervals in all)."""
    summary = run_demo(tmp_path / "control", models=48, control=True, progress=False)
    planted = summary["planted"]
    assert planted["intervals_excluding_zero"] <= planted["chance_bound"], planted
    assert planted["chance_bound"] == 4  # 99.9th percentile of Binomial(16, 0.05)
