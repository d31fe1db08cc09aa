"""Models using the custom classes load back with safe_mode=True.

The loading happens in a fresh Python process that imports only
kerasrpc.service.keras, which proves that importing the package is all the
registration a caller needs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
from kerasrpc.service.keras import (
    AffineDense,
    BinaryTruePositives,
    InverseStepDecay,
    LastAxisMeanSquaredError,
    SingleDenseModel,
)

_LOADER = """
import json, sys
import numpy as np
import keras
import kerasrpc.service.keras

folder = sys.argv[1]
data = np.load(f"{folder}/data.npz")
report = {}
for name in ("affine", "subclass"):
    model = keras.saving.load_model(f"{folder}/{name}.keras", safe_mode=True)
    prediction = model.predict(data["x"], verbose=0)
    scores = model.evaluate(data["x"], data["y"], return_dict=True, verbose=0)
    report[name] = {
        "equal": bool(np.allclose(prediction, data[name], rtol=1e-6, atol=1e-6)),
        "classes": sorted({type(layer).__name__ for layer in model.layers}),
        "model": type(model).__name__,
        "loss": type(model.loss).__name__,
        "scores": {k: float(v) for k, v in scores.items()},
        "learning_rate": float(model.optimizer.learning_rate),
    }
print(json.dumps(report))
"""


def _compile(model: keras.Model) -> None:
    model.compile(
        loss=LastAxisMeanSquaredError(),
        optimizer=keras.optimizers.SGD(learning_rate=InverseStepDecay(0.1)),
        metrics=[BinaryTruePositives()],
    )


def _save_trained(model: keras.Model, x: np.ndarray, y: np.ndarray, path: Path) -> None:
    _compile(model)
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    model.save(path)


def test_custom_classes_load_in_fresh_process_with_safe_mode(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 2, 8)).astype("float32")
    y = (rng.random(size=(16, 2, 5)) > 0.5).astype("float32")
    affine = keras.Sequential(
        [keras.Input((2, 8)), AffineDense(units=5, name="CustomLayer")],
        name="CustomModel",
    )
    subclass = SingleDenseModel(units=5, layer_name="CustomLayer", name="Sub")
    subclass(keras.Input((2, 8)))
    _save_trained(affine, x, y, tmp_path / "affine.keras")
    _save_trained(subclass, x, y, tmp_path / "subclass.keras")
    expected = {
        "affine": affine.evaluate(x, y, return_dict=True, verbose=0),
        "subclass": subclass.evaluate(x, y, return_dict=True, verbose=0),
    }
    np.savez(
        tmp_path / "data.npz",
        x=x,
        y=y,
        affine=affine.predict(x, verbose=0),
        subclass=subclass.predict(x, verbose=0),
    )

    loaded = subprocess.run(
        [sys.executable, "-c", _LOADER, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )

    report = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert report["affine"]["classes"] == ["AffineDense"]
    assert report["subclass"]["model"] == "SingleDenseModel"
    for name in ("affine", "subclass"):
        assert report[name]["equal"], name
        assert report[name]["loss"] == "LastAxisMeanSquaredError"
        # One step taken: the restored schedule gives 0.1 / (1 + 1).
        assert abs(report[name]["learning_rate"] - 0.05) < 1e-7
        scores = report[name]["scores"]
        assert abs(scores["loss"] - expected[name]["loss"]) < 1e-5
        assert (
            scores["binary_true_positives"] == expected[name]["binary_true_positives"]
        )
