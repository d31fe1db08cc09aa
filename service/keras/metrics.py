"""Building the metrics reported during training from MetricSpecs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
from kerasrpc.service.keras.binary_true_positives import BinaryTruePositives
from kerasrpc.service.keras.violations import Violations
from kerasrpc.v1 import spec_pb2

_CURVES = ("ROC", "PR")


def check_metrics(
    specs: Sequence[spec_pb2.MetricSpec], path: str, v: Violations
) -> None:
    """Record every violation of a list of metric specs in `v`."""
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs):
        metric_path = f"{path}[{i}]"
        kind = v.oneof(spec, "metric", metric_path)
        if kind is None:
            continue
        v.name(metric_path, spec.name)
        _check_arguments(spec, kind, f"{metric_path}.{kind}", v)

        name = spec.name or kind
        if name in seen:
            v.add(
                f"{metric_path}.name",
                f"expected a metric name unique within the request, received "
                f"{name!r} (also at {path}[{seen[name]}])",
            )
        seen.setdefault(name, i)


def _check_arguments(
    spec: spec_pb2.MetricSpec, kind: str, path: str, v: Violations
) -> None:
    args = getattr(spec, kind)
    if kind in ("binary_accuracy", "precision", "recall") and args.HasField(
        "threshold"
    ):
        v.fraction(path, "threshold", args.threshold, closed=True)
    if kind != "auc":
        return

    if args.HasField("num_thresholds") and args.num_thresholds <= 1:
        v.add(
            f"{path}.num_thresholds",
            "expected an integer above 1, "
            f"received num_thresholds={args.num_thresholds}",
        )
    if args.curve and args.curve.upper() not in _CURVES:
        v.add(f"{path}.curve", f"expected 'ROC' or 'PR', received curve={args.curve!r}")


def build_metrics(
    specs: Sequence[spec_pb2.MetricSpec], path: str = "metrics"
) -> list[keras.metrics.Metric]:
    """Check metric specs and build the Keras metrics they name, in order.

    Raises:
        InvalidArgument: A metric is unset, has an argument out of range, or
            repeats another's name.
    """
    v = Violations()
    check_metrics(specs, path, v)
    v.raise_if_any()
    return [_build(spec) for spec in specs]


def _build(spec: spec_pb2.MetricSpec) -> keras.metrics.Metric:
    kind = spec.WhichOneof("metric")
    assert kind is not None
    args = getattr(spec, kind)
    name = spec.name or kind
    return _BUILDERS[kind](args, name)


def _threshold(args: Any) -> float:
    return float(args.threshold) if args.HasField("threshold") else 0.5


def _auc(args: spec_pb2.AucMetric, name: str) -> keras.metrics.Metric:
    return keras.metrics.AUC(
        num_thresholds=args.num_thresholds if args.HasField("num_thresholds") else 200,
        curve=(args.curve or "ROC").upper(),
        from_logits=args.from_logits,
        name=name,
    )


_BUILDERS: dict[str, Callable[[Any, str], keras.metrics.Metric]] = {
    "binary_true_positives": lambda args, name: BinaryTruePositives(name=name),
    "accuracy": lambda args, name: keras.metrics.Accuracy(name=name),
    "binary_accuracy": lambda args, name: keras.metrics.BinaryAccuracy(
        name=name, threshold=_threshold(args)
    ),
    "categorical_accuracy": lambda args, name: keras.metrics.CategoricalAccuracy(
        name=name
    ),
    "sparse_categorical_accuracy": (
        lambda args, name: keras.metrics.SparseCategoricalAccuracy(name=name)
    ),
    "mean_absolute_error": lambda args, name: keras.metrics.MeanAbsoluteError(
        name=name
    ),
    "mean_squared_error": lambda args, name: keras.metrics.MeanSquaredError(name=name),
    "auc": _auc,
    "precision": lambda args, name: keras.metrics.Precision(
        thresholds=_threshold(args), name=name
    ),
    "recall": lambda args, name: keras.metrics.Recall(
        thresholds=_threshold(args), name=name
    ),
}
