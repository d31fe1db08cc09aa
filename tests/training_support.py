"""Shared builders for the training tests: specs, data and event checks."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from kerasrpc.client.tensors import to_tensor
from kerasrpc.v1 import spec_pb2, training_service_pb2

FINAL = {
    training_service_pb2.JOB_STATE_SUCCEEDED,
    training_service_pb2.JOB_STATE_FAILED,
    training_service_pb2.JOB_STATE_CANCELLED,
}


def unique(prefix: str) -> str:
    """Return a model name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def linear_data(
    rows: int = 64, features: int = 4, seed: int = 0
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Return a learnable regression task: y = x.w + 0.5 with small noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    w = rng.normal(size=(features, 1)).astype(np.float32)
    y = (x @ w + 0.5 + 0.01 * rng.normal(size=(rows, 1))).astype(np.float32)
    return x, y


def dense_spec(features: int = 4, units: int = 1) -> spec_pb2.ModelSpec:
    """Return a Sequential spec: one Dense layer on (features,) examples."""
    return spec_pb2.ModelSpec(
        sequential=spec_pb2.SequentialSpec(
            input=spec_pb2.InputSpec(shape=[features]),
            layers=[spec_pb2.LayerSpec(dense=spec_pb2.DenseLayer(units=units))],
        )
    )


def compile_spec(
    learning_rate: float = 0.05, metrics: Sequence[spec_pb2.MetricSpec] = ()
) -> spec_pb2.CompileSpec:
    """Return mean squared error with SGD at a constant rate."""
    return spec_pb2.CompileSpec(
        loss=spec_pb2.LossSpec(mean_squared_error=spec_pb2.MeanSquaredErrorLoss()),
        optimizer=spec_pb2.OptimizerSpec(
            sgd=spec_pb2.SgdOptimizer(),
            learning_rate=spec_pb2.LearningRateSpec(constant=learning_rate),
        ),
        metrics=list(metrics),
    )


def inline(x: Any, y: Any) -> spec_pb2.DataSource:
    """Return a data source carrying the arrays in the request."""
    return spec_pb2.DataSource(
        inline=spec_pb2.InlineData(features=to_tensor(x), labels=to_tensor(y))
    )


def training_spec(
    model_name: str,
    data: spec_pb2.DataSource | None = None,
    *,
    compile: spec_pb2.CompileSpec | None = None,
    model: spec_pb2.ModelSpec | None = None,
    **config: Any,
) -> training_service_pb2.TrainingSpec:
    """Return a spec training a small dense model; config fields as keywords."""
    if data is None:
        data = inline(*linear_data())
    settings = {"batch_size": 8, "epochs": 2, "seed": 3, **config}
    return training_service_pb2.TrainingSpec(
        model_name=model_name,
        spec=model or dense_spec(),
        compile=compile or compile_spec(),
        config=spec_pb2.TrainingConfig(**settings),
        train_data=data,
    )


def steps(events: Iterable[training_service_pb2.TrainingEvent]) -> list[Any]:
    """Return the step events' payloads in order."""
    return [e.step for e in events if e.WhichOneof("event") == "step"]


def final_state(
    events: Sequence[training_service_pb2.TrainingEvent],
) -> training_service_pb2.StateEvent:
    """Return the last event, checking it is a final state event."""
    last = events[-1]
    assert last.WhichOneof("event") == "state", last
    assert last.state.state in FINAL, last
    return last.state


def check_log_shape(events: Sequence[training_service_pb2.TrainingEvent]) -> None:
    """Check sequences run 1..n without gaps and steps 1..N without repeats."""
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    numbers = [s.step for s in steps(events)]
    assert numbers == list(range(1, len(numbers) + 1))
