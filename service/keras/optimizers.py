"""Building the optimizer from an OptimizerSpec."""

from __future__ import annotations

from typing import Any

import keras
from kerasrpc.service.keras.schedules import build_learning_rate, check_learning_rate
from kerasrpc.service.keras.violations import Violations
from kerasrpc.v1 import spec_pb2

# The rate each optimizer uses when the spec sets none.
DEFAULT_LEARNING_RATES = {"sgd": 0.01, "adam": 0.001, "adamw": 0.001, "rmsprop": 0.001}


def check_optimizer(spec: spec_pb2.OptimizerSpec, path: str, v: Violations) -> None:
    """Record every violation of an optimizer spec in `v`."""
    if spec.HasField("learning_rate"):
        check_learning_rate(spec.learning_rate, f"{path}.learning_rate", v)
    v.non_negative_float(path, "clipnorm", spec.clipnorm)

    kind = spec.WhichOneof("optimizer") or "sgd"
    kind_path = f"{path}.{kind}"
    if kind == "sgd":
        v.fraction(kind_path, "momentum", spec.sgd.momentum)
    elif kind in ("adam", "adamw"):
        _check_adam(getattr(spec, kind), kind, kind_path, v)
    else:
        _check_rmsprop(spec.rmsprop, kind_path, v)


def _check_adam(
    spec: spec_pb2.AdamOptimizer, kind: str, path: str, v: Violations
) -> None:
    if spec.HasField("beta_1"):
        v.fraction(path, "beta_1", spec.beta_1)
    if spec.HasField("beta_2"):
        v.fraction(path, "beta_2", spec.beta_2)
    if spec.HasField("epsilon"):
        v.positive_float(path, "epsilon", spec.epsilon)
    if not spec.HasField("weight_decay"):
        return
    if kind == "adam":
        v.add(
            f"{path}.weight_decay",
            "expected no weight_decay for adam (use adamw for weight decay), "
            f"received weight_decay={spec.weight_decay}",
        )
        return
    v.non_negative_float(path, "weight_decay", spec.weight_decay)


def _check_rmsprop(spec: spec_pb2.RmspropOptimizer, path: str, v: Violations) -> None:
    if spec.HasField("rho"):
        v.fraction(path, "rho", spec.rho)
    v.fraction(path, "momentum", spec.momentum)
    if spec.HasField("epsilon"):
        v.positive_float(path, "epsilon", spec.epsilon)


def build_optimizer(
    spec: spec_pb2.OptimizerSpec, path: str = "optimizer"
) -> keras.optimizers.Optimizer:
    """Check an optimizer spec and build the optimizer; SGD at 0.01 by default.

    Raises:
        InvalidArgument: An argument or the learning rate is out of range.
    """
    v = Violations()
    check_optimizer(spec, path, v)
    v.raise_if_any()

    kind = spec.WhichOneof("optimizer") or "sgd"
    learning_rate: Any = DEFAULT_LEARNING_RATES[kind]
    if spec.HasField("learning_rate"):
        learning_rate = build_learning_rate(spec.learning_rate, f"{path}.learning_rate")
    common: dict[str, Any] = {
        "learning_rate": learning_rate,
        "clipnorm": spec.clipnorm or None,
    }

    if kind == "sgd":
        return keras.optimizers.SGD(
            momentum=spec.sgd.momentum, nesterov=spec.sgd.nesterov, **common
        )
    if kind == "rmsprop":
        return keras.optimizers.RMSprop(**_rmsprop_args(spec.rmsprop), **common)
    if kind == "adamw":
        return keras.optimizers.AdamW(**_adam_args(spec.adamw, 0.004), **common)
    return keras.optimizers.Adam(**_adam_args(spec.adam, None), **common)


def _adam_args(
    spec: spec_pb2.AdamOptimizer, default_decay: float | None
) -> dict[str, Any]:
    args: dict[str, Any] = {
        "beta_1": spec.beta_1 if spec.HasField("beta_1") else 0.9,
        "beta_2": spec.beta_2 if spec.HasField("beta_2") else 0.999,
        "epsilon": spec.epsilon if spec.HasField("epsilon") else 1e-7,
        "amsgrad": spec.amsgrad,
    }
    if default_decay is not None:
        has_decay = spec.HasField("weight_decay")
        args["weight_decay"] = spec.weight_decay if has_decay else default_decay
    return args


def _rmsprop_args(spec: spec_pb2.RmspropOptimizer) -> dict[str, Any]:
    return {
        "rho": spec.rho if spec.HasField("rho") else 0.9,
        "momentum": spec.momentum,
        "epsilon": spec.epsilon if spec.HasField("epsilon") else 1e-7,
        "centered": spec.centered,
    }
