"""Check Predict inputs and output names against a version's signature."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy.typing as npt
from kerasrpc.client.tensors import numpy_dtype
from kerasrpc.service.errors import FieldViolation, InvalidArgument
from kerasrpc.v1 import tensor_pb2

Array = npt.NDArray[Any]


def select_outputs(
    outputs: Sequence[tensor_pb2.TensorSpec], requested: Sequence[str]
) -> list[str]:
    """Return the output names to answer with: `requested`, or all when empty.

    Raises:
        InvalidArgument: a requested name is not an output of the model.
    """
    known = [spec.name for spec in outputs]
    if not requested:
        return known
    violations = [
        FieldViolation(
            f"output_names[{index}]",
            f"expected one of {', '.join(known)}, received {name!r}",
        )
        for index, name in enumerate(requested)
        if name not in known
    ]
    if violations:
        raise InvalidArgument.fields(violations)
    return list(dict.fromkeys(requested))


def check_inputs(
    specs: Sequence[tensor_pb2.TensorSpec], inputs: Mapping[str, Array]
) -> tuple[dict[str, Array], int]:
    """Match `inputs` to the input specs; return them by name, and the batch size.

    Every input must be given, with the declared dtype (no casting), the
    declared per-example shape and the same batch size as the others. A model
    with one input accepts it under any single name.

    Raises:
        InvalidArgument: naming every field at fault.
    """
    named = _rename_single_input(specs, inputs)
    violations = _name_violations(specs, named)
    if violations:
        raise InvalidArgument.fields(violations)

    arrays = {spec.name: named[spec.name] for spec in specs}
    for spec in specs:
        violations += _array_violations(spec, arrays[spec.name])
    violations += _batch_violations(arrays)
    if violations:
        raise InvalidArgument.fields(violations)
    return arrays, _batch_size(arrays)


def dims_text(spec: tensor_pb2.TensorSpec) -> str:
    """Return a spec's shape as text, with None for a dimension of any size."""
    return "[" + ", ".join("None" if d < 0 else str(d) for d in spec.shape) + "]"


def _rename_single_input(
    specs: Sequence[tensor_pb2.TensorSpec], inputs: Mapping[str, Array]
) -> Mapping[str, Array]:
    if len(specs) == 1 and len(inputs) == 1 and specs[0].name not in inputs:
        return {specs[0].name: next(iter(inputs.values()))}
    return inputs


def _name_violations(
    specs: Sequence[tensor_pb2.TensorSpec], inputs: Mapping[str, Array]
) -> list[FieldViolation]:
    known = [spec.name for spec in specs]
    expected = ", ".join(known)
    unknown = [
        FieldViolation(f"inputs[{name}]", f"unknown input; expected {expected}")
        for name in inputs
        if name not in known
    ]
    missing = [
        FieldViolation(f"inputs[{name}]", f"missing; the model needs {expected}")
        for name in known
        if name not in inputs
    ]
    return unknown + missing


def _array_violations(
    spec: tensor_pb2.TensorSpec, array: Array
) -> list[FieldViolation]:
    expected_dtype = numpy_dtype(spec.dtype)
    if array.dtype != expected_dtype:
        return [
            FieldViolation(
                f"inputs[{spec.name}].dtype",
                f"expected {expected_dtype.name}, received {array.dtype.name}",
            )
        ]
    if not _shape_fits(spec.shape, array.shape):
        return [
            FieldViolation(
                f"inputs[{spec.name}].shape",
                f"expected {dims_text(spec)} (batch first), "
                f"received {list(array.shape)}",
            )
        ]
    return []


def _shape_fits(declared: Sequence[int], shape: tuple[int, ...]) -> bool:
    if len(declared) != len(shape) or not shape:
        return False
    return all(
        d < 0 or d == size for d, size in zip(declared[1:], shape[1:], strict=True)
    )


def _batch_violations(arrays: Mapping[str, Array]) -> list[FieldViolation]:
    shaped = [(name, a.shape[0]) for name, a in arrays.items() if a.ndim > 0]
    if not shaped:
        return []
    first_name, first_size = shaped[0]
    return [
        FieldViolation(
            f"inputs[{name}].shape[0]",
            f"expected batch size {first_size} like inputs[{first_name}], "
            f"received {size}",
        )
        for name, size in shaped[1:]
        if size != first_size
    ]


def _batch_size(arrays: Mapping[str, Array]) -> int:
    return int(next(iter(arrays.values())).shape[0])


def example_shapes(arrays: Mapping[str, Array]) -> tuple[tuple[int, ...], ...]:
    """Return each input's per-example shape: requests merge only when equal."""
    return tuple(array.shape[1:] for array in arrays.values())
