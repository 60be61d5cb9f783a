"""Queries read the run's saved estimate when it was made from the same chunks and options,
and never when the chunks changed since."""

import re

import numpy as np
import pytest

from transfer_influence import ClassInfluence, RunStore, record_arrays
from transfer_influence.estimation import classes


def _results(m, seed):
    rng = np.random.default_rng(seed)
    masks = rng.random((m, 8)) < 0.5
    logits = rng.normal(size=(m, 40, 4)).astype(np.float32)
    logits[:, :, 0] += 1.5 * masks[:, :1]  # group 0 helps class 0
    return {"masks": masks, "logits": logits, "labels": np.arange(40) % 4}


def _forbid_streaming(monkeypatch):
    def streamed(*_args, **_kwargs):
        raise AssertionError("fitted again where the saved estimate was fresh")

    monkeypatch.setattr(classes.ClassInfluence, "_stream", streamed)


@pytest.fixture
def estimated(tmp_path, cli):
    run = tmp_path / "run"
    record_arrays(run, _results(40, 0))
    assert cli("estimate", run)[0] == 0
    return run


def test_a_query_after_estimate_reads_the_saved_estimate(estimated, cli, monkeypatch):
    fitted = {
        args: cli("top", estimated, *args)
        for args in ((), ("--bottom",), ("--target-class", "class0"), ("--source-class", "0"),
                     ("--most-hurt",))
    }  # fmt: skip
    (estimated / "influence" / "summary.json").unlink()  # as if never estimated: fitted again
    assert cli("estimate", estimated)[0] == 0
    _forbid_streaming(monkeypatch)
    for args, answer in fitted.items():
        assert cli("top", estimated, *args) == answer, args


@pytest.mark.parametrize(
    "change",
    [
        lambda run, cli: record_arrays(run, _results(6, 1)),  # more models
        lambda run, cli: cli("estimate", run, "--output", "margin"),  # another output saved
        lambda run, cli: cli("estimate", run, "--level", "0.9"),  # other options saved
    ],
)
def test_a_changed_chunk_set_or_option_is_never_answered_from_a_stale_estimate(
    estimated, cli, change
):
    change(estimated, cli)
    stale_or_other = ClassInfluence(diagnostics=False).fit(RunStore(estimated))
    fresh = ClassInfluence(diagnostics=False)._stream(RunStore(estimated), progress=False)
    assert stale_or_other.n_models_ == fresh.n_models_
    assert stale_or_other.classes_.equals(fresh.classes_)


def test_a_chunk_replaced_under_the_same_name_makes_the_estimate_stale(tmp_path, cli):
    """Same chunk names, other contents: the chunks' stored checksums tell them apart."""
    first, second = tmp_path / "first", tmp_path / "second"
    record_arrays(first, _results(40, 0))
    record_arrays(second, _results(40, 2))
    assert cli("estimate", first)[0] == 0
    chunk = "0000000-0000040.npz"
    (first / "chunks" / chunk).write_bytes((second / "chunks" / chunk).read_bytes())
    answer = ClassInfluence(diagnostics=False).fit(RunStore(first))
    expected = ClassInfluence(diagnostics=False).fit(RunStore(second))
    assert answer.classes_["influence"].equals(expected.classes_["influence"])


def test_a_damaged_saved_estimate_is_fitted_again(estimated, cli):
    before = cli("top", estimated)
    (estimated / "influence" / "estimate.npz").write_bytes(b"not an archive")
    assert cli("top", estimated) == before


def test_a_report_after_estimate_reads_the_saved_estimate_and_its_diagnostics(
    estimated, cli, monkeypatch, tmp_path
):
    (estimated / "influence" / "summary.json").unlink()
    assert cli("report", estimated, "--out", tmp_path / "fitted")[0] == 0
    assert cli("estimate", estimated)[0] == 0
    _forbid_streaming(monkeypatch)
    assert cli("report", estimated, "--out", tmp_path / "read")[0] == 0
    for page in ("index.html", "tables/classes.csv", "tables/class_matrix.csv"):
        read, fitted = ((tmp_path / how / page).read_text() for how in ("read", "fitted"))
        minute = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d")  # when the page was made
        assert minute.sub("", read) == minute.sub("", fitted), page


def test_a_saved_estimate_without_diagnostics_serves_tables_but_not_a_report(estimated):
    store = RunStore(estimated)
    ClassInfluence(diagnostics=False).fit(store).save(store.path("influence"))
    assert ClassInfluence(diagnostics=False).fit(store).stability_ is None
    fitted = ClassInfluence().fit(store)  # asks for diagnostics: fitted again
    assert fitted.stability_ is not None and fitted._accumulator is not None
