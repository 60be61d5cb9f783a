"""Property-based checks of what users hand the tool: any config table and any `record`
input is either accepted or refused with the tool's own one-line error, never a traceback."""

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the dev extra's hypothesis is missing")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from transfer_influence.config import Config, ConfigError  # noqa: E402
from transfer_influence.store import RecordError  # noqa: E402
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
