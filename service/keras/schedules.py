"""Building a learning rate or schedule from a LearningRateSpec."""

from __future__ import annotations

import itertools
from typing import Any

import keras
from keras.optimizers.schedules import LearningRateSchedule
from kerasrpc.service.keras.inverse_step_decay import InverseStepDecay
from kerasrpc.service.keras.violations import Violations
from kerasrpc.v1 import spec_pb2


def check_learning_rate(
    spec: spec_pb2.LearningRateSpec, path: str, v: Violations
) -> None:
    """Record every violation of a learning-rate spec in `v`."""
    kind = v.oneof(spec, "schedule", path)
    kind_path = f"{path}.{kind}"

    if kind is None:
        return
    if kind == "constant":
        v.non_negative_float(path, "constant", spec.constant)
    elif kind == "inverse_step_decay":
        rate = spec.inverse_step_decay.initial_learning_rate
        v.positive_float(kind_path, "initial_learning_rate", rate)
    elif kind == "exponential_decay":
        decay = spec.exponential_decay
        v.positive_float(
            kind_path, "initial_learning_rate", decay.initial_learning_rate
        )
        v.positive(kind_path, "decay_steps", decay.decay_steps)
        v.positive_float(kind_path, "decay_rate", decay.decay_rate)
    elif kind == "cosine_decay":
        cosine = spec.cosine_decay
        v.positive_float(
            kind_path, "initial_learning_rate", cosine.initial_learning_rate
        )
        v.positive(kind_path, "decay_steps", cosine.decay_steps)
        v.fraction(kind_path, "alpha", cosine.alpha, closed=True)
    else:
        _check_piecewise(spec.piecewise_constant, kind_path, v)


def _check_piecewise(
    spec: spec_pb2.PiecewiseConstantSchedule, path: str, v: Violations
) -> None:
    boundaries = list(spec.boundaries)
    if not boundaries or any(b >= c for b, c in itertools.pairwise(boundaries)):
        v.add(
            f"{path}.boundaries",
            "expected one or more strictly increasing steps, "
            f"received boundaries={boundaries}",
        )
    if len(spec.values) != len(boundaries) + 1:
        v.add(
            f"{path}.values",
            f"expected {len(boundaries) + 1} rates (one more than the boundaries), "
            f"received {len(spec.values)}",
        )
    for i, value in enumerate(spec.values):
        v.non_negative_float(path, f"values[{i}]", value)


def build_learning_rate(
    spec: spec_pb2.LearningRateSpec, path: str
) -> float | LearningRateSchedule:
    """Check a learning-rate spec and build the rate or schedule it describes.

    Raises:
        InvalidArgument: No rate is set, or one of its arguments is out of range.
    """
    v = Violations()
    check_learning_rate(spec, path, v)
    v.raise_if_any()

    return _schedule(spec)


def _schedule(spec: spec_pb2.LearningRateSpec) -> Any:
    kind = spec.WhichOneof("schedule")
    if kind == "constant":
        return float(spec.constant)
    if kind == "inverse_step_decay":
        return InverseStepDecay(spec.inverse_step_decay.initial_learning_rate)
    if kind == "exponential_decay":
        decay = spec.exponential_decay
        return keras.optimizers.schedules.ExponentialDecay(
            decay.initial_learning_rate,
            decay.decay_steps,
            decay.decay_rate,
            staircase=decay.staircase,
        )
    if kind == "cosine_decay":
        cosine = spec.cosine_decay
        return keras.optimizers.schedules.CosineDecay(
            cosine.initial_learning_rate, cosine.decay_steps, alpha=cosine.alpha
        )
    piecewise = spec.piecewise_constant
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        list(piecewise.boundaries), list(piecewise.values)
    )
