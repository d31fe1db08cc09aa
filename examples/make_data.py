"""Write the synthetic data set the example specs train on.

Usage: python -m examples.make_data [--data-root DIR] [--examples N]

The features are (N, 2, 8) float32; the labels (N, 2, 5) are a fixed linear map
of them plus a little noise, so every example model can learn them.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np


def default_data_root() -> Path:
    """Return the data root `kerasrpc serve` uses without flags."""
    if "KERASRPC_DATA_ROOT" in os.environ:
        return Path(os.environ["KERASRPC_DATA_ROOT"])
    if "KERASRPC_STATE_DIR" in os.environ:
        return Path(os.environ["KERASRPC_STATE_DIR"]) / "data"
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "kerasrpc" / "data"


def synthetic(examples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return features and labels of a learnable linear task."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(examples, 2, 8)).astype(np.float32)
    weights = rng.normal(size=(8, 5)).astype(np.float32) / np.sqrt(8)
    noise = 0.01 * rng.normal(size=(examples, 2, 5)).astype(np.float32)
    return features, (features @ weights + noise).astype(np.float32)


def main() -> None:
    """Write synthetic.npz into the data root."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=default_data_root())
    parser.add_argument("--examples", type=int, default=2048)
    args = parser.parse_args()

    args.data_root.mkdir(parents=True, exist_ok=True)
    features, labels = synthetic(args.examples)
    path = args.data_root / "synthetic.npz"
    np.savez(path, features=features, labels=labels)
    print(path)


if __name__ == "__main__":
    main()
