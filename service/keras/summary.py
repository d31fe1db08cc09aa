"""Describing a built model as a ModelSummary message."""

from __future__ import annotations

from typing import Any

import keras
from kerasrpc.v1 import model_service_pb2


def summarize(model: keras.Model) -> model_service_pb2.ModelSummary:
    """Return the model's summary: Keras's table, its layers and parameter counts.

    Functional models list their InputLayers too, as Keras's own table does.
    """
    trainable = sum(int(keras.ops.size(w)) for w in model.trainable_weights)
    return model_service_pb2.ModelSummary(
        name=model.name,
        layers=[_layer_summary(layer) for layer in _listed_layers(model)],
        parameter_count=model.count_params() if model.built else 0,
        trainable_parameter_count=trainable,
        text=summary_text(model),
    )


def summary_text(model: keras.Model) -> str:
    """Return the table model.summary() prints, without printing it."""
    lines: list[str] = []

    def collect(line: str, *args: Any, **kwargs: Any) -> None:
        lines.append(line)

    model.summary(print_fn=collect)
    return "\n".join(lines).rstrip() + "\n"


def _listed_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Return the layers the summary table lists, in its order."""
    if isinstance(model, keras.Sequential):
        return list(model.layers)
    operations = getattr(model, "operations", None)
    if isinstance(model, keras.Model) and operations is not None:
        return [op for op in operations if isinstance(op, keras.layers.Layer)]
    return list(model.layers)


def _layer_summary(layer: keras.layers.Layer) -> model_service_pb2.LayerSummary:
    return model_service_pb2.LayerSummary(
        name=layer.name,
        type=type(layer).__name__,
        output_shape=[-1 if d is None else int(d) for d in _output_shape(layer)],
        parameter_count=layer.count_params() if layer.built else 0,
    )


def _output_shape(layer: keras.layers.Layer) -> tuple[int | None, ...]:
    """Return a layer's output shape, also for layers inside a subclassed model."""
    try:
        return tuple(layer.output.shape)
    except (AttributeError, ValueError):
        pass

    # Layers of subclassed models were never called symbolically; infer the
    # shape from the one they were built for, as Keras's own summary does.
    build_shapes = getattr(layer, "_build_shapes_dict", None)
    if not build_shapes:
        return ()
    try:
        return tuple(layer.compute_output_shape(*build_shapes.values()))
    except Exception:
        return ()
