"""Input validation and output of the served model (digits.serving), including hypothesis fuzzing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, ErrorCode

from digits import serving

RNG = np.random.default_rng(0)
UINT8 = RNG.integers(0, 256, (3, 28, 28), dtype=np.uint8)


def rejected(data, match: str) -> None:
    with pytest.raises(MlflowException, match=match) as info:
        serving.to_images(data)
    assert info.value.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE)
    assert info.value.get_http_status_code() == 400


@pytest.mark.parametrize(
    "batch",
    [
        UINT8,
        UINT8.reshape(3, 1, 28, 28),
        UINT8.reshape(3, 784),
        UINT8.astype(np.int64),
        UINT8.astype(np.float64),  # 0–255 floats (e.g. uint8 pixels sent as JSON numbers)
        UINT8.astype(np.float32) / 255,  # [0, 1] floats
        UINT8.reshape(3, 784).tolist(),
        pd.DataFrame(UINT8.reshape(3, 784)),
    ],
    ids=["uint8", "nchw", "flat", "int64", "float-0-255", "float-0-1", "lists", "dataframe"],
)
def test_accepted_layouts_and_scales_give_the_same_images(batch):
    out = serving.to_images(batch)
    assert out.dtype == np.float32 and out.shape == (3, 1, 28, 28)
    np.testing.assert_allclose(out, UINT8.reshape(3, 1, 28, 28) / 255, atol=1e-6)


def test_float_scale_is_decided_per_image():
    batch = np.stack([np.full((28, 28), 0.5), np.full((28, 28), 127.5)])
    np.testing.assert_allclose(serving.to_images(batch), 0.5)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (np.zeros((0, 28, 28)), "empty batch"),
        ([], "empty batch"),
        (np.float64(3.0), "single number"),
        (np.zeros((2, 28, 27)), r"shaped \[N, 28, 28\].*got \[2, 28, 27\]"),
        (np.zeros((2, 3, 28, 28)), "got \\[2, 3, 28, 28\\]"),
        (np.zeros(784), "got \\[784\\]"),
        (np.full((1, 28, 28), np.nan), "image 0 contains NaN"),
        (np.stack([np.zeros((28, 28)), np.full((28, 28), np.inf)]), "image 1 contains NaN or infinite"),
        (np.full((1, 28, 28), -1), "outside 0-255"),
        (np.full((1, 28, 28), 256), "outside 0-255"),
        (np.full((1, 28, 28), 255.5), "outside 0-255"),
        (np.full((1, 28, 28), "a"), "numeric"),
        (np.zeros((1, 28, 28), dtype=bool), "numeric"),
        ([[1, 2], [3]], "rectangular|numeric"),
        ({"a": np.zeros((1, 784))}, "named inputs"),
        (np.zeros((serving.MAX_BATCH + 1, 784), np.uint8), "exceeds the limit"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_input_is_a_400_with_a_clear_message(data, match):
    rejected(data, match)


def test_probabilities_frame_columns_and_rows():
    logits = torch.tensor([[0.0] * 9 + [5.0], [3.0] + [0.0] * 9])
    frame = serving.probabilities_frame(logits)
    assert list(frame.columns) == serving.COLUMNS
    assert frame["class"].tolist() == [9, 0]
    np.testing.assert_allclose(frame[serving.COLUMNS[1:]].sum(axis=1), 1.0, rtol=1e-6)


def check_fuzzed(data) -> None:
    """Either a valid batch comes back or an INVALID_PARAMETER_VALUE error; never anything else."""
    try:
        out = serving.to_images(data)
    except MlflowException as exc:
        assert exc.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE) and exc.message
        return
    assert out.dtype == np.float32 and out.ndim == 4 and out.shape[1:] == (1, 28, 28)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
dtypes = st.one_of(
    hnp.integer_dtypes(),
    hnp.unsigned_integer_dtypes(),
    hnp.floating_dtypes(),
    hnp.boolean_dtypes(),
    hnp.complex_number_dtypes(),
    hnp.unicode_string_dtypes(max_len=3),
)


@FUZZ
@given(hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=30)))
def test_fuzz_any_array(arr):
    check_fuzzed(arr)


@FUZZ
@given(
    st.sampled_from([(1, 28, 28), (2, 1, 28, 28), (3, 784)]),
    st.sampled_from([np.float32, np.float64]),
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=8),
)
def test_fuzz_right_shape_with_special_floats(shape, dtype, values):
    arr = np.resize(np.array(values, dtype=dtype), shape)
    check_fuzzed(arr)


@FUZZ
@given(
    st.recursive(
        st.one_of(st.integers(-300, 300), st.floats(), st.text(max_size=2), st.none()),
        lambda inner: st.lists(inner, max_size=4),
        max_leaves=30,
    )
)
def test_fuzz_nested_json_like_values(value):
    check_fuzzed(value)
