"""Checking a model spec's layers as a graph, before anything is built.

A spec is checked in one pass: every layer's arguments, the names that tie
the graph together, then the shape and dtype flowing into every layer, and
finally the parameter count. Every violation found is reported at once; a
layer whose input is already wrong is not checked for shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from kerasrpc.service.keras.layers import KINDS, MERGE_KINDS
from kerasrpc.service.keras.signals import ShapeError, Signal
from kerasrpc.service.keras.violations import Violations
from kerasrpc.v1 import spec_pb2, tensor_pb2

_DTYPES = {
    tensor_pb2.DATA_TYPE_UNSPECIFIED: "float32",
    tensor_pb2.DATA_TYPE_BOOL: "bool",
    tensor_pb2.DATA_TYPE_INT8: "int8",
    tensor_pb2.DATA_TYPE_INT16: "int16",
    tensor_pb2.DATA_TYPE_INT32: "int32",
    tensor_pb2.DATA_TYPE_INT64: "int64",
    tensor_pb2.DATA_TYPE_UINT8: "uint8",
    tensor_pb2.DATA_TYPE_UINT16: "uint16",
    tensor_pb2.DATA_TYPE_UINT32: "uint32",
    tensor_pb2.DATA_TYPE_UINT64: "uint64",
    tensor_pb2.DATA_TYPE_FLOAT16: "float16",
    tensor_pb2.DATA_TYPE_BFLOAT16: "bfloat16",
    tensor_pb2.DATA_TYPE_FLOAT32: "float32",
    tensor_pb2.DATA_TYPE_FLOAT64: "float64",
}
_LAYER_KINDS = ", ".join(KINDS)


@dataclass
class Node:
    """One layer of a spec, where it sits and what it consumes."""

    layer: spec_pb2.LayerSpec
    path: str
    inputs: list[str]
    kind: str | None = None

    @property
    def key(self) -> str:
        """Return the name later nodes refer to this one by."""
        return self.layer.name or self.path


@dataclass
class Graph:
    """The symbolic signals of a spec's inputs and layers, keyed by name."""

    violations: Violations = field(default_factory=Violations)
    signals: dict[str, Signal | None] = field(default_factory=dict)
    parameters: dict[str, int] = field(default_factory=dict)


def input_signal(spec: spec_pb2.InputSpec, path: str, v: Violations) -> Signal | None:
    """Check an InputSpec and return the signal it feeds, None when it is bad."""
    ok = True
    shape = list(spec.shape)
    if any(d != -1 and d <= 0 for d in shape):
        v.add(
            f"{path}.shape",
            "expected positive sizes or -1 for a dimension of any size, "
            f"received shape={shape}",
        )
        ok = False

    dtype = _DTYPES.get(spec.dtype)
    if dtype is None:
        v.add(
            f"{path}.dtype", f"expected a DataType value, received dtype={spec.dtype}"
        )
        ok = False

    if not ok or dtype is None:
        return None
    return Signal(tuple(None if d == -1 else d for d in shape), dtype)


def keras_dtype(spec: spec_pb2.InputSpec) -> str:
    """Return the Keras dtype of a checked InputSpec."""
    return _DTYPES[spec.dtype]


def check_layers(nodes: Sequence[Node], v: Violations) -> None:
    """Check every layer's kind, name and arguments; set each node's kind."""
    for node in nodes:
        node.kind = node.layer.WhichOneof("layer")
        if node.kind is None:
            v.add(
                node.path,
                f"expected one of {_LAYER_KINDS} to be set, received none",
            )
            continue
        found = len(v.items)
        v.name(node.path, node.layer.name)
        KINDS[node.kind].check(
            getattr(node.layer, node.kind), f"{node.path}.{node.kind}", v
        )
        if len(v.items) > found:
            # Shapes through a layer with bad arguments would only mislead.
            node.kind = None


def check_unique_names(names: Sequence[tuple[str, str]], v: Violations) -> None:
    """Check that no (path, name) pair repeats a name given before."""
    seen: dict[str, str] = {}
    for path, name in names:
        if not name:
            continue
        if name in seen:
            v.add(
                path,
                f"expected a name unique within the model, received {name!r} "
                f"(also at {seen[name]})",
            )
            continue
        seen[name] = path


def infer(nodes: Sequence[Node], graph: Graph) -> None:
    """Infer every node's output signal and parameter count, in order."""
    for node in nodes:
        inputs = [graph.signals.get(name) for name in node.inputs]
        known = [s for s in inputs if s is not None]
        if node.kind is None or len(known) != len(inputs) or not inputs:
            graph.signals[node.key] = None
            continue

        kind_path = f"{node.path}.{node.kind}"
        try:
            signal, params = KINDS[node.kind].infer(
                getattr(node.layer, node.kind), known
            )
        except ShapeError as error:
            where = f"{kind_path}.{error.field}" if error.field else kind_path
            graph.violations.add(where, error.description)
            signal, params = None, 0

        graph.signals[node.key] = signal
        graph.parameters[node.key] = params


def check_arity(node: Node, v: Violations) -> bool:
    """Check that a merge layer gets two or more inputs and any other one."""
    if node.kind is None:
        return False
    count = len(node.inputs)
    if node.kind in MERGE_KINDS and count < 2:
        v.add(
            f"{node.path}.{node.kind}",
            f"expected two or more inputs for {node.kind}, received {count}",
        )
        return False
    if node.kind not in MERGE_KINDS and count != 1:
        v.add(
            f"{node.path}.{node.kind}",
            f"expected exactly one input for {node.kind}, received {count}",
        )
        return False
    return True


def check_parameter_limit(graph: Graph, path: str, max_parameters: int) -> None:
    """Check the model's parameter count against the server's limit."""
    total = sum(graph.parameters.values())
    if max_parameters <= 0 or total <= max_parameters:
        return

    largest = max(graph.parameters, key=graph.parameters.__getitem__)
    graph.violations.add(
        path,
        f"expected a model of at most {max_parameters:,} parameters, received "
        f"one of {total:,} (the largest layer, {largest}, has "
        f"{graph.parameters[largest]:,})",
    )
