"""BinaryTruePositives: counts where both target and prediction are non-zero."""

from __future__ import annotations

from typing import Any

import keras


@keras.saving.register_keras_serializable(package="kerasrpc")
class BinaryTruePositives(keras.metrics.Metric):  # type: ignore[misc]
    """Count of positions where y_true and y_pred are both non-zero.

    Non-zero values count as positive. Optional sample weights are broadcast
    to the values and weight each position. The count accumulates across
    updates until `reset_state`.

    Example:
        >>> metric = BinaryTruePositives()
        >>> metric.update_state([0, 1, 1, 1], [1, 0, 1, 1])
        >>> float(metric.result())
        2.0
    """

    def __init__(self, name: str = "binary_true_positives", **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.true_positives = self.add_variable(
            shape=(), initializer="zeros", dtype=self.dtype, name="true_positives"
        )

    def update_state(
        self, y_true: Any, y_pred: Any, sample_weight: Any | None = None
    ) -> None:
        """Add this batch's (weighted) true positives to the count."""
        y_true = keras.ops.cast(y_true, "bool")
        y_pred = keras.ops.cast(y_pred, "bool")
        values = keras.ops.cast(keras.ops.logical_and(y_true, y_pred), self.dtype)

        if sample_weight is not None:
            values = keras.ops.multiply(
                values, self._weights_like(sample_weight, values)
            )

        self.true_positives.assign_add(keras.ops.sum(values))

    def _weights_like(self, sample_weight: Any, values: Any) -> Any:
        """Cast the weights and broadcast them to the values' shape.

        Per-example weights of shape (batch,) gain trailing axes first, so
        they weight every position of their example.
        """
        weights = keras.ops.cast(sample_weight, self.dtype)
        while len(weights.shape) < len(values.shape):
            weights = keras.ops.expand_dims(weights, -1)
        return keras.ops.broadcast_to(weights, keras.ops.shape(values))

    def result(self) -> Any:
        """Return the count so far."""
        return keras.ops.convert_to_tensor(self.true_positives)

    def reset_state(self) -> None:
        """Set the count back to zero."""
        self.true_positives.assign(0.0)
