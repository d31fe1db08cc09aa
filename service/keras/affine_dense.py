"""AffineDense: a dense layer without activation, x.w + b."""

from __future__ import annotations

from typing import Any

import keras
from kerasrpc.service.keras.arguments import check_units


@keras.saving.register_keras_serializable(package="kerasrpc")
class AffineDense(keras.layers.Layer):  # type: ignore[misc]
    """Affine map x.w + b with random-normal initial weights.

    Args:
        units: Size of the output's last axis. Must be positive.
        seed: Seed for the initial weights. None draws fresh ones.
        **kwargs: Base layer arguments such as `name` and `dtype`.

    Example:
        >>> layer = AffineDense(units=5)
        >>> layer(np.zeros((32, 2, 8))).shape
        (32, 2, 5)
    """

    def __init__(self, units: int = 32, seed: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.units = check_units("AffineDense", units)
        self.seed = seed

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        """Create w (input_dim, units) and b (units)."""
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(
                "AffineDense expected an input with a known last axis, "
                f"received input shape {input_shape}"
            )

        self.w = self.add_weight(
            name="w",
            shape=(input_dim, self.units),
            initializer=keras.initializers.RandomNormal(seed=self.seed),
            trainable=True,
        )
        self.b = self.add_weight(
            name="b",
            shape=(self.units,),
            initializer=keras.initializers.RandomNormal(seed=_next(self.seed)),
            trainable=True,
        )

    def call(self, inputs: Any) -> Any:
        """Return inputs.w + b."""
        return keras.ops.add(keras.ops.matmul(inputs, self.w), self.b)

    def compute_output_shape(
        self, input_shape: tuple[int | None, ...]
    ) -> tuple[int | None, ...]:
        """Replace the last axis by units."""
        return (*input_shape[:-1], self.units)

    def get_config(self) -> dict[str, Any]:
        """Return units and seed with the base layer's config."""
        config: dict[str, Any] = super().get_config()
        config.update({"units": self.units, "seed": self.seed})
        return config


def _next(seed: int | None) -> int | None:
    """Derive the bias seed from the kernel seed so the two differ."""
    return None if seed is None else seed + 1
