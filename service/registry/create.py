"""Building a model from its spec and storing it as a new version."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import keras
from kerasrpc.service.keras import (
    build_loss,
    build_metrics,
    build_model,
    build_optimizer,
    summarize,
    validate_compile,
)
from kerasrpc.service.registry.names import check_model_name
from kerasrpc.service.registry.registry import ModelRegistry
from kerasrpc.v1 import model_service_pb2, spec_pb2

logger = logging.getLogger("kerasrpc.service.registry")


@dataclass(frozen=True)
class CreatedModel:
    """The outcome of creating a model: its summary, and the version stored."""

    summary: model_service_pb2.ModelSummary
    version: model_service_pb2.ModelVersion | None


def create_model(
    registry: ModelRegistry,
    model_name: str,
    spec: spec_pb2.ModelSpec,
    *,
    compile_spec: spec_pb2.CompileSpec | None,
    max_parameters: int,
    validate_only: bool = False,
    description: str = "",
) -> CreatedModel:
    """Build a model from `spec`, optionally compile it, and store it.

    Args:
        registry: where the version is stored.
        model_name: the model to add a version to; created when missing.
        spec: the architecture.
        compile_spec: loss, optimizer and metrics to compile with; None for
            an uncompiled model.
        max_parameters: the largest model accepted, in parameters.
        validate_only: build and summarise only; store nothing.
        description: free text stored with the version.

    Raises:
        InvalidArgument: the name, spec or compile spec is invalid; field
            paths start at "model_name", "spec" and "compile".
    """
    check_model_name(model_name)
    if compile_spec is not None:
        validate_compile(compile_spec, path="compile")
    model = build_model(
        spec, default_name=model_name, max_parameters=max_parameters, path="spec"
    )
    if compile_spec is not None:
        _compile(model, compile_spec)
    summary = summarize(model)
    if validate_only:
        return CreatedModel(summary, None)

    version = registry.add_version(
        model_name,
        model,
        source=model_service_pb2.VERSION_SOURCE_CREATED,
        description=description,
    )
    return CreatedModel(summary, version)


def _compile(model: keras.Model, spec: spec_pb2.CompileSpec) -> None:
    model.compile(
        loss=build_loss(spec.loss, path="compile.loss"),
        optimizer=build_optimizer(spec.optimizer, path="compile.optimizer"),
        metrics=build_metrics(spec.metrics, path="compile.metrics"),
    )
