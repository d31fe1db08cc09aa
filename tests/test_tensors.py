"""Tensor messages: raw little-endian bytes with a dtype and a shape."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from kerasrpc.client.tensors import TensorFormatError, to_array, to_tensor
from kerasrpc.v1 import tensor_pb2

DTYPES = [
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
    "uint64", "float16", "float32", "float64", ml_dtypes.bfloat16,
]  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_round_trips(dtype: object) -> None:
    array = (np.arange(24) % 7).astype(dtype).reshape(2, 3, 4)

    decoded = to_array(to_tensor(array))

    assert decoded.dtype == array.dtype
    assert decoded.shape == (2, 3, 4)
    np.testing.assert_array_equal(decoded, array)


def test_big_endian_arrays_travel_little_endian() -> None:
    array = np.arange(5, dtype=">f4")

    tensor = to_tensor(array)

    assert tensor.dtype == tensor_pb2.DATA_TYPE_FLOAT32
    assert tensor.content == np.arange(5, dtype="<f4").tobytes()


def test_scalars_and_empty_batches_round_trip() -> None:
    assert to_array(to_tensor(np.float32(2.5))).shape == ()
    assert to_array(to_tensor(np.zeros((0, 3), "int64"))).shape == (0, 3)


def test_decoding_shares_the_message_bytes_read_only() -> None:
    decoded = to_array(to_tensor(np.ones((2, 2), "float32")))

    assert not decoded.flags.writeable


def test_an_unsupported_dtype_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="received <U1"):
        to_tensor(np.array(["a"]))


@pytest.mark.parametrize(
    ("tensor", "field", "description"),
    [
        (tensor_pb2.Tensor(shape=[1]), "x.dtype", "received DATA_TYPE_UNSPECIFIED"),
        (tensor_pb2.Tensor(dtype=99, shape=[1]), "x.dtype", "received 99"),
        (
            tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_INT8, shape=[-1]),
            "x.shape",
            "expected non-negative dimensions, received [-1]",
        ),
        (
            tensor_pb2.Tensor(
                dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[2, 2], content=b"1234"
            ),
            "x.content",
            "expected 16 bytes for dtype float32 and shape [2, 2], received 4",
        ),
    ],
)
def test_malformed_tensors_name_the_field(
    tensor: tensor_pb2.Tensor, field: str, description: str
) -> None:
    with pytest.raises(TensorFormatError) as raised:
        to_array(tensor, "x")

    assert raised.value.field == field
    assert description in raised.value.description
