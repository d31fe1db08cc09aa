"""Convert between numpy arrays and kerasrpc.v1.Tensor messages."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from kerasrpc.v1 import tensor_pb2

_NUMPY_TYPES: dict[int, np.dtype[Any]] = {
    tensor_pb2.DATA_TYPE_BOOL: np.dtype("bool"),
    tensor_pb2.DATA_TYPE_INT8: np.dtype("<i1"),
    tensor_pb2.DATA_TYPE_INT16: np.dtype("<i2"),
    tensor_pb2.DATA_TYPE_INT32: np.dtype("<i4"),
    tensor_pb2.DATA_TYPE_INT64: np.dtype("<i8"),
    tensor_pb2.DATA_TYPE_UINT8: np.dtype("<u1"),
    tensor_pb2.DATA_TYPE_UINT16: np.dtype("<u2"),
    tensor_pb2.DATA_TYPE_UINT32: np.dtype("<u4"),
    tensor_pb2.DATA_TYPE_UINT64: np.dtype("<u8"),
    tensor_pb2.DATA_TYPE_FLOAT16: np.dtype("<f2"),
    tensor_pb2.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    tensor_pb2.DATA_TYPE_FLOAT64: np.dtype("<f8"),
}
# Both byte orders of each dtype map to its DataType; arrays are sent little-endian.
_DATA_TYPES: dict[np.dtype[Any], int] = {
    **{dtype: value for value, dtype in _NUMPY_TYPES.items()},
    **{dtype.newbyteorder(">"): value for value, dtype in _NUMPY_TYPES.items()},
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
    return _NUMPY_TYPES[dtype]


def data_type(dtype: npt.DTypeLike) -> int:
    """Return the kerasrpc DataType value of a numpy dtype."""
    resolved = np.dtype(dtype)
    found = _DATA_TYPES.get(resolved)
    if found is not None:
        return found
    if resolved.name == "bfloat16":
        return tensor_pb2.DATA_TYPE_BFLOAT16
    raise ValueError(
        f"dtype expected one of {', '.join(dtype_names())}, received {resolved}"
    )


def dtype_names() -> list[str]:
    """Return the names of the dtypes a Tensor can carry."""
    return [dtype.name for dtype in _NUMPY_TYPES.values()] + ["bfloat16"]


def to_tensor(array: npt.ArrayLike) -> tensor_pb2.Tensor:
    """Encode an array as a Tensor: its dtype, shape and little-endian bytes."""
    tensor = tensor_pb2.Tensor()
    fill_tensor(tensor, array)
    return tensor


def fill_tensor(tensor: tensor_pb2.Tensor, array: npt.ArrayLike) -> None:
    """Write an array into an existing Tensor message, copying its bytes once."""
    values = np.asarray(array)
    tensor.dtype = data_type(values.dtype)  # type: ignore[assignment]
    if values.dtype.byteorder == ">":
        values = values.astype(values.dtype.newbyteorder("<"))
    tensor.shape[:] = values.shape
    tensor.content = np.ascontiguousarray(values).tobytes()


class TensorLike(Protocol):
    """A Tensor message, or any object with its three fields."""

    @property
    def dtype(self) -> int:
        """The DataType value."""

    @property
    def shape(self) -> Sequence[int]:
        """The dimensions."""

    @property
    def content(self) -> bytes | memoryview:
        """The values' little-endian bytes, in C order."""


def to_array(tensor: TensorLike, field: str = "tensor") -> npt.NDArray[Any]:
    """Decode a Tensor into a read-only array that shares its content's memory.

    Reading a message's bytes field copies it, once; a memoryview content
    (a request decoded in place) is not copied at all.

    Raises:
        TensorFormatError: the dtype is unset or unknown, a dimension is
            negative, or the byte count does not match dtype and shape.
    """
    try:
        dtype = numpy_dtype(tensor.dtype)
    except KeyError:
        known: dict[int, str] = {v: k for k, v in tensor_pb2.DataType.items()}
        raise TensorFormatError(
            f"{field}.dtype",
            f"expected one of {', '.join(dtype_names())}, "
            f"received {known.get(tensor.dtype, tensor.dtype)}",
        ) from None
    shape = tuple(tensor.shape)
    if any(size < 0 for size in shape):
        raise TensorFormatError(
            f"{field}.shape",
            f"expected non-negative dimensions, received {list(shape)}",
        )
    content = tensor.content  # each read of a message's bytes field copies it
    expected = math.prod(shape) * dtype.itemsize
    if len(content) != expected:
        raise TensorFormatError(
            f"{field}.content",
            f"expected {expected} bytes for dtype {dtype.name} and shape "
            f"{list(shape)}, received {len(content)}",
        )
    return np.frombuffer(content, dtype=dtype).reshape(shape)
