"""LastAxisMeanSquaredError: squared error averaged over the last axis."""

from __future__ import annotations

from typing import Any

import keras


@keras.saving.register_keras_serializable(package="kerasrpc")
class LastAxisMeanSquaredError(keras.losses.Loss):  # type: ignore[misc]
    """Mean over the last axis of (prediction - target) squared.

    The target is cast to the prediction's dtype first, so integer labels
    work with float predictions.

    Example:
        >>> loss = LastAxisMeanSquaredError()
        >>> float(loss([[0.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 0.0]]))
        0.5
    """

    def __init__(self, name: str = "last_axis_mean_squared_error", **kwargs: Any):
        super().__init__(name=name, **kwargs)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """Return the per-example mean squared error over the last axis."""
        y_pred = keras.ops.convert_to_tensor(y_pred)
        y_true = keras.ops.cast(y_true, y_pred.dtype)
        return keras.ops.mean(keras.ops.square(y_pred - y_true), axis=-1)

    def get_config(self) -> dict[str, Any]:
        """Return the base loss config (name, reduction, dtype)."""
        config: dict[str, Any] = super().get_config()
        return config
