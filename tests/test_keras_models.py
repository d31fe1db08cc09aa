"""Building Keras models from ModelSpecs, and summarizing them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import yaml
from google.protobuf import json_format
from kerasrpc.service.errors import InvalidArgument
from kerasrpc.service.keras import build_model, summarize
from kerasrpc.v1 import spec_pb2, training_service_pb2

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LIMIT = 1_000_000


def model_spec(architecture: dict[str, Any], name: str = "") -> spec_pb2.ModelSpec:
    """Parse the JSON mapping of a ModelSpec."""
    return json_format.ParseDict({"name": name, **architecture}, spec_pb2.ModelSpec())


def sequential(shape: list[int], *layers: dict[str, Any], dtype: str = "") -> Any:
    """Return a sequential ModelSpec of these layers on this input."""
    spec_input: dict[str, Any] = {"shape": shape}
    if dtype:
        spec_input["dtype"] = dtype
    return model_spec({"sequential": {"input": spec_input, "layers": list(layers)}})


def build(spec: spec_pb2.ModelSpec, **kwargs: Any) -> keras.Model:
    kwargs.setdefault("default_name", "model")
    kwargs.setdefault("max_parameters", LIMIT)
    return build_model(spec, **kwargs)


def violations(spec: spec_pb2.ModelSpec, **kwargs: Any) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        build(spec, **kwargs)
    return {v.field: v.description for v in caught.value.violations}


# ---------------------------------------------------------------------------
# The four ways the examples build a model
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "example", ["sequential", "functional", "custom_layer", "model_subclass"]
)
def test_example_parses_as_train_request_and_its_model_builds(example: str) -> None:
    document = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text())

    request = json_format.ParseDict(document, training_service_pb2.TrainRequest())
    model = build_model(
        request.spec.spec,
        default_name=request.spec.model_name,
        max_parameters=LIMIT,
        path="spec.spec",
    )

    assert model.name == "CustomModel"
    assert request.spec.train_data.file.path == "synthetic.npz"
    output = model.predict(np.zeros((32, 2, 8), dtype="float32"), verbose=0)
    assert output.shape == (32, 2, 5)
    assert model.count_params() == 45


def test_sequential_model_takes_names_from_spec() -> None:
    spec = sequential([2, 8], {"name": "CustomLayer", "dense": {"units": 5}})

    model = build(spec, default_name="stored-name")

    assert model.name == "stored-name"
    assert [layer.name for layer in model.layers] == ["CustomLayer"]


def test_functional_summary_lists_the_named_input_layer() -> None:
    spec = model_spec(
        {
            "functional": {
                "inputs": [{"name": "CustomInput", "shape": [2, 8]}],
                "nodes": [
                    {
                        "layer": {"name": "CustomLayer", "dense": {"units": 5}},
                        "inputs": ["CustomInput"],
                    }
                ],
                "outputs": ["CustomLayer"],
            }
        },
        name="CustomModel",
    )

    summary = summarize(build(spec))

    rows = [
        (r.name, r.type, list(r.output_shape), r.parameter_count)
        for r in summary.layers
    ]
    assert rows == [
        ("CustomInput", "InputLayer", [-1, 2, 8], 0),
        ("CustomLayer", "Dense", [-1, 2, 5], 45),
    ]
    assert summary.name == "CustomModel"
    assert (summary.parameter_count, summary.trainable_parameter_count) == (45, 45)
    assert "CustomInput (InputLayer)" in summary.text
    assert "Total params: 45" in summary.text


def test_summary_does_not_print(capsys: pytest.CaptureFixture[str]) -> None:
    model = build(sequential([4], {"batch_normalization": {}}))

    summary = summarize(model)

    assert capsys.readouterr().out == ""
    assert summary.parameter_count == 16
    assert summary.trainable_parameter_count == 8


def test_subclassed_model_summary_gives_inner_layer_shape() -> None:
    spec = model_spec(
        {"registered": {"input": {"shape": [-1, 8]}, "single_dense": {"units": 3}}}
    )

    summary = summarize(build(spec))

    assert [(r.name, r.type, list(r.output_shape)) for r in summary.layers] == [
        ("dense", "Dense", [-1, -1, 3])
    ]


def test_equal_seeds_give_equal_weights() -> None:
    spec = sequential(
        [6, 4],
        {"conv1d": {"filters": 3, "kernel_size": [2]}},
        {"lstm": {"units": 2, "return_sequences": True}},
        {"affine_dense": {"units": 2}},
    )

    first, second = build(spec, seed=3), build(spec, seed=3)
    other = build(spec, seed=4)

    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.get_weights()[0], other.get_weights()[0])


# ---------------------------------------------------------------------------
# Every layer kind, in a small model
# ---------------------------------------------------------------------------

EVERY_KIND: dict[str, tuple[spec_pb2.ModelSpec, tuple[int | None, ...]]] = {
    "dense": (
        sequential([3], {"dense": {"units": 4, "activation": "relu"}}),
        (None, 4),
    ),
    "affine_dense": (sequential([3], {"affine_dense": {}}), (None, 32)),
    "activation": (sequential([3], {"activation": {"activation": "gelu"}}), (None, 3)),
    "dropout": (sequential([3], {"dropout": {"rate": 0.5, "seed": 1}}), (None, 3)),
    "flatten": (sequential([2, 3], {"flatten": {}}), (None, 6)),
    "reshape": (sequential([6], {"reshape": {"target_shape": [-1, 2]}}), (None, 3, 2)),
    "batch_normalization": (
        sequential([4, 3], {"batch_normalization": {"axis": 1, "momentum": 0.9}}),
        (None, 4, 3),
    ),
    "layer_normalization": (
        sequential([3], {"layer_normalization": {"epsilon": 1e-5}}),
        (None, 3),
    ),
    "conv1d": (
        sequential(
            [8, 2],
            {"conv1d": {"filters": 4, "kernel_size": [3], "padding": "PADDING_CAUSAL"}},
        ),
        (None, 8, 4),
    ),
    "conv2d": (
        sequential(
            [7, 6, 1], {"conv2d": {"filters": 2, "kernel_size": [3, 2], "strides": [2]}}
        ),
        (None, 3, 3, 2),
    ),
    "pooling1d": (
        sequential([7, 2], {"pooling1d": {"mode": "POOLING_MODE_AVERAGE"}}),
        (None, 3, 2),
    ),
    "pooling2d": (
        sequential(
            [5, 4, 2], {"pooling2d": {"pool_size": [2], "padding": "PADDING_SAME"}}
        ),
        (None, 3, 2, 2),
    ),
    "global_pooling": (
        sequential([4, 4, 3], {"global_pooling": {"rank": 2}}),
        (None, 3),
    ),
    "embedding": (
        sequential(
            [5],
            {"embedding": {"input_dim": 10, "output_dim": 3, "mask_zero": True}},
            dtype="DATA_TYPE_INT32",
        ),
        (None, 5, 3),
    ),
    "lstm": (sequential([-1, 3], {"lstm": {"units": 4}}), (None, 4)),
    "gru": (
        sequential([5, 3], {"gru": {"units": 2, "return_sequences": True}}),
        (None, 5, 2),
    ),
    "add": (
        model_spec(
            {
                "functional": {
                    "inputs": [
                        {"name": "a", "shape": [3]},
                        {"name": "b", "shape": [3]},
                    ],
                    "nodes": [
                        {"layer": {"name": "sum", "add": {}}, "inputs": ["a", "b"]}
                    ],
                    "outputs": ["sum"],
                }
            }
        ),
        (None, 3),
    ),
    "concatenate": (
        model_spec(
            {
                "functional": {
                    "inputs": [
                        {"name": "a", "shape": [2, 3]},
                        {"name": "b", "shape": [2, 1]},
                    ],
                    "nodes": [
                        {
                            "layer": {"name": "both", "concatenate": {}},
                            "inputs": ["a", "b"],
                        }
                    ],
                    "outputs": ["both"],
                }
            }
        ),
        (None, 2, 4),
    ),
}


def test_every_layer_kind_is_covered() -> None:
    kinds = {
        f.name for f in spec_pb2.LayerSpec.DESCRIPTOR.oneofs_by_name["layer"].fields
    }

    assert kinds == set(EVERY_KIND)


@pytest.mark.parametrize("kind", sorted(EVERY_KIND))
def test_layer_kind_builds_with_the_shape_and_parameters_checked(kind: str) -> None:
    spec, shape = EVERY_KIND[kind]

    model = build(spec)

    assert tuple(model.outputs[0].shape) == shape
    # The parameter count checked before building is exactly Keras's own.
    params = model.count_params()
    assert build(spec, max_parameters=max(params, 1)).count_params() == params
    if params:
        assert "spec" in violations(spec, max_parameters=params - 1)


# ---------------------------------------------------------------------------
# Bad specs
# ---------------------------------------------------------------------------


def test_bad_layer_arguments_are_all_reported_with_field_paths() -> None:
    spec = sequential(
        [2, 8],
        {"dense": {"units": -3, "activation": "nope"}},
        {"dropout": {"rate": 1.5}},
        {"conv1d": {"filters": 0, "kernel_size": [2, 2]}},
    )

    found = violations(spec)

    layers = "spec.sequential.layers"
    assert (
        found[f"{layers}[0].dense.units"]
        == "expected a positive integer, received units=-3"
    )
    assert "received activation='nope'" in found[f"{layers}[0].dense.activation"]
    assert "received rate=1.5" in found[f"{layers}[1].dropout.rate"]
    assert "received filters=0" in found[f"{layers}[2].conv1d.filters"]
    assert "received kernel_size=[2, 2]" in found[f"{layers}[2].conv1d.kernel_size"]


@pytest.mark.parametrize(
    ("spec", "field", "expected"),
    [
        (
            sequential([8], {"conv2d": {"filters": 2, "kernel_size": [3]}}),
            "spec.sequential.layers[0].conv2d",
            "expected an input of rank 4",
        ),
        (
            sequential([2, 3], {"reshape": {"target_shape": [4, 2]}}),
            "spec.sequential.layers[0].reshape.target_shape",
            "holding the input's 6 elements",
        ),
        (
            sequential([5], {"embedding": {"input_dim": 4, "output_dim": 2}}),
            "spec.sequential.layers[0].embedding",
            "received dtype=float32",
        ),
        (
            sequential([3, 2], {"pooling1d": {"pool_size": [4]}}),
            "spec.sequential.layers[0].pooling1d",
            "at least the window size 4",
        ),
        (
            sequential([3], {"add": {}}),
            "spec.sequential.layers[0].add",
            "merge layers need a functional model",
        ),
        (
            sequential([3], {}),
            "spec.sequential.layers[0]",
            "expected one of dense,",
        ),
        (
            sequential([0, 3], {"dense": {"units": 1}}),
            "spec.sequential.input.shape",
            "received shape=[0, 3]",
        ),
        (
            sequential([3], {"dense": {"units": 1}}, dtype="99"),
            "spec.sequential.input.dtype",
            "received dtype=99",
        ),
        (
            sequential(
                [3], {"name": "x", "dense": {"units": 1}}, {"name": "x", "dropout": {}}
            ),
            "spec.sequential.layers[1].name",
            "unique within the model",
        ),
        (
            sequential([3], {"name": "a/b", "dense": {"units": 1}}),
            "spec.sequential.layers[0].name",
            "without '/'",
        ),
        (
            sequential([3], {"dense": {"units": 100_000}}, {"dense": {"units": 100}}),
            "spec",
            "at most 1,000,000 parameters, received one of 10,400,100",
        ),
        (model_spec({}), "spec", "expected one of sequential, functional, registered"),
    ],
)
def test_bad_spec_names_field_and_expectation(
    spec: spec_pb2.ModelSpec, field: str, expected: str
) -> None:
    found = violations(spec)

    assert field in found, found
    assert expected in found[field]


def test_functional_graph_errors_name_the_node() -> None:
    spec = model_spec(
        {
            "functional": {
                "inputs": [{"name": "a", "shape": [3]}, {"name": "b", "shape": [4]}],
                "nodes": [
                    {"layer": {"name": "sum", "add": {}}, "inputs": ["a", "b"]},
                    {"layer": {"name": "d", "dense": {"units": 2}}, "inputs": ["c"]},
                    {"layer": {"name": "m", "concatenate": {}}, "inputs": ["a"]},
                    {"layer": {"dense": {"units": 2}}, "inputs": ["a"]},
                ],
                "outputs": ["sum", "zzz"],
            }
        }
    )

    found = violations(spec, path="spec.spec")

    nodes = "spec.spec.functional.nodes"
    assert (
        "received input shapes (None, 3), (None, 4)" in found[f"{nodes}[0].layer.add"]
    )
    assert "received 'c'" in found[f"{nodes}[1].inputs[0]"]
    assert "two or more inputs" in found[f"{nodes}[2].layer.concatenate"]
    assert "received an empty one" in found[f"{nodes}[3].layer.name"]
    assert "received 'zzz'" in found["spec.spec.functional.outputs[1]"]


def dense_on(name: str, source: str) -> dict[str, Any]:
    """Return a functional node: a 2-unit Dense layer on `source`."""
    return {"layer": {"name": name, "dense": {"units": 2}}, "inputs": [source]}


def on_inputs_a_b(*nodes: dict[str, Any], outputs: list[str]) -> spec_pb2.ModelSpec:
    """Return a functional ModelSpec on inputs a (3,) and b (4,)."""
    inputs = [{"name": "a", "shape": [3]}, {"name": "b", "shape": [4]}]
    return model_spec(
        {"functional": {"inputs": inputs, "nodes": list(nodes), "outputs": outputs}}
    )


def test_functional_inputs_and_nodes_no_output_uses_are_refused() -> None:
    spec = on_inputs_a_b(dense_on("d", "a"), dense_on("e", "b"), outputs=["d"])

    found = violations(spec, path="spec")

    functional = "spec.functional"
    assert set(found) == {
        f"{functional}.inputs[1].name",
        f"{functional}.nodes[1].layer.name",
    }
    assert (
        "none of the outputs ('d') depends on 'b'"
        in found[f"{functional}.inputs[1].name"]
    )
    assert "depends on 'e'" in found[f"{functional}.nodes[1].layer.name"]


def test_functional_input_may_be_an_output_itself() -> None:
    spec = on_inputs_a_b(dense_on("d", "a"), outputs=["d", "b"])

    model = build(spec)

    a = np.ones((2, 3), "float32")
    b = np.arange(8, dtype="float32").reshape(2, 4)
    _, passed = model({"a": a, "b": b})
    np.testing.assert_array_equal(np.asarray(passed), b)


def test_registered_model_checks_its_arguments() -> None:
    spec = model_spec(
        {
            "registered": {
                "input": {"shape": [4]},
                "single_dense": {"units": -1, "activation": "bogus"},
            }
        }
    )

    found = violations(spec)

    assert "received units=-1" in found["spec.registered.single_dense.units"]
    assert "bogus" in found["spec.registered.single_dense.activation"]


def test_registered_model_needs_a_known_last_input_axis() -> None:
    spec = model_spec({"registered": {"input": {"shape": [4, -1]}, "single_dense": {}}})

    found = violations(spec)

    assert "known last axis" in found["spec.registered.input.shape"]


def test_keras_refusal_becomes_invalid_argument_at_the_layer() -> None:
    spec = model_spec(
        {
            "sequential": {
                "input": {"name": "x", "shape": [3]},
                "layers": [{"name": "x", "dense": {"units": 2}}],
            }
        }
    )

    found = violations(spec)

    description = found["spec.sequential.layers[0]"]
    assert description.startswith("expected a spec Keras can build, received")
    assert "unique names" in description
