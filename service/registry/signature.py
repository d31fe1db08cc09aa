"""Reading a Keras model's inputs and outputs as TensorSpec messages."""

from __future__ import annotations

import inspect
from typing import Any

import keras
import numpy as np
from kerasrpc.client.tensors import data_type
from kerasrpc.v1 import tensor_pb2


class SignatureError(ValueError):
    """The model's inputs or outputs cannot be determined."""


def model_signature(
    model: keras.Model,
) -> tuple[list[tensor_pb2.TensorSpec], list[tensor_pb2.TensorSpec]]:
    """Return the model's inputs and outputs: names, dtypes and shapes.

    Inputs are named after their Keras InputLayer. A subclassed model has no
    InputLayer: its one input is named after the first argument of `call` and
    its shape is the one the model was built for, with any batch size. A
    single output is named after the model's last layer; several take the
    model's output names.

    Raises:
        SignatureError: the model was never built, so it has no input shape.
    """
    symbolic = _symbolic_inputs(model)
    if symbolic is not None:
        inputs = [
            _spec(_input_name(t), t.dtype, t.shape, batch_first=True) for t in symbolic
        ]
        return inputs, _outputs(model, _symbolic_outputs(model, symbolic))

    shape = _built_shape(model)
    name = _call_argument(model)
    dtype = model.input_dtype
    inputs = [_spec(name, dtype, shape, batch_first=True)]
    spec = model.compute_output_spec(keras.KerasTensor(shape, dtype=dtype))
    return inputs, _outputs(model, keras.tree.flatten(spec))


def _symbolic_inputs(model: keras.Model) -> list[Any] | None:
    """Return the model's Input tensors, or None for a subclassed model."""
    try:
        tensors = model.inputs
    except AttributeError:
        return None
    return None if tensors is None else list(keras.tree.flatten(tensors))


def _symbolic_outputs(model: keras.Model, inputs: list[Any]) -> list[Any]:
    """Return the model's output tensors as it computes them for any batch size.

    An Input given a batch size (keras.Input(batch_size=32)) fixes the batch
    dimension of the outputs that follow it; the service feeds any batch
    size, so such outputs are worked out again on inputs of open batch size.
    """
    if all(t.shape[0] is None for t in inputs):
        return list(keras.tree.flatten(model.outputs))
    fed = [keras.KerasTensor((None, *t.shape[1:]), dtype=t.dtype) for t in inputs]
    spec = model.compute_output_spec(fed if len(fed) > 1 else fed[0])
    return list(keras.tree.flatten(spec))


def _input_name(tensor: Any) -> str:
    history = getattr(tensor, "_keras_history", None)
    operation = getattr(history, "operation", None)
    return str(getattr(operation, "name", None) or tensor.name)


# TODO: a subclassed model built for several inputs is refused, since Keras
# keeps no names for them; such models can only be stored as functional ones.
def _built_shape(model: keras.Model) -> tuple[int | None, ...]:
    config = model.get_build_config() if model.built else None
    shape = (config or {}).get("input_shape")
    if not shape or not isinstance(shape[0], int | None):
        raise SignatureError(
            f"the model {model.name!r} was never built or called on one input, "
            "so its input shape is unknown"
        )
    # The first dimension is the batch: a model called on a batch of 32
    # records 32 there, but is served batches of any size.
    return (None, *shape[1:])


def _call_argument(model: keras.Model) -> str:
    parameters = list(inspect.signature(model.call).parameters)
    return parameters[0] if parameters else "inputs"


def _outputs(model: keras.Model, tensors: list[Any]) -> list[tensor_pb2.TensorSpec]:
    names = _output_names(model, len(tensors))
    return [_spec(n, t.dtype, t.shape) for n, t in zip(names, tensors, strict=True)]


def _output_names(model: keras.Model, count: int) -> list[str]:
    declared = getattr(model, "output_names", None)
    if declared and len(declared) == count:
        return [str(name) for name in declared]
    if count == 1:
        return [model.layers[-1].name if model.layers else model.name]
    return [f"output_{i}" for i in range(count)]


def _spec(
    name: str, dtype: Any, shape: Any, *, batch_first: bool = False
) -> tensor_pb2.TensorSpec:
    """Describe a tensor; with `batch_first`, its first dimension is of any size.

    The service feeds inputs of any batch size to every model, so a batch
    size fixed in the model (keras.Input(batch_size=32)) is not one callers
    must send. Outputs keep the shapes the model gives them.
    """
    dims = [-1 if d is None else int(d) for d in shape]
    if batch_first and dims:
        dims[0] = -1
    return tensor_pb2.TensorSpec(
        name=name,
        dtype=_data_type(dtype),  # type: ignore[arg-type]
        shape=dims,
    )


def _data_type(dtype: Any) -> int:
    name = keras.backend.standardize_dtype(dtype)
    if name == "bfloat16":
        return tensor_pb2.DATA_TYPE_BFLOAT16
    try:
        return data_type(np.dtype(name))
    except (TypeError, ValueError):
        return tensor_pb2.DATA_TYPE_UNSPECIFIED


def weights_bytes(model: keras.Model) -> int:
    """Estimate the memory a model holds from its variables' sizes."""
    total = 0
    for variable in model.weights:
        name = keras.backend.standardize_dtype(variable.dtype)
        itemsize = 2 if name == "bfloat16" else np.dtype(name).itemsize
        total += int(np.prod(variable.shape, dtype=np.int64)) * itemsize
    return total
