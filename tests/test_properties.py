"""Property-based checks of what users hand the tool: any config table and any `record`
input is either accepted or refused with the tool's own one-line error, never a traceback."""

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the dev extra's hypothesis is missing")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from transfer_influence.config import Config, ConfigError  # noqa: E402
from transfer_influence.store import RecordError, RunStore  # noqa: E402
from transfer_influence.store.importing import record_arrays  # noqa: E402

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.text(max_size=6), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=2),
)
RUN_KEYS = ("seed", "alpha", "models", "chunk_size", "design", "seeds", "keep_logits",
            "outputs", "claim_timeout_s", "shared_seed", "seed_per_chunk", "unknown")  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(RUN_KEYS), VALUES, max_size=5), VALUES)
def test_any_config_is_accepted_or_refused_with_a_config_error(run, trainer_type):
    try:
        config = Config.from_dict({"run": run, "trainer": {"type": trainer_type, "params": {}}})
    except ConfigError as error:
        assert str(error) and "\n" not in str(error)
        return
    r = config.run  # what was accepted is what the tool can run
    assert 0 < r.alpha < 1 and r.models >= 2 and r.chunk_size >= 1 and r.seed >= 0
    assert r.seeds in ("model", "chunk", "run") and isinstance(config.trainer.type, str)
    assert Config.from_dict(config.to_dict()) == config


def _dtype():
    return st.sampled_from(
        [np.bool_, np.int8, np.int64, np.float32, np.float64, np.complex64, np.str_]
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    masks=hnp.arrays(_dtype(), hnp.array_shapes(min_dims=1, max_dims=3, max_side=6)),
    logits=hnp.arrays(_dtype(), hnp.array_shapes(min_dims=1, max_dims=4, max_side=6)),
)
def test_any_record_input_is_recorded_or_refused_with_a_record_error(
    tmp_path_factory, masks, logits
):
    arrays = {"masks": masks, "logits": logits, "labels": np.arange(6) % 2}
    run = tmp_path_factory.mktemp("run") / "run"
    try:
        chunks = record_arrays(run, arrays)
    except RecordError as error:
        assert str(error) and "\n" not in str(error)
        return
    # Accepted: bool or 0/1 masks, one row per model, and real logits of matching shape.
    assert set(np.unique(masks).tolist()) <= {0, 1} and masks.shape[0] == logits.shape[0]
    assert np.isrealobj(logits) and chunks[-1].stop == masks.shape[0]


NAMES = st.one_of(
    hnp.arrays(_dtype(), hnp.array_shapes(min_dims=0, max_dims=2, max_side=7)),
    st.lists(st.text(max_size=4), max_size=7).map(np.array),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(labels=NAMES, source_classes=NAMES, example_ids=NAMES, target_classes=NAMES)
def test_any_names_and_labels_are_recorded_or_refused_leaving_nothing(
    tmp_path_factory, labels, source_classes, example_ids, target_classes
):
    rng = np.random.default_rng(0)
    arrays = {
        "masks": rng.random((4, 6)) < 0.5,
        "logits": rng.normal(size=(4, 6, 2)).astype(np.float32),
        "labels": labels,
        "source_classes": source_classes,
        "example_ids": example_ids,
        "target_classes": target_classes,
    }
    run = tmp_path_factory.mktemp("run") / "run"
    try:
        record_arrays(run, arrays)
    except RecordError as error:
        assert str(error) and "\n" not in str(error)
        assert not run.exists()  # a failed import into a new run leaves nothing behind
        return
    assert RunStore(run).planned_models == 4


JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=100, deadline=None)
@given(owner=JSON)
def test_any_claim_file_is_free_held_or_stale(owner):
    import json
    import tempfile
    from pathlib import Path

    from transfer_influence.store.claims import claim_state

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "claim"
        path.write_text(json.dumps(owner))
        assert claim_state(path, 60.0) in ("held", "stale")


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.sampled_from(["config", "task", "chunks", "format", "whole"]), value=JSON)
def test_any_damage_to_run_json_opens_or_is_refused_in_one_line(tmp_path_factory, key, value):
    import json

    from transfer_influence.store import RunError

    run = tmp_path_factory.mktemp("run") / "run"
    record_arrays(
        run, {"masks": np.eye(4, dtype=bool), "p_correct": np.eye(4), "labels": np.arange(4) % 2}
    )
    meta = json.loads((run / "run.json").read_text())
    meta = value if key == "whole" else dict(meta, **{key: value})
    (run / "run.json").write_text(json.dumps(meta))
    try:
        RunStore(run)
    except RunError as error:
        assert str(error) and "\n" not in str(error)


PARTS = st.sampled_from(["cat", "dog", "..", ".", "", "a b", "x.png", "/"])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(names=st.lists(st.lists(PARTS, min_size=1, max_size=4).map("/".join), max_size=4))
def test_any_tar_member_name_is_read_inside_its_folder_or_refused(tmp_path_factory, names):
    import io
    import tarfile

    from PIL import Image

    from transfer_influence.datasets.folder import load_folder

    root = tmp_path_factory.mktemp("data")
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    blob = buffer.getvalue()
    with tarfile.open(root / "train.tar", "w") as archive:
        for name in ["cat/1.png", *(n + ".png" for n in names)]:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            archive.addfile(info, io.BytesIO(blob))
    try:
        data = load_folder(str(root), "train", cache=str(root / "cache"))
    except ValueError as error:
        assert str(error) and "\n" not in str(error)
        return
    for example in data.example_ids.tolist():  # what was read is a plain path in the archive
        assert not example.startswith("/") and ".." not in example.split("/")
