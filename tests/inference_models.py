"""Small Keras models of every style, stored through ImportModel for serving tests."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from kerasrpc.client import Client

RNG = np.random.default_rng(7)


@dataclass
class Stored:
    """A model stored on the server, with the in-process model it came from."""

    name: str
    version: int
    model: Any
    inputs: dict[str, np.ndarray]

    def expected(self) -> dict[str, np.ndarray]:
        """Return model(x) computed in this process, by output name."""
        fed = next(iter(self.inputs.values())) if len(self.inputs) == 1 else self.inputs
        result = self.model(fed, training=False)
        names = output_names(self.model)
        values = result if isinstance(result, (list, tuple)) else [result]
        return {n: np.asarray(v) for n, v in zip(names, values, strict=True)}


def unique(prefix: str) -> str:
    """Return a model name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def output_names(model: Any) -> list[str]:
    """Return the names the service gives a model's outputs."""
    declared = getattr(model, "output_names", None)
    return list(declared) if declared else [model.layers[-1].name]


def reference(seed: int = 0) -> keras.Model:
    """Return the reference model: Input (2, 8) -> Dense 64 ReLU -> Dense 5."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((2, 8), name="features"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(5, name="scores"),
        ]
    )


def functional() -> keras.Model:
    """Return a Functional model with two named inputs and two outputs."""
    left = keras.Input((3,), name="left")
    right = keras.Input((4,), name="right")
    joined = keras.layers.Concatenate()([left, right])
    hidden = keras.layers.Dense(8, activation="tanh")(joined)
    first = keras.layers.Dense(2, name="first")(hidden)
    second = keras.layers.Dense(1, activation="sigmoid", name="second")(hidden)
    return keras.Model([left, right], [first, second])


def subclassed() -> keras.Model:
    """Return the service's registered Model subclass, built on (6,)."""
    from kerasrpc.service.keras import SingleDenseModel

    model = SingleDenseModel(units=3, activation="relu")
    model.build((None, 6))
    return model


def sequence() -> keras.Model:
    """Return an LSTM over sequences of any length of 4 features."""
    return keras.Sequential(
        [
            keras.Input((None, 4), name="steps"),
            keras.layers.LSTM(6),
            keras.layers.Dense(2, name="last"),
        ]
    )


def embedding() -> keras.Model:
    """Return a model on int32 token ids."""
    return keras.Sequential(
        [
            keras.Input((5,), dtype="int32", name="tokens"),
            keras.layers.Embedding(20, 4),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3, name="logits"),
        ]
    )


BUILDERS = {
    "sequential": (reference, {"features": (2, 8)}, "float32"),
    "functional": (functional, {"left": (3,), "right": (4,)}, "float32"),
    "subclassed": (subclassed, {"inputs": (6,)}, "float32"),
    "sequence": (sequence, {"steps": (7, 4)}, "float32"),
    "embedding": (embedding, {"tokens": (5,)}, "int32"),
}


def example_inputs(style: str, batch: int) -> dict[str, np.ndarray]:
    """Return a batch of inputs for a model style."""
    _, shapes, dtype = BUILDERS[style]
    if dtype == "int32":
        return {
            n: RNG.integers(0, 20, (batch, *s)).astype(dtype) for n, s in shapes.items()
        }
    return {n: RNG.normal(size=(batch, *s)).astype(dtype) for n, s in shapes.items()}


def store(
    client: Client, tmp: Path, style: str, *, name: str | None = None, model: Any = None
) -> Stored:
    """Save a model of `style` to a .keras file and import it as a new version."""
    built = model if model is not None else BUILDERS[style][0]()
    path = tmp / f"{uuid.uuid4().hex}.keras"
    built.save(path)
    model_name = name or unique(style)
    version = client.import_model(model_name, path)
    return Stored(model_name, version.version, built, example_inputs(style, 4))
