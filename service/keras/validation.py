"""Checking a whole CompileSpec before a training job is queued."""

from __future__ import annotations

from kerasrpc.service.keras.losses import check_loss
from kerasrpc.service.keras.metrics import check_metrics
from kerasrpc.service.keras.optimizers import check_optimizer
from kerasrpc.service.keras.violations import Violations
from kerasrpc.v1 import spec_pb2


def validate_compile(spec: spec_pb2.CompileSpec, path: str = "compile") -> None:
    """Check the loss, optimizer and metrics of a compile spec together.

    Raises:
        InvalidArgument: Listing every violation found, each with its field
            path under `path`. The loss is required.
    """
    v = Violations()
    if spec.HasField("loss"):
        check_loss(spec.loss, f"{path}.loss", v)
    else:
        v.add(f"{path}.loss", "expected a loss for training, received none")

    check_optimizer(spec.optimizer, f"{path}.optimizer", v)
    check_metrics(spec.metrics, f"{path}.metrics", v)
    v.raise_if_any()
