"""SingleDenseModel: a Model subclass wrapping one Dense layer."""

from __future__ import annotations

from typing import Any

import keras
from kerasrpc.service.keras.arguments import check_units


@keras.saving.register_keras_serializable(package="kerasrpc")
class SingleDenseModel(keras.Model):  # type: ignore[misc]
    """A model whose whole body is one Dense layer.

    Args:
        units: Output units of the Dense layer. Must be positive.
        activation: The Dense layer's activation name.
        layer_name: The Dense layer's name.
        seed: Seed for the initial kernel. None draws a fresh one.
        **kwargs: Base model arguments such as `name`.
    """

    def __init__(
        self,
        units: int = 5,
        activation: str = "relu",
        layer_name: str = "dense",
        seed: int | None = None,
        **kwargs: Any,
    ):
        check_units("SingleDenseModel", units)
        super().__init__(**kwargs)
        self.units = units
        self.activation = activation
        self.layer_name = layer_name
        self.seed = seed
        self.dense = keras.layers.Dense(
            units,
            activation=activation,
            name=layer_name,
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        )

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        """Build the Dense layer for inputs of this shape."""
        self.dense.build(input_shape)
        self.built = True

    def call(self, inputs: Any) -> Any:
        """Apply the Dense layer."""
        return self.dense(inputs)

    def compute_output_shape(
        self, input_shape: tuple[int | None, ...]
    ) -> tuple[int | None, ...]:
        """Replace the last axis by units."""
        return (*input_shape[:-1], self.units)

    def get_config(self) -> dict[str, Any]:
        """Return the constructor arguments."""
        return {
            "name": self.name,
            "units": self.units,
            "activation": self.activation,
            "layer_name": self.layer_name,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SingleDenseModel:
        """Rebuild the model from get_config's output."""
        return cls(**config)
