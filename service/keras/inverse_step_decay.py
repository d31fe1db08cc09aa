"""InverseStepDecay: a learning rate that falls as 1 / (step + 1)."""

from __future__ import annotations

from typing import Any

import keras
from kerasrpc.service.keras.arguments import check_positive_number


@keras.saving.register_keras_serializable(package="kerasrpc")
class InverseStepDecay(keras.optimizers.schedules.LearningRateSchedule):  # type: ignore[misc]
    """lr(step) = initial_learning_rate / (step + 1).

    Args:
        initial_learning_rate: The rate at step 0. Must be positive.

    Example:
        >>> float(InverseStepDecay(0.1)(9))
        0.01
    """

    def __init__(self, initial_learning_rate: float):
        super().__init__()
        self.initial_learning_rate = check_positive_number(
            "initial_learning_rate", initial_learning_rate
        )

    def __call__(self, step: Any) -> Any:
        """Return the rate at this optimizer step."""
        step = keras.ops.cast(step, "float32")
        return keras.ops.divide(self.initial_learning_rate, step + 1.0)

    def get_config(self) -> dict[str, Any]:
        """Return the initial learning rate."""
        return {"initial_learning_rate": self.initial_learning_rate}
