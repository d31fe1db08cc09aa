"""Convert between numpy arrays and kerasrpc.v1.Tensor messages."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
from kerasrpc.v1 import tensor_pb2

_NUMPY_TYPES: dict[int, str] = {
    tensor_pb2.DATA_TYPE_BOOL: "bool",
    tensor_pb2.DATA_TYPE_INT8: "<i1",
    tensor_pb2.DATA_TYPE_INT16: "<i2",
    tensor_pb2.DATA_TYPE_INT32: "<i4",
    tensor_pb2.DATA_TYPE_INT64: "<i8",
    tensor_pb2.DATA_TYPE_UINT8: "<u1",
    tensor_pb2.DATA_TYPE_UINT16: "<u2",
    tensor_pb2.DATA_TYPE_UINT32: "<u4",
    tensor_pb2.DATA_TYPE_UINT64: "<u8",
    tensor_pb2.DATA_TYPE_FLOAT16: "<f2",
    tensor_pb2.DATA_TYPE_FLOAT32: "<f4",
    tensor_pb2.DATA_TYPE_FLOAT64: "<f8",
}


class TensorFormatError(ValueError):
    """A Tensor message that does not describe a valid array."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


def numpy_dtype(dtype: int) -> np.dtype[Any]:
    """Return the numpy dtype of a kerasrpc DataType value."""
    if dtype == tensor_pb2.DATA_TYPE_BFLOAT16:
        import ml_dtypes

        bfloat16: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
        return bfloat16
    if dtype not in _NUMPY_TYPES:
        raise KeyError(dtype)
    return np.dtype(_NUMPY_TYPES[dtype])


def data_type(dtype: npt.DTypeLike) -> int:
    """Return the kerasrpc DataType value of a numpy dtype."""
    resolved = np.dtype(dtype)
    if resolved.name == "bfloat16":
        return tensor_pb2.DATA_TYPE_BFLOAT16
    for value, name in _NUMPY_TYPES.items():
        if np.dtype(name) == resolved.newbyteorder("<") or (resolved == np.dtype(name)):
            return value
    raise ValueError(
        f"dtype expected one of {', '.join(dtype_names())}, received {resolved}"
    )


def dtype_names() -> list[str]:
    """Return the names of the dtypes a Tensor can carry."""
    return [np.dtype(name).name for name in _NUMPY_TYPES.values()] + ["bfloat16"]


def to_tensor(array: npt.ArrayLike) -> tensor_pb2.Tensor:
    """Encode an array as a Tensor: its dtype, shape and little-endian bytes."""
    values = np.asarray(array)
    dtype = data_type(values.dtype)
    if values.dtype.byteorder == ">":
        values = values.astype(values.dtype.newbyteorder("<"))
    return tensor_pb2.Tensor(
        dtype=dtype,  # type: ignore[arg-type]
        shape=values.shape,
        content=np.ascontiguousarray(values).tobytes(),
    )


def to_array(tensor: tensor_pb2.Tensor, field: str = "tensor") -> npt.NDArray[Any]:
    """Decode a Tensor into a read-only array that shares the message's bytes.

    Raises:
        TensorFormatError: the dtype is unset or unknown, a dimension is
            negative, or the byte count does not match dtype and shape.
    """
    try:
        dtype = numpy_dtype(tensor.dtype)
    except KeyError:
        raise TensorFormatError(
            f"{field}.dtype",
            f"expected one of {', '.join(dtype_names())}, "
            f"received {tensor_pb2.DataType.Name(tensor.dtype) if tensor.dtype in tensor_pb2.DataType.values() else tensor.dtype}",  # noqa: E501
        ) from None
    shape = tuple(tensor.shape)
    if any(size < 0 for size in shape):
        raise TensorFormatError(
            f"{field}.shape",
            f"expected non-negative dimensions, received {list(shape)}",
        )
    expected = math.prod(shape) * dtype.itemsize
    if len(tensor.content) != expected:
        raise TensorFormatError(
            f"{field}.content",
            f"expected {expected} bytes for dtype {dtype.name} and shape "
            f"{list(shape)}, received {len(tensor.content)}",
        )
    return np.frombuffer(tensor.content, dtype=dtype).reshape(shape)
