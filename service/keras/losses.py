"""Building the training loss from a LossSpec."""

from __future__ import annotations

import keras
from kerasrpc.service.keras.last_axis_mean_squared_error import (
    LastAxisMeanSquaredError,
)
from kerasrpc.service.keras.violations import Violations
from kerasrpc.v1 import spec_pb2

_CROSSENTROPY = {
    "binary_crossentropy": keras.losses.BinaryCrossentropy,
    "categorical_crossentropy": keras.losses.CategoricalCrossentropy,
}


def check_loss(spec: spec_pb2.LossSpec, path: str, v: Violations) -> None:
    """Record every violation of a loss spec in `v`."""
    kind = v.oneof(spec, "loss", path)
    if kind is None:
        return
    kind_path = f"{path}.{kind}"

    if kind == "huber" and spec.huber.HasField("delta"):
        v.positive_float(kind_path, "delta", spec.huber.delta)
    if kind in _CROSSENTROPY:
        v.fraction(kind_path, "label_smoothing", getattr(spec, kind).label_smoothing)
    if (
        kind == "sparse_categorical_crossentropy"
        and spec.sparse_categorical_crossentropy.label_smoothing != 0.0
    ):
        smoothing = spec.sparse_categorical_crossentropy.label_smoothing
        v.add(
            f"{kind_path}.label_smoothing",
            f"expected 0 for sparse labels, received label_smoothing={smoothing}",
        )


def build_loss(spec: spec_pb2.LossSpec, path: str = "loss") -> keras.losses.Loss:
    """Check a loss spec and build the Keras loss it names.

    Raises:
        InvalidArgument: No loss is set, or one of its arguments is out of range.
    """
    v = Violations()
    check_loss(spec, path, v)
    v.raise_if_any()

    kind = spec.WhichOneof("loss")
    if kind == "last_axis_mean_squared_error":
        return LastAxisMeanSquaredError()
    if kind == "mean_squared_error":
        return keras.losses.MeanSquaredError()
    if kind == "mean_absolute_error":
        return keras.losses.MeanAbsoluteError()
    if kind == "huber":
        return keras.losses.Huber(
            delta=spec.huber.delta if spec.huber.HasField("delta") else 1.0
        )
    if kind == "sparse_categorical_crossentropy":
        return keras.losses.SparseCategoricalCrossentropy(
            from_logits=spec.sparse_categorical_crossentropy.from_logits
        )

    assert kind is not None
    args = getattr(spec, kind)
    return _CROSSENTROPY[kind](
        from_logits=args.from_logits, label_smoothing=args.label_smoothing
    )
