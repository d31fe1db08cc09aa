"""What flows between layers while a spec is checked: shapes and dtypes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# The shape of one example, batch axis left out; None marks any size.
Shape = tuple[int | None, ...]

INTEGER_DTYPES = frozenset(
    {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
)


@dataclass(frozen=True)
class Signal:
    """The symbolic output of an input or a layer: its shape and dtype."""

    shape: Shape
    dtype: str

    @property
    def rank(self) -> int:
        """Return the number of axes of one example."""
        return len(self.shape)


class ShapeError(Exception):
    """A layer cannot take the input it is given.

    Args:
        description: What was expected and what was received.
        field: The layer argument at fault, empty for the input itself.
    """

    def __init__(self, description: str, field: str = "") -> None:
        super().__init__(description)
        self.description = description
        self.field = field


def show(shape: Shape) -> str:
    """Format a shape the way Keras prints it, batch axis included."""
    dims = ", ".join("None" if d is None else str(d) for d in (None, *shape))
    return f"({dims},)" if not shape else f"({dims})"


def need_rank(signal: Signal, rank: int, what: str) -> None:
    """Raise unless one example of `signal` has exactly `rank` axes."""
    if signal.rank != rank:
        raise ShapeError(
            f"expected an input of rank {rank + 1} {what}, "
            f"received input shape {show(signal.shape)}"
        )


def need_last_axis(signal: Signal) -> int:
    """Return the known size of the last axis, or raise."""
    if signal.rank == 0 or signal.shape[-1] is None:
        raise ShapeError(
            "expected an input with a known last axis, "
            f"received input shape {show(signal.shape)}"
        )
    return signal.shape[-1]


def need_float(signal: Signal) -> None:
    """Raise unless the signal holds numbers a weighted layer can multiply."""
    if signal.dtype == "bool":
        raise ShapeError(f"expected a numeric input, received dtype={signal.dtype}")


def elements(shape: Shape) -> int | None:
    """Return the element count of one example, None when any axis is unknown."""
    if any(d is None for d in shape):
        return None
    return math.prod(d for d in shape if d is not None)


def window_output(
    size: int | None, window: int, stride: int, padding: str
) -> int | None:
    """Return the output length of a convolution or pooling window on one axis."""
    if size is None:
        return None
    if padding in ("same", "causal"):
        return -(-size // stride)
    if size < window:
        raise ShapeError(
            f"expected an input axis of at least the window size {window}, "
            f"received an axis of size {size}"
        )
    return (size - window) // stride + 1


def same_shapes(signals: Sequence[Signal], what: str) -> Shape:
    """Return the common shape of several inputs, unknown axes matching any size."""
    first = signals[0].shape
    for signal in signals[1:]:
        compatible = len(signal.shape) == len(first) and all(
            a is None or b is None or a == b
            for a, b in zip(signal.shape, first, strict=True)
        )
        if not compatible:
            shapes = ", ".join(show(s.shape) for s in signals)
            raise ShapeError(f"expected {what}, received input shapes {shapes}")

    return tuple(
        next((s.shape[i] for s in signals if s.shape[i] is not None), None)
        for i in range(len(first))
    )


def example_axis(axis: int, rank: int, field: str) -> int:
    """Map a Keras axis (batch axis 0) to an index into one example's shape."""
    full = axis + rank + 1 if axis < 0 else axis
    if not 1 <= full <= rank:
        raise ShapeError(
            f"expected an axis in [{-rank}, {rank}] other than the batch axis 0 "
            f"for an input of rank {rank + 1}, received {field}={axis}",
            field,
        )
    return full - 1
