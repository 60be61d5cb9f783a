"""Every crash point of every command that writes: killed there, then resumed.

After each kill and resume: no model twice, none lost, the same results as an uninterrupted
run, no temporary file left, and a set of files (an estimate, a report) read as the old set or
the new one, never a mix. The kills run in tests/crash_sweep.py (forked children)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SWEEP = Path(__file__).with_name("crash_sweep.py")


def _sweep(scenario, folder):
    done = subprocess.run(
        [sys.executable, str(SWEEP), scenario, str(folder)],
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _check_every_point_was_tried(result, least):
    reached = result["reached"]
    assert sum(reached.values()) >= least, reached
    assert len(result["kills"]) == sum(reached.values())
    for kill in result["kills"]:
        assert kill["killed"], kill["point"]  # the process did die there
        assert kill["orphans"] == 0, kill["point"]  # and took its workers with it
        assert kill["leftovers"] == [], kill["point"]


@pytest.mark.slow
@pytest.mark.parametrize("scenario, least", [("run", 15), ("worker", 9)])
def test_training_killed_at_every_point_resumes_to_the_same_models(tmp_path, scenario, least):
    result = _sweep(scenario, tmp_path)
    _check_every_point_was_tried(result, least)
    reference = result["reference"]
    assert reference["planned"] == 12 and reference["missing"] == 0
    assert sorted(reference["indices"]) == list(range(12))
    for kill in result["kills"]:
        assert kill["resume_code"] == 0, kill["point"]
        assert kill["after_resume"] == reference, kill["point"]


@pytest.mark.slow
def test_record_killed_at_every_point_adds_exactly_what_is_missing(tmp_path):
    result = _sweep("record", tmp_path)
    _check_every_point_was_tried(result, 24)
    reference = result["reference"]
    assert reference["planned"] == 12 and len(set(reference["digests"])) == 12
    for kill in result["kills"]:
        held = (kill["after_kill"] or {}).get("digests", [])
        assert len(held) == len(set(held)) <= 12, kill["point"]
        # 2: every model was already there (a chunk written before the kill was adopted).
        assert kill["resume_code"] in (0, 2), kill["point"]
        assert kill["after_resume"] == reference, kill["point"]


@pytest.mark.slow
@pytest.mark.parametrize("scenario, least", [("estimate", 8), ("report", 12)])
def test_a_set_killed_at_every_point_reads_as_the_old_set_or_the_new(tmp_path, scenario, least):
    result = _sweep(scenario, tmp_path)
    _check_every_point_was_tried(result, least)
    old, new = result["old_set"], result["reference"]
    assert old is not None and new is not None and old != new
    for kill in result["kills"]:
        assert kill["after_kill"] in (old, new), kill["point"]
        assert kill["resume_code"] == 0 and kill["after_resume"] == new, kill["point"]
    # The swap's own renames are among the points: the last kills leave the new set.
    assert [k["after_kill"] == new for k in result["kills"]][-2:] == [True, True]


@pytest.mark.slow
def test_prune_killed_at_every_point_resumes_to_the_same_results(tmp_path):
    result = _sweep("prune", tmp_path)
    _check_every_point_was_tried(result, 30)
    reference = result["reference"]
    assert reference["models"]["planned"] == 6 and reference["results"]
    assert len(set(reference["models"]["digests"])) == 6
    for kill in result["kills"]:
        assert kill["resume_code"] == 0 and kill["after_resume"] == reference, kill["point"]


@pytest.mark.slow
@pytest.mark.parametrize("scenario, least", [("cache", 30), ("indexed", 15)])
def test_a_cache_build_killed_at_every_point_resumes_to_the_same_cache(tmp_path, scenario, least):
    """Every record of a finished batch, the description and the move into place."""
    result = _sweep(scenario, tmp_path)
    _check_every_point_was_tried(result, least)
    reference = result["reference"]
    built = reference["cache"] if scenario == "cache" else reference
    assert built and not any(".partial" in name for name in built), built
    assert scenario == "indexed" or reference["planned"] == 4
    for kill in result["kills"]:
        assert kill["resume_code"] == 0 and kill["after_resume"] == reference, kill["point"]
