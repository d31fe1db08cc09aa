"""Building a Keras model from a ModelSpec, after checking the whole spec."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import keras
from kerasrpc.service.errors import InvalidArgument
from kerasrpc.service.keras.graph import (
    Graph,
    Node,
    check_arity,
    check_layers,
    check_parameter_limit,
    check_unique_names,
    infer,
    input_signal,
    keras_dtype,
)
from kerasrpc.service.keras.layers import KINDS, MERGE_KINDS
from kerasrpc.service.keras.seeds import Seeds
from kerasrpc.service.keras.signals import ShapeError
from kerasrpc.service.keras.single_dense_model import SingleDenseModel
from kerasrpc.service.keras.violations import Violations, which_oneof
from kerasrpc.v1 import spec_pb2

logger = logging.getLogger("kerasrpc.service.keras")


def build_model(
    spec: spec_pb2.ModelSpec,
    *,
    default_name: str,
    max_parameters: int,
    path: str = "spec",
    seed: int | None = None,
) -> keras.Model:
    """Check a model spec and build the Keras model it describes.

    Args:
        spec: The architecture.
        default_name: The model's Keras name when the spec gives none.
        max_parameters: The largest parameter count allowed; 0 means no limit.
        path: The field path of `spec` in the request, used in errors.
        seed: Seed for the initial weights; equal seeds give equal weights.
            None draws fresh weights.

    Returns:
        The built model, its weights initialised.

    Raises:
        InvalidArgument: The spec is malformed or describes a model Keras
            cannot build, or one over `max_parameters`; each violation names
            its field path under `path`.
    """
    architecture = which_oneof(spec, "architecture", path)
    name = spec.name or default_name.replace("/", "_")
    graph = Graph()
    graph.violations.name(path, spec.name)

    arch_path = f"{path}.{architecture}"
    nodes = _CHECKS[architecture](getattr(spec, architecture), arch_path, graph)
    check_parameter_limit(graph, path, max_parameters)
    graph.violations.raise_if_any()

    build = _BUILDS[architecture]
    model = _keras_errors(
        arch_path, build, getattr(spec, architecture), nodes, name, Seeds(seed)
    )
    logger.debug("built model %s: %s parameters", name, model.count_params())
    return model


# ---------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------


def _check_sequential(
    spec: spec_pb2.SequentialSpec, path: str, graph: Graph
) -> list[Node]:
    v = graph.violations
    graph.signals["input"] = input_signal(spec.input, f"{path}.input", v)
    if not spec.layers:
        v.add(f"{path}.layers", "expected at least one layer, received none")

    nodes: list[Node] = []
    for i, layer in enumerate(spec.layers):
        previous = nodes[-1].key if nodes else "input"
        nodes.append(Node(layer, f"{path}.layers[{i}]", [previous]))
    check_layers(nodes, v)

    for node in nodes:
        if node.kind in MERGE_KINDS:
            v.add(
                f"{node.path}.{node.kind}",
                "expected a layer that takes one input (merge layers need a "
                f"functional model), received {node.kind}",
            )
            node.kind = None
    check_unique_names([(f"{n.path}.name", n.layer.name) for n in nodes], v)

    infer(nodes, graph)
    return nodes


def _check_functional(
    spec: spec_pb2.FunctionalSpec, path: str, graph: Graph
) -> list[Node]:
    v = graph.violations
    _check_functional_inputs(spec, path, graph)
    nodes = [
        Node(node.layer, f"{path}.nodes[{i}].layer", list(node.inputs))
        for i, node in enumerate(spec.nodes)
    ]
    check_layers(nodes, v)

    names = [(f"{path}.inputs[{i}].name", s.name) for i, s in enumerate(spec.inputs)]
    names += [(f"{n.path}.name", n.layer.name) for n in nodes]
    check_unique_names(names, v)

    defined = [s.name for s in spec.inputs]
    for i, node in enumerate(nodes):
        _check_node_inputs(node, f"{path}.nodes[{i}]", defined, v)
        if not node.layer.name:
            v.add(
                f"{node.path}.name",
                "expected a name that later nodes and outputs refer to, "
                "received an empty one",
            )
        defined.append(node.layer.name)

    _check_outputs(spec, path, defined, v)
    _check_inputs_used(spec, path, defined, v)
    infer(nodes, graph)
    return nodes


def _check_functional_inputs(
    spec: spec_pb2.FunctionalSpec, path: str, graph: Graph
) -> None:
    v = graph.violations
    if not spec.inputs:
        v.add(f"{path}.inputs", "expected at least one input, received none")

    for i, input_spec in enumerate(spec.inputs):
        input_path = f"{path}.inputs[{i}]"
        signal = input_signal(input_spec, input_path, v)
        if not input_spec.name:
            v.add(
                f"{input_path}.name",
                "expected a name that nodes refer to, received an empty one",
            )
        elif v.name(input_path, input_spec.name):
            graph.signals[input_spec.name] = signal


def _check_node_inputs(
    node: Node, path: str, defined: Sequence[str], v: Violations
) -> None:
    if not check_arity(node, v):
        node.kind = None

    for j, name in enumerate(node.inputs):
        if name not in defined or not name:
            v.add(
                f"{path}.inputs[{j}]",
                "expected the name of an input or an earlier node "
                f"({_choices(defined)}), received {name!r}",
            )
            node.kind = None


def _check_outputs(
    spec: spec_pb2.FunctionalSpec, path: str, defined: Sequence[str], v: Violations
) -> None:
    if not spec.outputs:
        v.add(f"{path}.outputs", "expected at least one output name, received none")

    for i, name in enumerate(spec.outputs):
        if name not in defined or not name:
            v.add(
                f"{path}.outputs[{i}]",
                f"expected the name of an input or a node ({_choices(defined)}), "
                f"received {name!r}",
            )


def _check_inputs_used(
    spec: spec_pb2.FunctionalSpec, path: str, defined: Sequence[str], v: Violations
) -> None:
    """Refuse inputs and nodes that no output depends on.

    Keras would build such a model: every caller would have to feed an input
    that changes nothing, and a node's layer would silently be left out.
    Skipped while names are unresolved or repeated, where it would only
    repeat those errors.
    """
    known = set(defined)
    named = [name for node in spec.nodes for name in node.inputs] + list(spec.outputs)
    if len(known) != len(defined) or not all(name in known for name in named):
        return
    sources = {node.layer.name: node.inputs for node in spec.nodes}
    reached: set[str] = set()
    pending = list(spec.outputs)
    while pending:
        name = pending.pop()
        if name not in reached:
            reached.add(name)
            pending.extend(sources.get(name, ()))
    outputs = ", ".join(repr(name) for name in spec.outputs)
    for i, input_spec in enumerate(spec.inputs):
        if input_spec.name and input_spec.name not in reached:
            v.add(
                f"{path}.inputs[{i}].name",
                "expected an input that an output depends on; none of the "
                f"outputs ({outputs}) depends on {input_spec.name!r}",
            )
    for i, node in enumerate(spec.nodes):
        if node.layer.name and node.layer.name not in reached:
            v.add(
                f"{path}.nodes[{i}].layer.name",
                "expected a node that an output depends on; none of the "
                f"outputs ({outputs}) depends on {node.layer.name!r}",
            )


def _choices(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:10] if n)
    return f"one of {shown}" if shown else "none defined"


def _check_registered(
    spec: spec_pb2.RegisteredModelSpec, path: str, graph: Graph
) -> list[Node]:
    v = graph.violations
    signal = input_signal(spec.input, f"{path}.input", v)
    v.oneof(spec, "model", path)

    dense = _single_dense_layer(spec.single_dense)
    dense_path = f"{path}.single_dense"
    found = len(v.items)
    KINDS["dense"].check(dense.dense, dense_path, v)
    if "/" in dense.name:
        v.add(
            f"{dense_path}.layer_name",
            f"expected a name without '/', received layer_name={dense.name!r}",
        )
    if signal is None or len(v.items) > found:
        return []

    try:
        _, graph.parameters[dense.name] = KINDS["dense"].infer(dense.dense, [signal])
    except ShapeError as error:
        v.add(f"{path}.input.shape", error.description)
    return [Node(dense, dense_path, ["input"], kind="dense")]


def _single_dense_layer(spec: spec_pb2.SingleDenseModelSpec) -> spec_pb2.LayerSpec:
    """Describe the registered model's Dense layer as a LayerSpec, defaults filled."""
    return spec_pb2.LayerSpec(
        name=spec.layer_name or "dense",
        dense=spec_pb2.DenseLayer(
            units=spec.units if spec.HasField("units") else 5,
            activation=spec.activation if spec.HasField("activation") else "relu",
        ),
    )


_CHECKS: dict[str, Callable[[Any, str, Graph], list[Node]]] = {
    "sequential": _check_sequential,
    "functional": _check_functional,
    "registered": _check_registered,
}


# ---------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------


class _LayerBuildError(Exception):
    """Keras refused to build one layer; carries that layer's path."""

    def __init__(self, path: str, error: Exception) -> None:
        super().__init__(str(error))
        self.path = path
        self.error = error


def _keras_errors(
    path: str, build: Callable[..., keras.Model], *args: Any
) -> keras.Model:
    """Run a build, turning any Keras or TensorFlow error into InvalidArgument."""
    try:
        return build(*args)
    except _LayerBuildError as failed:
        logger.debug("Keras refused layer %s", failed.path, exc_info=True)
        raise _refused(failed.path, failed.error) from None
    except Exception as error:
        logger.debug("Keras refused model %s", path, exc_info=True)
        raise _refused(path, error) from None


def _refused(path: str, error: Exception) -> InvalidArgument:
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return InvalidArgument.field(
        path,
        "expected a spec Keras can build, received this error from Keras: "
        f"{type(error).__name__}: {message[:500]}",
    )


def _create_layer(node: Node, seeds: Seeds) -> keras.layers.Layer:
    """Create a node's Keras layer."""
    assert node.kind is not None
    return KINDS[node.kind].create(
        getattr(node.layer, node.kind), node.layer.name or None, seeds
    )


def _call_layer(node: Node, seeds: Seeds, inputs: Sequence[Any]) -> Any:
    """Create a node's layer and call it on its inputs, naming it on failure."""
    try:
        layer = _create_layer(node, seeds)
        return layer(list(inputs) if node.kind in MERGE_KINDS else inputs[0])
    except Exception as error:
        raise _LayerBuildError(node.path, error) from error


def _build_sequential(
    spec: spec_pb2.SequentialSpec, nodes: Sequence[Node], name: str, seeds: Seeds
) -> keras.Model:
    model = keras.Sequential(name=name)
    model.add(_keras_input(spec.input))
    for node in nodes:
        try:
            model.add(_create_layer(node, seeds))
        except Exception as error:
            raise _LayerBuildError(node.path, error) from error
    return model


def _build_functional(
    spec: spec_pb2.FunctionalSpec, nodes: Sequence[Node], name: str, seeds: Seeds
) -> keras.Model:
    tensors = {s.name: _keras_input(s) for s in spec.inputs}
    for node in nodes:
        inputs = [tensors[n] for n in node.inputs]
        tensors[node.layer.name] = _call_layer(node, seeds, inputs)

    inputs = [tensors[s.name] for s in spec.inputs]
    outputs = [tensors[n] for n in spec.outputs]
    return keras.Model(
        inputs=inputs[0] if len(inputs) == 1 else inputs,
        outputs=outputs[0] if len(outputs) == 1 else outputs,
        name=name,
    )


def _build_registered(
    spec: spec_pb2.RegisteredModelSpec, nodes: Sequence[Node], name: str, seeds: Seeds
) -> keras.Model:
    dense = nodes[0].layer
    model = SingleDenseModel(
        units=dense.dense.units,
        activation=dense.dense.activation,
        layer_name=dense.name,
        seed=seeds.next(),
        name=name,
    )
    model(_keras_input(spec.input))
    return model


def _keras_input(spec: spec_pb2.InputSpec) -> Any:
    shape = tuple(None if d == -1 else d for d in spec.shape)
    return keras.Input(shape=shape, dtype=keras_dtype(spec), name=spec.name or None)


_BUILDS: dict[str, Callable[..., keras.Model]] = {
    "sequential": _build_sequential,
    "functional": _build_functional,
    "registered": _build_registered,
}
