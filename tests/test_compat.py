"""The Open Inference Protocol and TF Serving's API, through their own clients."""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
import zipfile
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from hypothesis import given, settings
from hypothesis import strategies as st
from kerasrpc.client import Client
from kerasrpc.service.compat.open_inference import InferRequest, decode_infer_request
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.decoding import corrupt, decoded_both_ways
from tests.inference_models import Stored, example_inputs, store, unique

TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def stored(server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Stored]:
    """One sequential, one functional and one int32 model on the session server."""
    tmp = tmp_path_factory.mktemp("compat")
    with Client(server.address, timeout=60) as client:
        return {
            style: store(client, tmp, style)
            for style in ("sequential", "functional", "embedding")
        }


@pytest.fixture
def triton_client(server: Any) -> Any:
    """tritonclient's gRPC client, connected to the session server."""
    connected = triton.InferenceServerClient(server.address)
    yield connected
    connected.close()


def triton_input(name: str, array: np.ndarray) -> Any:
    datatype = {"float32": "FP32", "int32": "INT32"}[array.dtype.name]
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


# Open Inference Protocol ---------------------------------------------------


def test_the_server_is_live_ready_and_describes_itself(triton_client: Any) -> None:
    metadata = triton_client.get_server_metadata()

    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert metadata.name == "kerasrpc"
    assert metadata.version


def test_model_readiness_follows_the_registry(
    triton_client: Any, stored: dict[str, Stored]
) -> None:
    model = stored["sequential"]

    assert triton_client.is_model_ready(model.name)
    assert triton_client.is_model_ready(model.name, str(model.version))
    assert not triton_client.is_model_ready(model.name, "99")
    assert not triton_client.is_model_ready(unique("absent"))


def test_model_metadata_lists_inputs_outputs_and_versions(
    triton_client: Any, stored: dict[str, Stored]
) -> None:
    model = stored["functional"]

    metadata = triton_client.get_model_metadata(model.name)

    assert list(metadata.versions) == [str(model.version)]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("left", "FP32", [-1, 3]),
        ("right", "FP32", [-1, 4]),
    ]
    assert [t.name for t in metadata.outputs] == ["first", "second"]


# 4,000 examples make each request larger than the size from which the
# server keeps raw inputs in the received bytes (decode_infer_request).
@pytest.mark.parametrize("batch", [4, 4000])
@pytest.mark.parametrize("style", ["sequential", "functional", "embedding"])
def test_infer_with_raw_inputs_equals_the_model_in_process(
    triton_client: Any, stored: dict[str, Stored], style: str, batch: int
) -> None:
    model = dataclasses.replace(stored[style], inputs=example_inputs(style, batch))
    inputs = [triton_input(name, value) for name, value in model.inputs.items()]

    result = triton_client.infer(model.name, inputs, request_id="r-1")

    response = result.get_response()
    assert response.id == "r-1"
    assert response.model_version == str(model.version)
    for name, value in model.expected().items():
        np.testing.assert_allclose(result.as_numpy(name), value, **TOLERANCE)


def raw_infer_request(
    raw: list[bytes], parameters: dict[str, str]
) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="m", model_version="2", id="q")
    for key, value in parameters.items():
        request.parameters[key].string_param = value
    for index, content in enumerate(raw):
        request.inputs.add(name=f"in{index}", datatype="UINT8", shape=[len(content)])
        request.raw_input_contents.append(content)
    return request


@settings(max_examples=80, deadline=None)
@given(
    raw=st.lists(st.binary(max_size=200), max_size=4),
    parameters=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
)
def test_raw_inputs_stay_in_the_received_bytes_and_the_rest_parses_the_same(
    raw: list[bytes], parameters: dict[str, str]
) -> None:
    request = raw_infer_request(raw, parameters)
    data = request.SerializeToString()

    decoded = decode_infer_request(data, in_place_from=0)

    assert isinstance(decoded, InferRequest)
    assert [bytes(view) for view in decoded.raw_input_contents] == raw
    assert all(view.obj is data for view in decoded.raw_input_contents if view)
    without_raw = service_pb2.ModelInferRequest()
    without_raw.CopyFrom(request)
    del without_raw.raw_input_contents[:]
    assert decoded.message == without_raw


@settings(max_examples=150, deadline=None)
@given(
    raw=st.lists(st.binary(max_size=50), min_size=1, max_size=3),
    position=st.integers(0, 1000),
    byte=st.integers(0, 255),
)
def test_corrupted_infer_requests_fail_or_parse_as_protobuf_does(
    raw: list[bytes], position: int, byte: int
) -> None:
    data = raw_infer_request(raw, {"k": "v"}).SerializeToString()
    both = decoded_both_ways(
        service_pb2.ModelInferRequest.FromString,
        partial(decode_infer_request, in_place_from=0),
        corrupt(data, position, byte),
    )
    if both is None:
        return
    parsed, decoded = both
    if isinstance(decoded, InferRequest):
        contents = [bytes(view) for view in decoded.raw_input_contents]
        message = decoded.message
    else:
        contents, message = list(decoded.raw_input_contents), decoded
    assert contents == list(parsed.raw_input_contents)
    del parsed.raw_input_contents[:]
    del message.raw_input_contents[:]
    assert message == parsed


def test_infer_with_typed_contents_and_chosen_outputs(
    server: Any, stored: dict[str, Stored]
) -> None:
    model = stored["functional"]
    request = service_pb2.ModelInferRequest(
        model_name=model.name, model_version=str(model.version)
    )
    for name, value in model.inputs.items():
        tensor = request.inputs.add(name=name, datatype="FP32", shape=value.shape)
        tensor.contents.fp32_contents.extend(value.ravel().tolist())
    request.outputs.add(name="second")

    with grpc.insecure_channel(server.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request, timeout=60)

    assert [o.name for o in response.outputs] == ["second"]
    assert response.outputs[0].datatype == "FP32"
    got = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(
        response.outputs[0].shape
    )
    np.testing.assert_allclose(got, model.expected()["second"], **TOLERANCE)


def test_infer_errors_reach_the_client_as_its_exception(
    triton_client: Any, stored: dict[str, Stored]
) -> None:
    model = stored["sequential"]
    ints = np.zeros((1, 2, 8), "int32")

    with pytest.raises(InferenceServerException) as unknown:
        triton_client.infer(unique("absent"), [triton_input("x", ints)])
    with pytest.raises(InferenceServerException) as wrong_dtype:
        triton_client.infer(model.name, [triton_input("features", ints)])
    with pytest.raises(InferenceServerException) as bad_version:
        triton_client.infer(model.name, [triton_input("features", ints)], "v1")

    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    assert wrong_dtype.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "expected float32, received int32" in wrong_dtype.value.message()
    assert "model_version" in bad_version.value.message()


def test_classification_outputs_are_refused_not_answered_raw(
    triton_client: Any, stored: dict[str, Stored]
) -> None:
    model = stored["sequential"]
    features = triton_input("features", model.inputs["features"])
    top = triton.InferRequestedOutput("scores", class_count=3)

    with pytest.raises(InferenceServerException) as refused:
        triton_client.infer(model.name, [features], outputs=[top])

    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "outputs[0].parameters[classification]" in refused.value.message()
    assert "classification extension is not supported" in refused.value.message()


def test_raw_contents_of_the_wrong_size_are_refused(
    server: Any, stored: dict[str, Stored]
) -> None:
    model = stored["sequential"]
    request = service_pb2.ModelInferRequest(model_name=model.name)
    request.inputs.add(name="features", datatype="FP32", shape=[1, 2, 8])
    request.raw_input_contents.append(b"\0" * 12)
    refused = {"model": "", "version": "", "protocol": "open_inference",
               "code": "INVALID_ARGUMENT"}  # fmt: skip
    metrics = server.app.metrics.registry
    before = metrics.get_sample_value("kerasrpc_predict_requests_total", refused) or 0

    with grpc.insecure_channel(server.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelInfer(request, timeout=60)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents[0]" in raised.value.details()
    assert "expected 64 bytes" in raised.value.details()
    # Refused before the model resolved: counted, without a model label.
    after = metrics.get_sample_value("kerasrpc_predict_requests_total", refused)
    assert after == before + 1


def test_requests_are_counted_under_the_protocol(
    server: Any, triton_client: Any, stored: dict[str, Stored]
) -> None:
    model = stored["sequential"]
    labels = {"model": model.name, "version": str(model.version),
              "protocol": "open_inference", "code": "OK"}  # fmt: skip
    metrics = server.app.metrics.registry
    before = metrics.get_sample_value("kerasrpc_predict_requests_total", labels) or 0

    triton_client.infer(
        model.name, [triton_input("features", model.inputs["features"])]
    )

    after = metrics.get_sample_value("kerasrpc_predict_requests_total", labels)
    assert after == before + 1


def streamed(
    triton_client: Any, requests: list[tuple[str, dict[str, Any]]]
) -> list[Any]:
    """Send (model name, inputs) requests on one stream; return the answers.

    Each answer is what tritonclient's callback received, in the order it
    arrived: an InferResult, or an InferenceServerException.
    """
    received: queue.Queue[Any] = queue.Queue()
    triton_client.start_stream(
        callback=lambda result, error: received.put(error or result)
    )
    try:
        for index, (name, inputs) in enumerate(requests):
            triton_client.async_stream_infer(
                name,
                [triton_input(key, value) for key, value in inputs.items()],
                request_id=f"r-{index}",
            )
        return [received.get(timeout=60) for _ in requests]
    finally:
        triton_client.stop_stream()


def test_stream_infer_answers_in_order_equal_to_the_model_in_process(
    triton_client: Any, stored: dict[str, Stored]
) -> None:
    # Models alternate and batch sizes vary, up to one decoded in place.
    models = []
    for index, batch in enumerate([1, 3, 4000, 1, 2, 1, 7, 1]):
        style = ("sequential", "functional")[index % 2]
        models.append(
            dataclasses.replace(stored[style], inputs=example_inputs(style, batch))
        )

    answers = streamed(triton_client, [(m.name, m.inputs) for m in models])

    for index, (model, answer) in enumerate(zip(models, answers, strict=True)):
        assert not isinstance(answer, Exception), answer
        response = answer.get_response()
        assert (response.id, response.model_name) == (f"r-{index}", model.name)
        assert response.model_version == str(model.version)
        for name, value in model.expected().items():
            np.testing.assert_allclose(answer.as_numpy(name), value, **TOLERANCE)


def test_stream_infer_failures_answer_their_request_and_the_stream_goes_on(
    triton_client: Any, stored: dict[str, Stored]
) -> None:
    model = stored["sequential"]
    good = {"features": model.inputs["features"]}
    ints = {"features": np.zeros((1, 2, 8), "int32")}
    absent = unique("absent")

    answers = streamed(
        triton_client,
        [(model.name, good), (absent, good), (model.name, ints), (model.name, good)],
    )

    first, unknown, wrong_dtype, last = answers
    assert isinstance(unknown, InferenceServerException)
    assert unknown.message().startswith("NOT_FOUND: ")
    assert absent in unknown.message()
    assert isinstance(wrong_dtype, InferenceServerException)
    assert wrong_dtype.message().startswith("INVALID_ARGUMENT: ")
    assert "expected float32, received int32" in wrong_dtype.message()
    for answer in (first, last):
        for name, value in model.expected().items():
            np.testing.assert_allclose(answer.as_numpy(name), value, **TOLERANCE)


def test_a_failed_stream_request_is_answered_with_its_id(
    channel: grpc.Channel, stored: dict[str, Stored]
) -> None:
    model = stored["sequential"]
    good = service_pb2.ModelInferRequest(model_name=model.name, id="good-1")
    good.inputs.add(name="features", datatype="FP32", shape=[1, 2, 8])
    good.raw_input_contents.append(np.zeros((1, 2, 8), "float32").tobytes())
    bad = service_pb2.ModelInferRequest(model_name=unique("absent"), id="bad-1")
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

    answers = list(stub.ModelStreamInfer(iter([bad, good]), timeout=60))

    assert [a.infer_response.id for a in answers] == ["bad-1", "good-1"]
    assert answers[0].error_message.startswith("NOT_FOUND: ")
    assert not answers[0].infer_response.outputs
    assert answers[1].error_message == ""
    assert [o.name for o in answers[1].infer_response.outputs] == ["scores"]


def test_a_cancelled_infer_stream_leaves_no_threads_behind(
    channel: grpc.Channel, stored: dict[str, Stored]
) -> None:
    model = stored["sequential"]
    request = service_pb2.ModelInferRequest(model_name=model.name)
    request.inputs.add(name="features", datatype="FP32", shape=[1, 2, 8])
    request.raw_input_contents.append(np.zeros((1, 2, 8), "float32").tobytes())

    def endless() -> Any:
        while True:
            yield request

    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    call = stub.ModelStreamInfer(endless(), timeout=60)
    answered = [answer for _, answer in zip(range(5), call, strict=False)]
    call.cancel()

    def stream_threads() -> list[str]:
        return [t.name for t in threading.enumerate() if "infer-stream" in t.name]

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and stream_threads():
        time.sleep(0.1)
    assert [a.error_message for a in answered] == [""] * 5
    assert not stream_threads()


def test_small_batches_of_one_infer_stream_are_merged(
    server: Any, triton_client: Any, tmp_path: Path
) -> None:
    with Client(server.address, timeout=60) as client:
        model = store(client, tmp_path, "sequential")
    metrics = server.app.metrics.registry
    passes = {"model": model.name}
    batch = {"features": example_inputs("sequential", 1)["features"]}

    answers = streamed(triton_client, [(model.name, batch)] * 40)

    assert not [answer for answer in answers if isinstance(answer, Exception)]
    forward_passes = metrics.get_sample_value(
        "kerasrpc_predict_batch_size_count", passes
    )
    assert forward_passes is not None
    assert forward_passes < 40


# TF Serving ----------------------------------------------------------------


def tf_serving(channel: grpc.Channel) -> Any:
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def tf_request(name: str, inputs: dict[str, np.ndarray], version: int = 0) -> Any:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version:
        request.model_spec.version.value = version
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


# 4,000 examples make each request larger than the size from which the
# server keeps tensor_content in the received bytes (decode_predict_request).
@pytest.mark.parametrize("batch", [4, 4000])
@pytest.mark.parametrize("style", ["sequential", "functional", "embedding"])
def test_tf_serving_predict_equals_the_model_in_process(
    channel: grpc.Channel, stored: dict[str, Stored], style: str, batch: int
) -> None:
    import tensorflow as tf

    model = dataclasses.replace(stored[style], inputs=example_inputs(style, batch))

    response = tf_serving(channel).Predict(
        tf_request(model.name, model.inputs, model.version), timeout=60
    )

    assert response.model_spec.version.value == model.version
    assert response.model_spec.signature_name == "serving_default"
    for name, value in model.expected().items():
        got = tf.make_ndarray(response.outputs[name])
        np.testing.assert_allclose(got, value, **TOLERANCE)


def test_tf_serving_predict_reads_typed_values_and_filters_outputs(
    channel: grpc.Channel, stored: dict[str, Stored]
) -> None:
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    model = stored["functional"]
    request = tf_request(model.name, {})
    for key, value in model.inputs.items():
        request.inputs[key].CopyFrom(
            tensor_pb2.TensorProto(
                dtype=types_pb2.DT_FLOAT,
                tensor_shape=tensor_shape_pb2.TensorShapeProto(
                    dim=[{"size": size} for size in value.shape]
                ),
                float_val=value.ravel().tolist(),
            )
        )
    request.output_filter.append("first")

    response = tf_serving(channel).Predict(request, timeout=60)

    assert list(response.outputs) == ["first"]
    got = tf.make_ndarray(response.outputs["first"])
    np.testing.assert_allclose(got, model.expected()["first"], **TOLERANCE)


def test_tf_serving_metadata_describes_the_serving_signature(
    channel: grpc.Channel, stored: dict[str, Stored]
) -> None:
    from tensorflow_serving.apis import get_model_metadata_pb2

    model = stored["functional"]
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = model.name
    request.metadata_field.append("signature_def")

    response = tf_serving(channel).GetModelMetadata(request, timeout=60)

    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    serving = signatures.signature_def["serving_default"]
    assert response.model_spec.version.value == model.version
    assert set(serving.inputs) == {"left", "right"}
    assert set(serving.outputs) == {"first", "second"}
    dims = [d.size for d in serving.inputs["right"].tensor_shape.dim]
    assert dims == [-1, 4]
    assert serving.method_name == "tensorflow/serving/predict"


def test_tf_serving_errors_keep_their_codes(
    channel: grpc.Channel, stored: dict[str, Stored]
) -> None:
    model = stored["sequential"]
    stub = tf_serving(channel)
    other_signature = tf_request(model.name, model.inputs)
    other_signature.model_spec.signature_name = "classify"

    with pytest.raises(grpc.RpcError) as unknown:
        stub.Predict(tf_request(unique("absent"), model.inputs), timeout=60)
    with pytest.raises(grpc.RpcError) as version:
        stub.Predict(tf_request(model.name, model.inputs, 42), timeout=60)
    with pytest.raises(grpc.RpcError) as signature:
        stub.Predict(other_signature, timeout=60)
    with pytest.raises(grpc.RpcError) as strings:
        stub.Predict(tf_request(model.name, {"features": np.array([b"a"])}), timeout=60)

    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert version.value.code() == grpc.StatusCode.NOT_FOUND
    assert signature.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "serving_default" in signature.value.details()
    assert strings.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[features]" in strings.value.details()


def model_status(channel: grpc.Channel, name: str, version: int = 0) -> list[Any]:
    """Ask TF Serving's ModelService; return (version, state, code, message)s."""
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    if version:
        request.model_spec.version.value = version
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    response = stub.GetModelStatus(request, timeout=60)
    return [
        (s.version, s.state, s.status.error_code, s.status.error_message)
        for s in response.model_version_status
    ]


def test_tf_serving_model_status_reports_versions_and_why_one_cannot_load(
    start_server: Any, tmp_path: Path
) -> None:
    from tensorflow_serving.apis import (
        get_model_status_pb2,
        model_management_pb2,
        model_service_pb2_grpc,
    )

    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    ended = get_model_status_pb2.ModelVersionStatus.END
    state = tmp_path / "state"
    first = start_server(state)
    with Client(first.address, timeout=60) as client:
        model = store(client, tmp_path, "sequential")
        store(client, tmp_path, "sequential", name=model.name)
    first.stop(grace=1.0)
    # A zip that Keras refuses: found out when version 2 is first loaded.
    with zipfile.ZipFile(state / "models" / model.name / "2" / "model.keras", "w") as z:
        z.writestr("config.json", '{"class_name": "Nothing"}')

    second = start_server(state)
    with grpc.insecure_channel(second.address) as channel:
        before = model_status(channel, model.name)
        one = model_status(channel, model.name, 1)
        broken = model_status(channel, model.name, 2)
        after = model_status(channel, model.name)
        with pytest.raises(grpc.RpcError) as unknown_model:
            model_status(channel, unique("absent"))
        with pytest.raises(grpc.RpcError) as unknown_version:
            model_status(channel, model.name, 9)
        with pytest.raises(grpc.RpcError) as reload:
            model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                model_management_pb2.ReloadConfigRequest(),
                timeout=30,
            )

    assert before == [(1, available, 0, ""), (2, available, 0, "")]
    assert one == [(1, available, 0, "")]
    [(number, status, code, message)] = broken
    assert (number, status, code) == (
        2,
        ended,
        grpc.StatusCode.FAILED_PRECONDITION.value[0],
    )
    assert f"version 2 of model {model.name!r} cannot be loaded" in message
    # Once found out, the registry knows why, and reports it unasked.
    assert after[0] == (1, available, 0, "")
    assert after[1][:3] == (2, ended, code)
    assert after[1][3]
    assert after[1][3] in message
    assert unknown_model.value.code() == grpc.StatusCode.NOT_FOUND
    assert unknown_version.value.code() == grpc.StatusCode.NOT_FOUND
    assert reload.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_health_and_reflection_include_the_compatible_services(
    channel: grpc.Channel,
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    names = (
        "inference.GRPCInferenceService",
        "tensorflow.serving.PredictionService",
        "tensorflow.serving.ModelService",
    )
    health = health_pb2_grpc.HealthStub(channel)
    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())

    for name in names:
        status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        assert name in services


def test_unknown_models_in_open_inference_metadata_are_not_found(
    triton_client: Any,
) -> None:
    with pytest.raises(InferenceServerException) as raised:
        triton_client.get_model_metadata(unique("absent"))

    assert raised.value.status() == "StatusCode.NOT_FOUND"


def test_open_inference_shapes_beyond_any_message_are_refused(
    server: Any, stored: dict[str, Stored]
) -> None:
    model = stored["sequential"]
    request = service_pb2.ModelInferRequest(model_name=model.name)
    request.inputs.add(name="features", datatype="FP32", shape=[2**32, 2**32, 8])
    request.raw_input_contents.append(b"")

    with grpc.insecure_channel(server.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelInfer(request, timeout=60)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents[0]" in raised.value.details()


def test_tf_serving_one_value_for_a_huge_shape_is_refused_before_expanding(
    channel: grpc.Channel, stored: dict[str, Stored]
) -> None:
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    model = stored["sequential"]
    request = tf_request(model.name, {})
    request.inputs["features"].CopyFrom(
        tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[
                    tensor_shape_pb2.TensorShapeProto.Dim(size=size)
                    for size in (2**20, 2**20, 8)
                ]
            ),
            float_val=[1.0],
        )
    )

    with pytest.raises(grpc.RpcError) as raised:
        tf_serving(channel).Predict(request, timeout=60)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[features]" in raised.value.details()
    assert "bytes once decoded" in raised.value.details()


def test_open_inference_typed_values_out_of_the_datatype_range_are_refused(
    channel: grpc.Channel, stored: dict[str, Stored]
) -> None:
    model = stored["embedding"]
    request = service_pb2.ModelInferRequest(model_name=model.name)
    tensor = request.inputs.add(name="tokens", datatype="INT8", shape=[1, 2])
    tensor.contents.int_contents.extend([5, 300])

    with pytest.raises(grpc.RpcError) as raised:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            request, timeout=60
        )

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[0].contents" in raised.value.details()
    assert "expected values in [-128, 127] for INT8, received 300" in (
        raised.value.details()
    )


def test_open_inference_non_ascii_digit_versions_are_refused(
    channel: grpc.Channel, stored: dict[str, Stored]
) -> None:
    model = stored["sequential"]
    request = service_pb2.ModelInferRequest(
        model_name=model.name, model_version="\N{SUPERSCRIPT TWO}"
    )
    request.inputs.add(name="features", datatype="FP32", shape=[1, 2, 8])
    request.raw_input_contents.append(b"\0" * 64)

    with pytest.raises(grpc.RpcError) as raised:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            request, timeout=60
        )

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model_version" in raised.value.details()


def tf_serving_request(
    contents: dict[str, bytes], typed: dict[str, list[float]], filters: list[str]
) -> Any:
    from tensorflow.core.framework import tensor_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest(output_filter=filters)
    request.model_spec.name = "m"
    request.model_spec.version.value = 3
    for name, content in contents.items():
        request.inputs[name].CopyFrom(
            tensor_pb2.TensorProto(dtype=types_pb2.DT_UINT8, tensor_content=content)
        )
        request.inputs[name].tensor_shape.dim.add(size=len(content))
    for name, values in typed.items():
        request.inputs[name].CopyFrom(
            tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=values)
        )
    return request


names = st.text(max_size=8)


@settings(max_examples=80, deadline=None)
@given(
    contents=st.dictionaries(names, st.binary(max_size=100), max_size=3),
    typed=st.dictionaries(names, st.lists(st.floats(width=32), max_size=4), max_size=2),
    filters=st.lists(names, max_size=2),
)
def test_tf_serving_contents_stay_in_the_received_bytes_and_the_rest_parses_the_same(
    contents: dict[str, bytes], typed: dict[str, list[float]], filters: list[str]
) -> None:
    from kerasrpc.service.compat.tf_serving import (
        SplitPredictRequest,
        decode_predict_request,
    )

    request = tf_serving_request(contents, typed, filters)
    data = request.SerializeToString()

    decoded = decode_predict_request(data, in_place_from=0)

    assert isinstance(decoded, SplitPredictRequest)
    expected_contents = {
        name: tensor.tensor_content
        for name, tensor in request.inputs.items()
        if tensor.tensor_content
    }
    got = {name: bytes(view) for name, view in decoded.tensor_contents.items() if view}
    assert got == expected_contents
    for name in request.inputs:
        request.inputs[name].ClearField("tensor_content")
    assert decoded.message == request


@settings(max_examples=150, deadline=None)
@given(
    contents=st.dictionaries(names, st.binary(max_size=40), min_size=1, max_size=3),
    position=st.integers(0, 1000),
    byte=st.integers(0, 255),
)
def test_corrupted_tf_serving_requests_fail_or_parse_as_protobuf_does(
    contents: dict[str, bytes], position: int, byte: int
) -> None:
    from kerasrpc.service.compat.tf_serving import (
        SplitPredictRequest,
        decode_predict_request,
    )
    from tensorflow_serving.apis import predict_pb2

    data = tf_serving_request(contents, {}, ["o"]).SerializeToString()
    both = decoded_both_ways(
        predict_pb2.PredictRequest.FromString,
        partial(decode_predict_request, in_place_from=0),
        corrupt(data, position, byte),
    )
    if both is None:
        return
    parsed, decoded = both
    if isinstance(decoded, SplitPredictRequest):
        for name, view in decoded.tensor_contents.items():
            decoded.message.inputs[name].tensor_content = bytes(view)
        decoded = decoded.message
    assert decoded == parsed
