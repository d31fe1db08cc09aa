"""Messages encoded and decoded around raw tensor bytes agree with protobuf."""

from __future__ import annotations

from functools import partial
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from kerasrpc.client import codec
from kerasrpc.client.tensors import fill_tensor, to_array, to_tensor
from kerasrpc.service.compat.open_inference import _infer_response
from kerasrpc.service.compat.tf_serving import _predict_response
from kerasrpc.v1 import inference_service_pb2, tensor_pb2
from tensorflow_serving.apis import model_pb2, predict_pb2
from tritonclient.grpc import service_pb2

from tests.decoding import corrupt, decoded_both_ways

DTYPES = [
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
    "uint64", "float16", "float32", "float64", ml_dtypes.bfloat16,
]  # fmt: skip


def expected_response(
    model_name: str, version: int, outputs: dict[str, Any]
) -> inference_service_pb2.PredictResponse:
    """Build the response the usual way, field by field."""
    response = inference_service_pb2.PredictResponse(
        model_name=model_name, version=version
    )
    for name, array in outputs.items():
        fill_tensor(response.outputs[name], array)
    return response


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (2**32, b"\x80\x80\x80\x80\x10"),
    ],
)
def test_varints_follow_the_wire_format(value: int, encoded: bytes) -> None:
    assert codec.varint(value) == encoded


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_parses_back(dtype: object) -> None:
    outputs = {"scores": (np.arange(24) % 7).astype(dtype).reshape(2, 3, 4)}

    data = codec.predict_response("m", 3, outputs).serialize()

    parsed = inference_service_pb2.PredictResponse.FromString(data)
    assert parsed == expected_response("m", 3, outputs)
    np.testing.assert_array_equal(to_array(parsed.outputs["scores"]), outputs["scores"])


@settings(max_examples=60, deadline=None)
@given(
    model_name=st.text(max_size=40),
    version=st.integers(0, 2**62),
    outputs=st.dictionaries(
        st.text(max_size=20),
        hnp.arrays(
            st.sampled_from(["<f4", ">f8", "<i8", "|u1", "?", "<f2"]),
            hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=70),
        ),
        max_size=4,
    ),
)
def test_any_response_parses_into_the_message_built_field_by_field(
    model_name: str, version: int, outputs: dict[str, Any]
) -> None:
    encoded = codec.predict_response(model_name, version, outputs)

    data = encoded.serialize()

    assert len(data) == encoded.size
    assert inference_service_pb2.PredictResponse.FromString(data) == expected_response(
        model_name, version, outputs
    )


def test_strided_and_big_endian_outputs_travel_little_endian_in_c_order() -> None:
    transposed = np.arange(12, dtype="<f4").reshape(3, 4).T
    big_endian = np.arange(6, dtype=">i4").reshape(2, 3)
    outputs = {"t": transposed, "b": big_endian}

    parsed = inference_service_pb2.PredictResponse.FromString(
        codec.predict_response("m", 1, outputs).serialize()
    )

    np.testing.assert_array_equal(to_array(parsed.outputs["t"]), transposed)
    np.testing.assert_array_equal(to_array(parsed.outputs["b"]), big_endian)
    assert parsed.outputs["b"].content == big_endian.astype("<i4").tobytes()


def test_outputs_over_a_varint_byte_of_length_keep_their_bytes() -> None:
    # 70,000 float32 values: lengths that need three varint bytes.
    outputs = {"big": np.linspace(0, 1, 70_000, dtype="float32")}

    parsed = inference_service_pb2.PredictResponse.FromString(
        codec.predict_response("m", 1, outputs).serialize()
    )

    np.testing.assert_array_equal(to_array(parsed.outputs["big"]), outputs["big"])


def test_a_nested_response_is_the_stream_message() -> None:
    outputs = {"y": np.ones((2, 5), "float32")}

    data = codec.predict_response("m", 2, outputs).nested(1).serialize()

    parsed = inference_service_pb2.PredictStreamResponse.FromString(data)
    assert parsed.response == expected_response("m", 2, outputs)


def test_the_serializer_takes_encoded_responses_and_message_objects() -> None:
    message = inference_service_pb2.PredictResponse(model_name="m", version=4)
    outputs = {"y": np.ones(3, "float32")}

    assert codec.serialize(message) == message.SerializeToString()
    assert codec.serialize(
        codec.predict_response("m", 1, outputs)
    ) == expected_response("m", 1, outputs).SerializeToString(deterministic=True)


def test_open_inference_responses_carry_outputs_raw_in_order() -> None:
    request = service_pb2.ModelInferRequest(model_name="m", id="req-7")
    outputs = {
        "b": np.arange(6, dtype="int64").reshape(2, 3),
        "a": np.linspace(0, 1, 4, dtype="float32").reshape(2, 2),
    }

    parsed = service_pb2.ModelInferResponse.FromString(
        _infer_response(request, 5, outputs).serialize()
    )

    assert (parsed.model_name, parsed.model_version, parsed.id) == ("m", "5", "req-7")
    assert [(o.name, o.datatype, list(o.shape)) for o in parsed.outputs] == [
        ("b", "INT64", [2, 3]),
        ("a", "FP32", [2, 2]),
    ]
    assert list(parsed.raw_output_contents) == [
        outputs["b"].tobytes(),
        outputs["a"].tobytes(),
    ]


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64", "bool"])
def test_tf_serving_responses_decode_with_make_ndarray(dtype: str) -> None:
    spec = model_pb2.ModelSpec(name="m")
    spec.version.value = 2
    array = (np.arange(10) % 3).astype(dtype).reshape(2, 5)

    parsed = predict_pb2.PredictResponse.FromString(
        _predict_response(spec, {"scores": array}).serialize()
    )

    assert parsed.model_spec == spec
    decoded = tf.make_ndarray(parsed.outputs["scores"])
    assert decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array)


# Decoding requests in place ---------------------------------------------------

tensors = st.builds(
    tensor_pb2.Tensor,
    dtype=st.integers(0, 40),
    shape=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=5),
    content=st.binary(max_size=300),
)
requests = st.builds(
    inference_service_pb2.PredictRequest,
    model_name=st.text(max_size=30),
    version=st.integers(-(2**63), 2**63 - 1),
    inputs=st.dictionaries(st.text(max_size=12), tensors, max_size=4),
    output_names=st.lists(st.text(max_size=12), max_size=3),
)


PARSE_REQUEST = inference_service_pb2.PredictRequest.FromString
DECODE_REQUEST = partial(codec.decode_predict_request, in_place_from=0)


def same_request(decoded: Any, message: inference_service_pb2.PredictRequest) -> None:
    """Assert that a decoded request holds what the message holds."""
    assert decoded.model_name == message.model_name
    assert decoded.version == message.version
    assert list(decoded.output_names) == list(message.output_names)
    assert set(decoded.inputs) == set(message.inputs)
    for name, tensor in message.inputs.items():
        got = decoded.inputs[name]
        assert (got.dtype, list(got.shape)) == (tensor.dtype, list(tensor.shape))
        assert bytes(got.content) == tensor.content


@settings(max_examples=150, deadline=None)
@given(message=requests)
def test_requests_decode_in_place_to_what_protobuf_parses(
    message: inference_service_pb2.PredictRequest,
) -> None:
    data = message.SerializeToString()

    decoded = codec.decode_predict_request(data, in_place_from=0)

    assert isinstance(decoded, codec.PredictRequestView)
    same_request(decoded, message)
    for tensor in decoded.inputs.values():
        if tensor.content:
            assert tensor.content.obj is data  # a view of the received bytes


@settings(max_examples=150, deadline=None)
@given(message=requests, cut=st.integers(0, 2000))
def test_truncated_requests_fail_or_parse_as_protobuf_does(
    message: inference_service_pb2.PredictRequest, cut: int
) -> None:
    data = message.SerializeToString()[:cut]
    both = decoded_both_ways(PARSE_REQUEST, DECODE_REQUEST, data)
    if both is not None:
        same_request(both[1], both[0])


def test_unknown_fields_and_unpacked_shapes_decode_in_place() -> None:
    content = np.arange(6, dtype="<f4").tobytes()
    tensor = (
        b"\x08" + codec.varint(tensor_pb2.DATA_TYPE_FLOAT32)
        + b"\x10\x02\x10\x03"  # shape 2, 3, one varint each (unpacked)
        + b"\x78\x05"  # unknown field 15, a varint
        + codec.length_prefix(3, len(content)) + content
    )  # fmt: skip
    entry = codec.length_prefix(1, 1) + b"x" + codec.length_prefix(2, len(tensor))
    data = (
        codec.length_prefix(1, 1) + b"m"
        + b"\x81\x01" + bytes(8)  # unknown field 16, fixed 64 bits
        + codec.length_prefix(3, len(entry + tensor)) + entry + tensor
    )  # fmt: skip

    decoded = codec.decode_predict_request(data, in_place_from=0)

    assert isinstance(decoded, codec.PredictRequestView)
    same_request(decoded, inference_service_pb2.PredictRequest.FromString(data))
    np.testing.assert_array_equal(
        to_array(decoded.inputs["x"]), np.arange(6, dtype="float32").reshape(2, 3)
    )


def test_a_tensor_given_twice_in_one_entry_is_merged_by_protobuf() -> None:
    first = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_INT8, shape=[2])
    second = tensor_pb2.Tensor(content=b"\x01\x02")
    entry = (
        codec.length_prefix(1, 1) + b"x"
        + codec.length_prefix(2, first.ByteSize()) + first.SerializeToString()
        + codec.length_prefix(2, second.ByteSize()) + second.SerializeToString()
    )  # fmt: skip
    data = codec.length_prefix(3, len(entry)) + entry

    decoded = codec.decode_predict_request(data, in_place_from=0)

    assert isinstance(decoded, inference_service_pb2.PredictRequest)
    np.testing.assert_array_equal(to_array(decoded.inputs["x"]), [1, 2])


def test_small_requests_are_parsed_by_protobuf() -> None:
    message = inference_service_pb2.PredictRequest(model_name="m")

    decoded = codec.decode_predict_request(message.SerializeToString())

    assert isinstance(decoded, inference_service_pb2.PredictRequest)


def test_stream_requests_decode_their_request_in_place() -> None:
    request = inference_service_pb2.PredictRequest(model_name="m", version=2)
    request.inputs["x"].CopyFrom(to_tensor(np.ones((3, 2), "float32")))
    data = inference_service_pb2.PredictStreamRequest(
        request=request
    ).SerializeToString()

    decoded = codec.decode_predict_stream_request(data, in_place_from=0)

    assert isinstance(decoded, codec.PredictStreamRequestView)
    same_request(decoded.request, request)


@settings(max_examples=200, deadline=None)
@given(message=requests, position=st.integers(0, 2000), byte=st.integers(0, 255))
def test_corrupted_requests_fail_or_parse_as_protobuf_does(
    message: inference_service_pb2.PredictRequest, position: int, byte: int
) -> None:
    corrupted = corrupt(message.SerializeToString(), position, byte)
    both = decoded_both_ways(PARSE_REQUEST, DECODE_REQUEST, corrupted)
    if both is not None:
        same_request(both[1], both[0])


@pytest.mark.parametrize(
    "hex_data",
    [
        # A map entry holding only an unknown fixed64 field: protobuf keeps
        # it out of the map.
        "0a03c3a9621080808080808080808d011a0ae900120608091a0236dd2200",
        # A map entry with a key and an unknown fixed32 field.
        "10011a150a07623061c3a9c3a9850a08021a06fd0a63e5053c2201622206626130c3a962",
        # A field number over 2**29 after an unknown fixed64 field.
        "090b30303030c280c2b8e0a0802200",
    ],
)
def test_odd_encodings_found_by_fuzzing_decode_as_protobuf_does(hex_data: str) -> None:
    both = decoded_both_ways(PARSE_REQUEST, DECODE_REQUEST, bytes.fromhex(hex_data))
    if both is not None:
        same_request(both[1], both[0])


# The client's side: requests encoded, responses decoded in place --------------

array_maps = st.dictionaries(
    st.text(max_size=12),
    hnp.arrays(
        st.sampled_from(["<f4", ">f8", "<i8", "|u1", "?", "<f2"]),
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40),
    ),
    max_size=3,
)


@settings(max_examples=60, deadline=None)
@given(
    model_name=st.text(max_size=30),
    version=st.integers(0, 2**62),
    inputs=array_maps,
    output_names=st.lists(st.text(max_size=12), max_size=3),
)
def test_encoded_requests_parse_into_the_message_built_field_by_field(
    model_name: str, version: int, inputs: dict[str, Any], output_names: list[str]
) -> None:
    expected = inference_service_pb2.PredictRequest(
        model_name=model_name, version=version, output_names=output_names
    )
    for name, array in inputs.items():
        fill_tensor(expected.inputs[name], array)

    encoded = codec.predict_request(model_name, version, inputs, output_names)

    parsed = inference_service_pb2.PredictRequest.FromString(encoded.serialize())
    assert parsed == expected


@settings(max_examples=60, deadline=None)
@given(
    model_name=st.text(max_size=30), version=st.integers(0, 2**62), outputs=array_maps
)
def test_responses_decode_in_place_into_the_arrays_sent(
    model_name: str, version: int, outputs: dict[str, Any]
) -> None:
    data = codec.predict_response(model_name, version, outputs).serialize()

    decoded = codec.decode_predict_response(data, in_place_from=0)

    assert isinstance(decoded, codec.PredictResponseView)
    assert (decoded.model_name, decoded.version) == (model_name, version)
    assert set(decoded.outputs) == set(outputs)
    for name, array in outputs.items():
        got = to_array(decoded.outputs[name])
        assert got.shape == array.shape
        np.testing.assert_array_equal(got, array)
        if got.nbytes:
            assert decoded.outputs[name].content.obj is data


@settings(max_examples=150, deadline=None)
@given(outputs=array_maps, position=st.integers(0, 5000), byte=st.integers(0, 255))
def test_corrupted_responses_fail_or_parse_as_protobuf_does(
    outputs: dict[str, Any], position: int, byte: int
) -> None:
    corrupted = corrupt(
        codec.predict_response("m", 3, outputs).serialize(), position, byte
    )
    both = decoded_both_ways(
        inference_service_pb2.PredictResponse.FromString,
        partial(codec.decode_predict_response, in_place_from=0),
        corrupted,
    )
    if both is None:
        return
    parsed, decoded = both
    assert (decoded.model_name, decoded.version) == (parsed.model_name, parsed.version)
    assert set(decoded.outputs) == set(parsed.outputs)
    for name, tensor in parsed.outputs.items():
        got = decoded.outputs[name]
        assert (got.dtype, list(got.shape)) == (tensor.dtype, list(tensor.shape))
        assert bytes(got.content) == tensor.content


def test_stream_responses_decode_their_response_in_place() -> None:
    outputs = {"y": np.arange(10, dtype="float32").reshape(2, 5)}
    data = codec.predict_response("m", 2, outputs).nested(1).serialize()

    decoded = codec.decode_predict_stream_response(data, in_place_from=0)

    assert isinstance(decoded, codec.PredictStreamResponseView)
    np.testing.assert_array_equal(to_array(decoded.response.outputs["y"]), outputs["y"])
