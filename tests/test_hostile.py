"""Hostile inputs that once doubled, mixed or deleted data, hung, or gave a traceback: each is
refused in one line, or handled, and the run's data stays as it was."""

import contextlib
import io
import json
import os
import signal
import tarfile

import numpy as np
import pandas as pd
import pytest

from conftest import make_image_folder
from transfer_influence import RunStore
from transfer_influence.datasets.folder import load_folder
from transfer_influence.files import csv_text, read_arrays
from transfer_influence.store import RecordError, RunError
from transfer_influence.store.importing import record_arrays


def _results(m=10, k=6, n=20, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "masks": rng.random((m, k)) < 0.5,
        "logits": rng.normal(size=(m, n, c)).astype(np.float32),
        "labels": np.arange(n) % c,
    }


def _one_line_error(code, err):
    assert code == 2 and err.startswith("transfer-influence: error: "), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


@contextlib.contextmanager
def _no_hang(seconds=20):
    def hung(*_):
        raise TimeoutError("the command hung")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# -- doubled models ------------------------------------------------------------------------


def test_the_same_models_in_another_file_are_not_recorded_again(tmp_path, cli):
    """Saved again with an extra array, or with logits as float64, the models used to be
    recorded again (30 -> 90) and every interval narrowed."""
    data = _results()
    first, extra, wide = (tmp_path / f"{name}.npz" for name in ("first", "extra", "wide"))
    np.savez(first, **data)
    np.savez(extra, **data, notes=np.arange(3))
    np.savez(wide, **dict(data, logits=data["logits"].astype(np.float64)))
    run = tmp_path / "run"
    assert cli("record", run, "--from", first)[0] == 0
    for again in (extra, wide):
        code, _, err = cli("record", run, "--from", again)
        _one_line_error(code, err)
        assert "nothing written" in err
    more = _results(m=4, seed=1)
    mixed = {**data, "masks": np.concatenate([data["masks"], more["masks"]])}
    mixed["logits"] = np.concatenate([data["logits"], more["logits"]])
    record_arrays(run, mixed)  # ten known models and four new ones: only the four are added
    store = RunStore(run)
    assert store.planned_models == 14
    digests = np.concatenate([a["model_digest"] for _, a in store.iter_chunks()])
    assert len(set(digests.tolist())) == 14


def test_two_records_at_once_list_no_chunk_twice(tmp_path):
    """A record that read the plan before another finished used to adopt the other's chunk
    into the plan a second time ("830 of 630 done")."""
    first, second = _results(seed=1), _results(seed=2)
    run = tmp_path / "run"
    record_arrays(run, _results(m=2, seed=3))
    late = RunStore(run)  # opened (plan read) before the other record ran
    record_arrays(run, first)
    from transfer_influence.store.importing import _record_into

    masks = second["masks"]
    ids = np.array([f"{j:06d}" for j in range(20)])
    _record_into(late, second, masks, ids, None, None, "second.npz")
    store = RunStore(run)
    assert [(c.start, c.stop) for c in store.chunks] == [(0, 2), (2, 12), (12, 22)]
    assert len({a["model_digest"].tobytes() for _, a in store.iter_chunks()}) == 3
    assert not store.missing_chunks()


def test_a_model_twice_in_one_file_is_refused(tmp_path):
    data = _results()
    data["masks"][3], data["logits"][3] = data["masks"][1], data["logits"][1]
    with pytest.raises(RecordError, match="model 3 is a copy of model 1"):
        record_arrays(tmp_path / "run", data)
    assert not (tmp_path / "run").exists()


# -- mixed models --------------------------------------------------------------------------


def test_a_chunk_of_another_config_is_set_aside_and_retrained(make_config, cli, tmp_path):
    """Trained under another config with the same seed and subsets, such a chunk used to be
    accepted even by status --verify (the top influence moved from +1.0 to +20.7)."""
    config = make_config()
    run, other = tmp_path / "run", tmp_path / "other"
    assert cli("run", config, "--run-dir", run, "--quiet")[0] == 0
    before = cli("estimate", run)[1]
    louder = ["--set", "trainer.params.effect_scale=5.0"]
    assert cli("run", config, "--run-dir", other, "--quiet", *louder)[0] == 0
    name = "0000004-0000008.npz"
    (run / "chunks" / name).write_bytes((other / "chunks" / name).read_bytes())
    code, out, err = cli("status", run, "--verify")
    assert code == 0 and "made by another run" in err and "1 chunk(s) set aside" in out
    assert list((run / "foreign").glob(f"{name}.*"))
    assert cli("run", config, "--run-dir", run, "--quiet")[0] == 0  # trains it again
    assert cli("estimate", run)[1].split("\n")[1:] == before.split("\n")[1:]


# -- the user's files ----------------------------------------------------------------------


def test_cache_clear_deletes_only_what_the_tool_wrote(tmp_path, monkeypatch, cli):
    cache = tmp_path / "mine"
    cache.mkdir()
    np.save(cache / "weights.npy", np.arange(3))
    (cache / "notes.json").write_text('{"npy_sha256": "mine"}')
    (cache / "data-train-0123456789abcdef.json").write_text('{"mine": true}')
    monkeypatch.setenv("TRANSFER_INFLUENCE_CACHE", str(cache))
    make_image_folder(tmp_path / "data", ["a", "b"], 2)
    load_folder(str(tmp_path / "data"), "train")
    code, out, _ = cli("cache", "--clear")
    assert code == 0 and "1 cached dataset split(s)" in out
    left = sorted(p.name for p in cache.iterdir())
    assert left == ["data-train-0123456789abcdef.json", "notes.json", "weights.npy"]


def test_an_estimate_never_replaces_a_folder_of_the_users(make_config, cli, tmp_path):
    run, mine = tmp_path / "run", tmp_path / "thesis"
    assert cli("run", make_config(), "--run-dir", run, "--quiet")[0] == 0
    mine.mkdir()
    (mine / "chapter1.tex").write_text("precious")
    code, _, err = cli("estimate", run, "--out", mine)
    _one_line_error(code, err)
    assert "did not write" in err and (mine / "chapter1.tex").read_text() == "precious"
    assert cli("estimate", run, "--out", tmp_path / "new")[0] == 0
    assert cli("estimate", run, "--out", tmp_path / "new")[0] == 0  # its own: replaced


# -- hangs and blow-ups --------------------------------------------------------------------


def test_a_fifo_named_like_a_run_file_never_hangs(make_config, cli, tmp_path):
    run = tmp_path / "run"
    config = make_config()
    assert cli("run", config, "--run-dir", run, "--quiet")[0] == 0
    chunk = run / "chunks" / "0000000-0000004.npz"
    chunk.unlink()
    os.mkfifo(chunk)
    os.mkfifo(run / "claims" / "0000004-0000008")
    with _no_hang():
        assert cli("status", run)[0] == 0
        code, _, err = cli("estimate", run)
        assert code == 0 and "1 damaged chunk(s) moved to" in err
        assert cli("top", run)[0] == 0
        assert cli("run", config, "--run-dir", run, "--quiet")[0] == 0
    assert not RunStore(run).missing_chunks()
    assert chunk.is_file()  # trained again as a real file


@pytest.mark.parametrize("models", ["1000000000000", "10**12"])
def test_an_enormous_plan_is_refused_before_anything_is_written(make_config, cli, tmp_path, models):
    run = tmp_path / "run"
    for extra in ((), ("--dry-run",)):
        code, _, err = cli("run", make_config(), "--run-dir", run, "--set", f"run.models={models}",
                           *extra)  # fmt: skip
        _one_line_error(code, err)
    assert sorted(os.listdir(tmp_path)) == ["sim.toml"]
    code, _, err = cli("run", make_config(), "--run-dir", run, "--set", "run.models=900000",
                       "--set", "run.chunk_size=1", "--dry-run")  # fmt: skip
    _one_line_error(code, err)
    assert "900,000 chunks, over the limit" in err


def test_run_json_stays_small_at_any_number_of_models(make_config, cli, tmp_path):
    run = tmp_path / "run"
    config = make_config(models=8, chunk_size=20)
    assert cli("run", config, "--run-dir", run, "--quiet")[0] == 0
    store = RunStore(run)
    store.set_models(10)  # a short chunk: the plan is no longer one range
    store.set_models(1_000_000)
    assert (run / "run.json").stat().st_size < 20_000
    chunks = RunStore(run).chunks
    assert len(chunks) == 2 + 50_000 and chunks[1].size == 2 and chunks[-1].stop == 1_000_000
    assert all(a.stop == b.start for a, b in zip(chunks[:-1], chunks[1:], strict=True))
    with pytest.raises(RunError, match="at most 1,000,000 models"):
        RunStore(run).set_models(1_000_001)


# -- tracebacks and silent renames ---------------------------------------------------------


def _tar(path, members):
    with tarfile.open(path, "w") as archive:
        for name, kind, target in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = _png()
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            else:
                info.type = tarfile.LNKTYPE if kind == "hard" else tarfile.SYMTYPE
                info.linkname = target
                archive.addfile(info)


def _png():
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "member, message",
    [
        (("cat/../dog/2.png", "file", None), "not a plain path"),
        (("/abs/cat/3.png", "file", None), "not a plain path"),
        (("../cat/4.png", "file", None), "not a plain path"),
        (("cat/5.png", "hard", "/etc/passwd"), "links to '/etc/passwd'"),
        (("cat/6.png", "sym", "../../x.png"), "symbolic link"),
    ],
)
def test_a_tar_member_that_leaves_its_folder_is_refused_by_name(tmp_path, member, message):
    root = tmp_path / "data"
    root.mkdir()
    _tar(root / "train.tar", [("cat/1.png", "file", None), ("dog/1.png", "file", None), member])
    with pytest.raises(ValueError, match=message) as error:
        load_folder(str(root), "train", cache=str(tmp_path / "cache"))
    assert member[0] in str(error.value) and "\n" not in str(error.value)


def test_a_hard_link_inside_the_archive_is_read(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    _tar(root / "train.tar", [("cat/1.png", "file", None), ("dog/1.png", "hard", "cat/1.png")])
    data = load_folder(str(root), "train", cache=str(tmp_path / "cache"))
    assert data.labels.tolist() == [0, 1]


@pytest.mark.parametrize("content", ["[]", "null", '"mine"', "{", "7"])
def test_a_claim_that_is_not_the_tools_is_stale(make_config, cli, tmp_path, content):
    run = tmp_path / "run"
    config = make_config()
    assert cli("run", config, "--run-dir", run, "--quiet", "--time-limit", "0")[0] == 0
    (run / "claims" / "0000000-0000004").write_text(content)
    code, out, _ = cli("status", run)
    assert code == 0 and "1 with stale claims" in out
    assert cli("run", config, "--run-dir", run, "--quiet")[0] == 0
    assert not RunStore(run).missing_chunks()


@pytest.mark.parametrize(
    "damage",
    [
        lambda meta: dict(meta, task={"groups": "[" * 100_000}),
        lambda meta: dict(meta, task=dict(meta["task"], modes=[])),
        lambda meta: dict(meta, task=dict(meta["task"], targets=[])),
        lambda meta: dict(meta, task=dict(meta["task"], groups=[["a", "b"]])),
        lambda meta: dict(meta, chunks=[[0, 10**12, 1]]),
        lambda meta: dict(meta, chunks=[[0, 4, 4], [2, 8, 4]]),
    ],
)
def test_a_damaged_run_json_gives_one_line(make_config, cli, tmp_path, damage):
    run = tmp_path / "run"
    assert cli("run", make_config(), "--run-dir", run, "--quiet")[0] == 0
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(damage(meta)))
    for command in (("status", run), ("estimate", run), ("top", run)):
        code, _, err = cli(*command)
        _one_line_error(code, err)


def test_deeply_nested_json_gives_one_line(make_config, cli, tmp_path):
    run = tmp_path / "run"
    assert cli("run", make_config(), "--run-dir", run, "--quiet")[0] == 0
    (run / "run.json").write_text("[" * 100_000 + "]" * 100_000)
    code, _, err = cli("status", run)
    _one_line_error(code, err)
    assert "nested too deeply" in err


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: dict(d, source_classes=np.array([["a", "b", "c"], ["d", "e", "f"]])),
         "'source_classes' must be 6 names"),
        (lambda d: dict(d, labels=np.arange(20) + 5, target_classes=np.array(["a", "b", "c"])),
         r"labels must lie in \[0, 3\)"),
        (lambda d: dict(d, masks=d["masks"][:0], logits=d["logits"][:0]), "hold no models"),
        (lambda d: dict(d, labels=np.arange(20) * 0.5), "labels must be 20 integers"),
        (lambda d: dict(d, example_ids=np.zeros((20, 2))), "'example_ids' must be 20 names"),
    ],
)  # fmt: skip
def test_a_failed_record_leaves_nothing_behind(tmp_path, cli, change, message):
    data = _results()
    bad, good = tmp_path / "bad.npz", tmp_path / "good.npz"
    np.savez(bad, **change(dict(data, source_classes=np.array(list("abcdef")))))
    np.savez(good, **data)
    code, _, err = cli("record", tmp_path / "run", "--from", bad)
    _one_line_error(code, err)
    assert pytest.importorskip("re").search(message, err), err
    assert not (tmp_path / "run").exists()
    assert cli("record", tmp_path / "run", "--from", good)[0] == 0


# -- smaller -------------------------------------------------------------------------------


def test_class_names_reach_the_terminal_with_control_characters_escaped(tmp_path, cli):
    data = _results()
    names = np.array(["\x1b[31mred", "bell\x07", "ok", "tab\there", "\x9bcsi", "last"])
    path = tmp_path / "results.npz"
    np.savez(path, **data, source_classes=names)
    assert cli("record", tmp_path / "run", "--from", path)[0] == 0
    for command in (("estimate", tmp_path / "run"), ("top", tmp_path / "run", "-n", "6")):
        code, out, _ = cli(*command)
        assert code == 0 and "\\x1b[31mred" in out and "bell\\x07" in out
        assert not any(c in out for c in "\x1b\x07\x9b")


def test_csv_headers_are_neutralised_like_cells():
    table = pd.DataFrame({"=HYPERLINK(1)": [1.0], "group": ["+SUM(A1)"], "-x": [2]})
    text = csv_text(table)
    assert text.splitlines()[0] == "'=HYPERLINK(1),group,'-x"
    assert "'+SUM(A1)" in text


def test_model_digests_are_stored_with_every_trained_chunk(make_config, cli, tmp_path):
    run = tmp_path / "run"
    assert cli("run", make_config(), "--run-dir", run, "--quiet")[0] == 0
    store = RunStore(run)
    for chunk in store.chunks:
        arrays = read_arrays(store.chunk_path(chunk))
        assert str(arrays["run_digest"]) == store.run_digest
        assert arrays["model_digest"].shape == (chunk.size,)


# -- concurrency, with the interleavings forced ------------------------------------------


def test_two_runs_creating_one_run_at_once_both_go_on(make_config, cli, tmp_path, monkeypatch):
    """The second creator finds the run made while it built its own: it resumes that one."""
    from transfer_influence.store import run as run_module

    build, raced = run_module._build, []

    def build_then_lose_the_race(building, config, task, text):
        build(building, config, task, text)
        if not raced:  # another process finishes creating the same run first
            raced.append(True)
            RunStore.create(tmp_path / "run", config, task, text)

    monkeypatch.setattr(run_module, "_build", build_then_lose_the_race)
    assert cli("run", make_config(), "--run-dir", tmp_path / "run", "--quiet")[0] == 0
    assert raced and not RunStore(tmp_path / "run").missing_chunks()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "sim.toml"]


def test_record_beside_run_is_refused_both_ways(make_config, cli, tmp_path):
    trained, imported = tmp_path / "trained", tmp_path / "imported"
    assert cli("run", make_config(), "--run-dir", trained, "--quiet")[0] == 0
    results = tmp_path / "results.npz"
    np.savez(results, **_results(k=12, n=120, c=4))
    before = (trained / "run.json").read_bytes()
    code, _, err = cli("record", trained, "--from", results)
    _one_line_error(code, err)
    assert (trained / "run.json").read_bytes() == before
    assert cli("record", imported, "--from", results)[0] == 0
    for command in (("run", imported, "--quiet"), ("worker", imported)):
        code, _, err = cli(*command)
        _one_line_error(code, err)
    assert RunStore(imported).planned_models == 10


def test_a_run_whose_estimate_cannot_fit_in_memory_is_refused_up_front(tmp_path):
    from transfer_influence.config import Config
    from transfer_influence.trainers.protocol import TargetInfo, TaskDescription

    n = 200_000
    target = TargetInfo("t", np.arange(n).astype(str), np.zeros(n, dtype=np.int64), ("a",))
    task = TaskDescription(tuple(f"g{k}" for k in range(n)), (target,), ("fixed_feature",))
    config = Config.from_dict({"run": {"models": 4}, "trainer": {"type": "simulated"}})
    with pytest.raises(RunError, match=r"about 1,788 GiB \(200,000 source groups x 200,000"):
        RunStore.create(tmp_path / "run", config, task)
    assert sorted(os.listdir(tmp_path)) == []


def test_a_demo_too_small_for_its_estimator_is_refused_before_training(cli, tmp_path):
    code, out, err = cli("demo", "--models", "16", "--out", tmp_path / "demo")
    assert code == 2 and "needs at least 26 models for the demo's 16 classes, got 16" in err
    assert not (tmp_path / "demo").exists() and "Traceback" not in err
