"""Seeded initializers, so two builds from one seed get equal weights."""

from __future__ import annotations

from typing import Any

import keras

_SEED_RANGE = 2**31 - 1


class Seeds:
    """Hands out one seed per weight, derived from the build's seed.

    Args:
        seed: The build's seed. None leaves every initializer unseeded, so
            each build draws fresh weights.
    """

    def __init__(self, seed: int | None) -> None:
        self._seed = seed
        self._drawn = 0

    def next(self) -> int | None:
        """Return the next weight's seed, or None when the build is unseeded."""
        if self._seed is None:
            return None
        self._drawn += 1
        return (self._seed * 1_000_003 + self._drawn) % _SEED_RANGE

    def initializer(self, class_name: str, **config: Any) -> Any:
        """Return a Keras initializer of this class, seeded when the build is."""
        seed = self.next()
        if seed is not None:
            config["seed"] = seed
        return keras.initializers.get({"class_name": class_name, "config": config})
