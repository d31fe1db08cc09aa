"""Checking a TrainingSpec whole and turning it into a runnable plan.

Everything a job needs is built and checked here, before the job is accepted,
so a bad request fails at once with field paths instead of as a FAILED job.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from kerasrpc.service.errors import FailedPrecondition, InvalidArgument, NotFound
from kerasrpc.service.keras import (
    build_loss,
    build_metrics,
    build_model,
    build_optimizer,
    validate_compile,
)
from kerasrpc.service.keras.graph import keras_dtype
from kerasrpc.service.op_errors import summarize_op_error
from kerasrpc.service.registry import ModelRegistry, check_model_name
from kerasrpc.service.training.data import Examples, read_source
from kerasrpc.service.training.datasets import DatasetStore
from kerasrpc.v1 import spec_pb2, training_service_pb2

DEFAULT_BATCH_SIZE = 32

# What Keras wraps around a TensorFlow error raised inside a layer's call.


@dataclass(frozen=True)
class Config:
    """The shape of a training run, defaults filled in."""

    batch_size: int
    epochs: int
    seed: int
    shuffle: bool
    checkpoint_every_steps: int
    max_steps: int

    def steps_per_epoch(self, examples: int) -> int:
        """Return the steps of one pass over `examples`."""
        return math.ceil(examples / self.batch_size)


@dataclass
class Plan:
    """A checked job: its model, compile objects, data and configuration."""

    model_name: str
    description: str
    model: keras.Model
    loss: keras.losses.Loss
    optimizer: keras.optimizers.Optimizer
    metrics: list[keras.metrics.Metric]
    validation_metrics: list[keras.metrics.Metric]
    train: Examples
    validation: Examples | None
    config: Config
    input_dtype: str
    dataset_ids: tuple[str, ...]

    @property
    def steps_per_epoch(self) -> int:
        """Return the steps of one epoch."""
        return self.config.steps_per_epoch(len(self.train))

    @property
    def total_steps(self) -> int:
        """Return the planned steps in all."""
        planned = self.steps_per_epoch * self.config.epochs
        limit = self.config.max_steps
        return min(planned, limit) if limit else planned

    @property
    def epochs(self) -> int:
        """Return the planned epochs, counting a partial last one."""
        return math.ceil(self.total_steps / self.steps_per_epoch)


def make_plan(
    spec: training_service_pb2.TrainingSpec,
    *,
    registry: ModelRegistry,
    datasets: DatasetStore,
    data_root: Path,
    max_parameters: int,
    default_checkpoint_every: int,
) -> Plan:
    """Check a training spec and build everything its job runs on.

    Raises:
        InvalidArgument: any part of the spec is wrong; the violations name
            the fields under "spec".
    """
    check_model_name(spec.model_name, "spec.model_name")
    validate_compile(spec.compile, "spec.compile")
    config = _config(spec.config, default_checkpoint_every)
    train, validation = _examples(spec, config, data_root, datasets)

    model = _initial_model(spec, registry, max_parameters, config.seed)
    input_shape, input_dtype = _input_signature(model, spec, registry)
    _check_features(train, input_shape, input_dtype)
    output = _probe(model, train, input_dtype)
    _check_labels(train, output, spec.compile.loss)
    if validation is not None:
        _check_features(validation, input_shape, input_dtype)
        _check_labels(validation, output, spec.compile.loss)

    return Plan(
        model_name=spec.model_name,
        description=spec.description,
        model=model,
        loss=build_loss(spec.compile.loss, "spec.compile.loss"),
        optimizer=build_optimizer(spec.compile.optimizer, "spec.compile.optimizer"),
        metrics=build_metrics(spec.compile.metrics, "spec.compile.metrics"),
        validation_metrics=build_metrics(spec.compile.metrics, "spec.compile.metrics"),
        train=train,
        validation=validation,
        config=config,
        input_dtype=input_dtype,
        dataset_ids=_dataset_ids(spec),
    )


def _config(config: spec_pb2.TrainingConfig, checkpoint_every: int) -> Config:
    path = "spec.config"
    for name in ("batch_size", "epochs", "checkpoint_every_steps", "max_steps"):
        value = getattr(config, name)
        if value < 0:
            raise InvalidArgument.field(
                f"{path}.{name}",
                f"expected a positive integer (0 for the default), received {value}",
            )
    if not 0.0 <= config.validation_split < 1.0:
        raise InvalidArgument.field(
            f"{path}.validation_split",
            f"expected a fraction in [0, 1), received {config.validation_split}",
        )
    return Config(
        batch_size=config.batch_size or DEFAULT_BATCH_SIZE,
        epochs=config.epochs or 1,
        seed=config.seed,
        shuffle=config.shuffle if config.HasField("shuffle") else True,
        checkpoint_every_steps=config.checkpoint_every_steps or checkpoint_every,
        max_steps=config.max_steps,
    )


def _examples(
    spec: training_service_pb2.TrainingSpec,
    config: Config,
    data_root: Path,
    datasets: DatasetStore,
) -> tuple[Examples, Examples | None]:
    if not spec.HasField("train_data"):
        raise InvalidArgument.field(
            "spec.train_data", "expected training data, received none"
        )
    train = read_source(spec.train_data, "spec.train_data", data_root, datasets)
    if spec.HasField("validation_data"):
        validation = read_source(
            spec.validation_data, "spec.validation_data", data_root, datasets
        )
        return train, validation
    held_out = int(len(train) * spec.config.validation_split)
    if not held_out:
        return train, None
    if held_out >= len(train):
        raise InvalidArgument.field(
            "spec.config.validation_split",
            f"expected to leave training examples, received a split that holds "
            f"out all {len(train)}",
        )
    kept = len(train) - held_out
    return train.take(0, kept), train.take(kept, len(train))


def _initial_model(
    spec: training_service_pb2.TrainingSpec,
    registry: ModelRegistry,
    max_parameters: int,
    seed: int,
) -> keras.Model:
    kind = spec.WhichOneof("initial_model")
    if kind == "spec":
        return build_model(
            spec.spec,
            default_name=spec.model_name,
            max_parameters=max_parameters,
            path="spec.spec",
            seed=seed,
        )
    if kind == "base_version":
        served = _load_base(spec, registry).model
        model: keras.Model = keras.models.clone_model(served)
        model.set_weights(served.get_weights())
        return model
    raise InvalidArgument.field(
        "spec.initial_model", "expected spec or base_version, received neither"
    )


def _load_base(spec: training_service_pb2.TrainingSpec, registry: ModelRegistry) -> Any:
    try:
        return registry.load(spec.model_name, spec.base_version)
    except NotFound as error:
        raise InvalidArgument.field(
            "spec.base_version",
            f"expected a stored version of model {spec.model_name!r}, received "
            f"{spec.base_version} ({error.message})",
        ) from None
    except FailedPrecondition as error:
        raise InvalidArgument.field("spec.base_version", error.message) from None


def _input_signature(
    model: keras.Model,
    spec: training_service_pb2.TrainingSpec,
    registry: ModelRegistry,
) -> tuple[list[int | None], str]:
    """Return the model's one input's example shape and dtype."""
    inputs = getattr(model, "inputs", None)
    if inputs:
        if len(inputs) != 1:
            raise InvalidArgument.field(
                "spec.train_data",
                "expected a model with one input (a data source carries one "
                f"features tensor), received a model with {len(inputs)} inputs",
            )
        return list(inputs[0].shape[1:]), str(inputs[0].dtype)
    if spec.HasField("spec"):
        declared = spec.spec.registered.input
        dtype = keras_dtype(declared)
        return [d if d >= 0 else None for d in declared.shape], dtype
    loaded = _load_base(spec, registry)
    shape = list(loaded.inputs[0].shape[1:])
    return [d if d >= 0 else None for d in shape], "float32"


def _check_features(
    examples: Examples, shape: Sequence[int | None], dtype: str
) -> None:
    field = f"{examples.path}.features"
    received = list(examples.features.shape[1:])
    fits = len(received) == len(shape) and all(
        want is None or want == got for want, got in zip(shape, received, strict=True)
    )
    if not fits:
        expected = ["any" if d is None else d for d in shape]
        raise InvalidArgument.field(
            field,
            f"expected examples of shape {expected} (the model's input), "
            f"received {received}",
        )
    if np.dtype(dtype).kind in "iu" and examples.features.dtype.kind == "f":
        raise InvalidArgument.field(
            field,
            f"expected integer features for the model's {dtype} input, received "
            f"{examples.features.dtype.name}",
        )


def _probe(model: keras.Model, examples: Examples, dtype: str) -> list[int]:
    """Run the model on one example; return its output's example shape."""
    sample = np.asarray(examples.features[:1]).astype(dtype)
    try:
        output = model(sample, training=False)
    except (ValueError, TypeError) as error:
        raise InvalidArgument.field(
            f"{examples.path}.features",
            f"expected examples the model can compute, received an error: {error}",
        ) from None
    except tf.errors.OpError as error:
        raise InvalidArgument.field(
            f"{examples.path}.features",
            "expected examples the model can compute, received an error: "
            f"{summarize_op_error(error)}",
        ) from None
    if isinstance(output, (list, tuple, dict)):
        raise InvalidArgument.field(
            "spec.train_data",
            "expected a model with one output (a data source carries one labels "
            f"tensor), received a model with {len(output)} outputs",
        )
    return [int(d) for d in output.shape[1:]]


def _check_labels(
    examples: Examples, output: list[int], loss: spec_pb2.LossSpec
) -> None:
    received = list(examples.labels.shape[1:])
    if loss.WhichOneof("loss") == "sparse_categorical_crossentropy":
        allowed = [output[:-1], [*output[:-1], 1]]
        words = f"{output[:-1]} (class ids for the model's output {output})"
    else:
        allowed = [output, _squeezed(output)]
        words = f"{output} (the model's output)"
    if received not in allowed and _squeezed(received) not in allowed:
        raise InvalidArgument.field(
            f"{examples.path}.labels",
            f"expected labels of example shape {words}, received {received}",
        )


def _squeezed(shape: list[int]) -> list[int]:
    while shape and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _dataset_ids(spec: training_service_pb2.TrainingSpec) -> tuple[str, ...]:
    sources = (spec.train_data, spec.validation_data)
    return tuple(
        s.dataset_id for s in sources if s.WhichOneof("source") == "dataset_id"
    )
