"""Property tests: valid specs always build, invalid ones always say why."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kerasrpc.service.errors import InvalidArgument
from kerasrpc.service.keras import build_model
from kerasrpc.v1 import spec_pb2

LIMIT = 1_000_000
ACTIVATIONS = ["linear", "relu", "sigmoid", "tanh", "gelu", "softmax", "elu", "swish"]
PROPERTY = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

Shape = list[int]


# ---------------------------------------------------------------------------
# Valid specs
# ---------------------------------------------------------------------------


def _any_rank_layer(draw: st.DrawFn, shape: Shape) -> tuple[dict[str, Any], Shape]:
    """Draw a layer that accepts any input with a known last axis."""
    units = draw(st.integers(1, 6))
    choice = draw(st.sampled_from(["dense", "affine", "act", "drop", "norm", "flat"]))
    if choice == "dense":
        activation = draw(st.sampled_from(ACTIVATIONS))
        return {"dense": {"units": units, "activation": activation}}, [
            *shape[:-1],
            units,
        ]
    if choice == "affine":
        return {"affine_dense": {"units": units}}, [*shape[:-1], units]
    if choice == "act":
        return {"activation": {"activation": draw(st.sampled_from(ACTIVATIONS))}}, shape
    if choice == "drop":
        return {"dropout": {"rate": draw(st.floats(0.0, 0.9))}}, shape
    if choice == "norm":
        kind = draw(st.sampled_from(["batch_normalization", "layer_normalization"]))
        return {kind: {}}, shape
    return {"flatten": {}}, [int(np.prod(shape))]


def _sequence_layer(draw: st.DrawFn, shape: Shape) -> tuple[dict[str, Any], Shape]:
    """Draw a layer for (steps, channels) input."""
    steps, _ = shape
    choice = draw(st.sampled_from(["conv", "pool", "lstm", "gru", "global"]))
    if choice == "conv":
        kernel = draw(st.integers(1, steps))
        padding = draw(
            st.sampled_from(["PADDING_VALID", "PADDING_SAME", "PADDING_CAUSAL"])
        )
        filters = draw(st.integers(1, 4))
        out = steps - kernel + 1 if padding == "PADDING_VALID" else steps
        layer = {
            "conv1d": {"filters": filters, "kernel_size": [kernel], "padding": padding}
        }
        return layer, [out, filters]
    if choice == "pool":
        pool = draw(st.integers(1, steps))
        return {"pooling1d": {"pool_size": [pool]}}, [steps // pool, shape[1]]
    if choice in ("lstm", "gru"):
        units = draw(st.integers(1, 4))
        sequences = draw(st.booleans())
        layer = {choice: {"units": units, "return_sequences": sequences}}
        return layer, [steps, units] if sequences else [units]
    return {"global_pooling": {"rank": 1}}, [shape[1]]


def _image_layer(draw: st.DrawFn, shape: Shape) -> tuple[dict[str, Any], Shape]:
    """Draw a layer for (rows, cols, channels) input."""
    rows, cols, channels = shape
    choice = draw(st.sampled_from(["conv", "pool", "global"]))
    if choice == "conv":
        filters = draw(st.integers(1, 3))
        layer = {
            "conv2d": {
                "filters": filters,
                "kernel_size": [2],
                "padding": "PADDING_SAME",
            }
        }
        return layer, [rows, cols, filters]
    if choice == "pool":
        return {"pooling2d": {"pool_size": [2]}}, [rows // 2, cols // 2, channels]
    return {"global_pooling": {"rank": 2}}, [channels]


@st.composite
def valid_sequential(draw: st.DrawFn) -> dict[str, Any]:
    """Draw the JSON mapping of a small, valid sequential ModelSpec."""
    rank = draw(st.integers(1, 3))
    shape = [draw(st.integers(2, 5)) for _ in range(rank)]
    input_shape = list(shape)
    layers = []
    for _ in range(draw(st.integers(1, 4))):
        if len(shape) == 2 and draw(st.booleans()):
            layer, shape = _sequence_layer(draw, shape)
        elif len(shape) == 3 and min(shape[:2]) >= 2 and draw(st.booleans()):
            layer, shape = _image_layer(draw, shape)
        else:
            layer, shape = _any_rank_layer(draw, shape)
        layers.append(layer)
    return {"sequential": {"input": {"shape": input_shape}, "layers": layers}}


@st.composite
def valid_functional(draw: st.DrawFn) -> dict[str, Any]:
    """Draw the JSON mapping of a small, valid two-branch functional ModelSpec."""
    features = draw(st.integers(1, 5))
    units = draw(st.integers(1, 5))
    merge = draw(st.sampled_from([{"add": {}}, {"concatenate": {}}]))
    return {
        "functional": {
            "inputs": [
                {"name": "left", "shape": [features]},
                {"name": "right", "shape": [draw(st.integers(1, 5))]},
            ],
            "nodes": [
                {"layer": {"name": "l", "dense": {"units": units}}, "inputs": ["left"]},
                {
                    "layer": {"name": "r", "affine_dense": {"units": units}},
                    "inputs": ["right"],
                },
                {"layer": {"name": "m", **merge}, "inputs": ["l", "r"]},
                {"layer": {"name": "out", "dense": {"units": 2}}, "inputs": ["m"]},
            ],
            "outputs": ["out"],
        }
    }


def _parse(document: dict[str, Any]) -> spec_pb2.ModelSpec:
    return json_format.ParseDict(document, spec_pb2.ModelSpec())


@st.composite
def valid_spec(draw: st.DrawFn) -> spec_pb2.ModelSpec:
    """Draw a valid sequential, functional or registered ModelSpec."""
    kind = draw(st.sampled_from(["sequential", "functional", "registered"]))
    if kind == "sequential":
        return _parse(draw(valid_sequential()))
    if kind == "functional":
        return _parse(draw(valid_functional()))
    return _parse(
        {
            "registered": {
                "input": {"shape": [draw(st.integers(1, 4)), draw(st.integers(1, 4))]},
                "single_dense": {
                    "units": draw(st.integers(1, 4)),
                    "activation": draw(st.sampled_from(ACTIVATIONS)),
                },
            }
        }
    )


# ---------------------------------------------------------------------------
# Invalid specs: a valid one with one thing broken
# ---------------------------------------------------------------------------


def _layers(spec: spec_pb2.ModelSpec) -> list[spec_pb2.LayerSpec]:
    if spec.HasField("sequential"):
        return list(spec.sequential.layers)
    return [node.layer for node in spec.functional.nodes]


def _input(spec: spec_pb2.ModelSpec) -> spec_pb2.InputSpec:
    if spec.HasField("functional"):
        return spec.functional.inputs[0]
    return getattr(spec, spec.WhichOneof("architecture") or "sequential").input


def _replace(layer: spec_pb2.LayerSpec, **kind: Any) -> None:
    name = layer.name
    layer.Clear()
    json_format.ParseDict({"name": name, **kind}, layer)


def _break(spec: spec_pb2.ModelSpec, how: str, where: int, number: int) -> None:
    """Break `spec` in place, in the way `how` names."""
    layers = _layers(spec)
    layer = layers[where % len(layers)] if layers else None
    registered = spec.registered.single_dense
    if how == "negative_units" and layer is not None:
        _replace(layer, dense={"units": -number})
    elif how == "negative_units":
        registered.units = -number
    elif how == "unknown_activation" and layer is not None:
        _replace(layer, activation={"activation": f"no_such_activation_{number}"})
    elif how == "unknown_activation":
        registered.activation = f"no_such_activation_{number}"
    elif how == "empty_layer" and layer is not None:
        layer.Clear()
        layer.name = f"empty{number}"
    elif how == "huge":
        _grow_past_limit(spec, LIMIT + number)
    elif how == "bad_input_size":
        _input(spec).shape[where % len(_input(spec).shape)] = -1 - number
    elif how == "bad_dtype":
        _input(spec).dtype = 100 + number  # type: ignore[assignment]
    elif how == "missing_name" and spec.HasField("functional"):
        spec.functional.nodes[where % len(spec.functional.nodes)].inputs[0] = "nowhere"
    elif how == "reshape_mismatch" and spec.HasField("sequential"):
        count = int(np.prod(spec.sequential.input.shape))
        bad = spec_pb2.LayerSpec(
            reshape=spec_pb2.ReshapeLayer(target_shape=[count + number])
        )
        spec.sequential.layers.insert(0, bad)
    else:
        spec.ClearField("architecture")


def _grow_past_limit(spec: spec_pb2.ModelSpec, units: int) -> None:
    """Give the model's last layer more output units than the limit allows."""
    if spec.HasField("registered"):
        spec.registered.single_dense.units = units
    elif spec.HasField("functional"):
        spec.functional.nodes[-1].layer.dense.units = units
    else:
        spec.sequential.layers.add().dense.units = units


BREAKS = [
    "negative_units",
    "unknown_activation",
    "empty_layer",
    "huge",
    "bad_input_size",
    "bad_dtype",
    "missing_name",
    "reshape_mismatch",
]


@PROPERTY
@given(spec=valid_spec(), seed=st.integers(0, 2**31 - 1))
def test_valid_specs_always_build(spec: spec_pb2.ModelSpec, seed: int) -> None:
    model = build_model(spec, default_name="m", max_parameters=LIMIT, seed=seed)

    assert model.count_params() <= LIMIT
    assert model.built


@PROPERTY
@given(
    spec=valid_spec(),
    how=st.sampled_from(BREAKS),
    where=st.integers(0, 10),
    number=st.integers(1, 1000),
    prefix=st.sampled_from(["spec", "spec.spec", "request.model"]),
)
def test_invalid_specs_always_raise_invalid_argument_with_a_path(
    spec: spec_pb2.ModelSpec, how: str, where: int, number: int, prefix: str
) -> None:
    _break(spec, how, where, number)

    with pytest.raises(InvalidArgument) as error:
        build_model(spec, default_name="m", max_parameters=LIMIT, path=prefix)

    assert error.value.violations
    for violation in error.value.violations:
        assert violation.field.startswith(prefix), violation
        assert violation.description.startswith("expected "), violation
