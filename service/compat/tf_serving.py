"""TensorFlow Serving's PredictionService and ModelService, for their clients."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import numpy.typing as npt
import tensorflow as tf
from google.protobuf import any_pb2
from kerasrpc.client import codec
from kerasrpc.client.tensors import numpy_dtype
from kerasrpc.service.errors import FailedPrecondition, FieldViolation, InvalidArgument
from kerasrpc.service.inference.limits import check_response_size
from kerasrpc.service.servicers.inference import caller_limits
from kerasrpc.v1 import tensor_pb2
from tensorflow.core.framework import tensor_pb2 as tf_tensor_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

if TYPE_CHECKING:
    from kerasrpc.service.server import Application

Array = npt.NDArray[Any]
INPUTS, TENSOR_CONTENT = 2, 4  # PredictRequest.inputs, TensorProto.tensor_content
PROTOCOL = "tf_serving"
SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
SIGNATURE_DEF_FIELD = "signature_def"


class TfServingServicer(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    """Serve tensorflow.serving.PredictionService from the model registry.

    Each version has one signature, "serving_default", whose inputs and
    outputs are the model's. Classify, Regress and MultiInference answer
    UNIMPLEMENTED.
    """

    def __init__(self, app: Application) -> None:
        self._app = app

    def Predict(  # noqa: N802 - the protocol's method names
        self,
        received: predict_pb2.PredictRequest | SplitPredictRequest,
        context: grpc.ServicerContext,
    ) -> codec.Encoded:
        """Predict one batch of TensorProto inputs."""
        if isinstance(received, SplitPredictRequest):
            request, contents = received.message, received.tensor_contents
        else:
            request, contents = received, {}
        with self._app.inference.counting_refusals(PROTOCOL):
            model_name, version = model_target(request.model_spec)
            inputs = decode_inputs(
                request.inputs, self._app.settings.max_message_bytes, contents
            )
        deadline, cancelled = caller_limits(context)
        prediction = self._app.inference.predict(
            model_name,
            version,
            inputs,
            output_names=list(request.output_filter),
            deadline=deadline,
            protocol=PROTOCOL,
            cancelled=cancelled,
        )
        check_response_size(
            prediction.outputs.values(), self._app.settings.max_message_bytes
        )
        return _predict_response(
            _answered_spec(model_name, prediction.version), prediction.outputs
        )

    def GetModelMetadata(  # noqa: N802
        self,
        request: get_model_metadata_pb2.GetModelMetadataRequest,
        context: grpc.ServicerContext,
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """Describe a version's serving_default signature."""
        model_name, version = model_target(request.model_spec)
        fields = list(request.metadata_field)
        if fields != [SIGNATURE_DEF_FIELD]:
            raise InvalidArgument.field(
                "metadata_field",
                f"expected [{SIGNATURE_DEF_FIELD!r}], received {fields}",
            )
        number, inputs, outputs = self._app.registry.signature(model_name, version)
        packed = any_pb2.Any()
        packed.Pack(
            get_model_metadata_pb2.SignatureDefMap(
                signature_def={SIGNATURE: _signature_def(inputs, outputs)}
            )
        )
        return get_model_metadata_pb2.GetModelMetadataResponse(
            model_spec=_answered_spec(model_name, number),
            metadata={SIGNATURE_DEF_FIELD: packed},
        )


class TfServingModelServicer(model_service_pb2_grpc.ModelServiceServicer):  # type: ignore[misc]
    """Serve tensorflow.serving.ModelService's GetModelStatus from the registry.

    Every stored version is servable: it loads on first use.
    HandleReloadConfigRequest answers UNIMPLEMENTED, since versions come and
    go through ModelService's API, not a config file.
    """

    def __init__(self, app: Application) -> None:
        self._app = app

    def GetModelStatus(  # noqa: N802
        self,
        request: get_model_status_pb2.GetModelStatusRequest,
        context: grpc.ServicerContext,
    ) -> get_model_status_pb2.GetModelStatusResponse:
        """Report one version's state, loading it, or every version's.

        A version is AVAILABLE, or END with the reason it cannot be loaded.
        Asked for all versions, it reports what the registry knows without
        loading them; asked for one, it loads and compiles it first, like
        Open Inference's ModelReady.
        """
        model_name, version = model_target(request.model_spec)
        if version:
            try:
                self._app.inference.warm(model_name, version)
            except FailedPrecondition as error:
                return _statuses((version, error.message))
            return _statuses((version, ""))
        model = self._app.registry.get_model(model_name)
        return _statuses(*((v.version, v.load_error) for v in model.versions))


def _statuses(
    *versions: tuple[int, str],
) -> get_model_status_pb2.GetModelStatusResponse:
    """Describe (version, load error) pairs: AVAILABLE, or END with the error."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for number, error in versions:
        status = response.model_version_status.add(version=number)
        if error:
            status.state = get_model_status_pb2.ModelVersionStatus.END
            status.status.error_code = grpc.StatusCode.FAILED_PRECONDITION.value[0]
            status.status.error_message = error
        else:
            status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    return response


def model_target(spec: model_pb2.ModelSpec) -> tuple[str, int]:
    """Return the model name and version (0: the latest) a ModelSpec names.

    Raises:
        InvalidArgument: no name, a version label, or another signature.
    """
    violations = []
    if not spec.name:
        violations.append(FieldViolation("model_spec.name", "required"))
    if spec.version_label:
        violations.append(
            FieldViolation(
                "model_spec.version_label",
                "version labels are not supported; set model_spec.version",
            )
        )
    if spec.signature_name not in ("", SIGNATURE):
        violations.append(
            FieldViolation(
                "model_spec.signature_name",
                f"expected {SIGNATURE!r}, received {spec.signature_name!r}",
            )
        )
    if violations:
        raise InvalidArgument.fields(violations)
    version = spec.version.value if spec.HasField("version") else 0
    return spec.name, version


@dataclass
class SplitPredictRequest:
    """A PredictRequest whose inputs' tensor_content was taken out before parsing."""

    message: predict_pb2.PredictRequest
    tensor_contents: dict[str, memoryview]


def decode_predict_request(
    data: bytes, in_place_from: int = codec.DECODE_IN_PLACE_BYTES
) -> predict_pb2.PredictRequest | SplitPredictRequest:
    """Deserialize a PredictRequest; a large one's tensor_content as views of `data`.

    Protobuf parses everything but the inputs' tensor_content, which stays in
    the received bytes instead of being copied into the message.

    Raises:
        DecodeError: `data` is not a PredictRequest.
    """
    if len(data) >= in_place_from:
        split = codec.take_map_contents(data, INPUTS, TENSOR_CONTENT)
        if split is not None:
            rest, contents = split
            message = predict_pb2.PredictRequest.FromString(rest)
            return SplitPredictRequest(message, contents)
    return predict_pb2.PredictRequest.FromString(data)


def decode_inputs(
    inputs: Mapping[str, tf_tensor_pb2.TensorProto],
    max_bytes: int,
    contents: Mapping[str, memoryview] | None = None,
) -> dict[str, Array]:
    """Decode TensorProto inputs into arrays by name.

    Args:
        inputs: the request's tensors by name.
        max_bytes: the message size limit; a tensor whose decoded size
            exceeds twice this (the most a message of that size can hold)
            is refused before anything is allocated.
        contents: tensor_content taken out of the inputs, by input name.

    Raises:
        InvalidArgument: naming each input that is not a numeric tensor, or
            that is larger than a message can carry.
    """
    arrays: dict[str, Array] = {}
    violations: list[FieldViolation] = []
    for name, proto in inputs.items():
        try:
            taken = (contents or {}).get(name)
            arrays[name] = _to_array(proto, max_bytes, taken)
        except (TypeError, ValueError) as error:
            violations.append(FieldViolation(f"inputs[{name}]", str(error)))
    if violations:
        raise InvalidArgument.fields(violations)
    return arrays


def _to_array(
    proto: tf_tensor_pb2.TensorProto,
    max_bytes: int,
    taken_content: memoryview | None = None,
) -> Array:
    """Decode one TensorProto; tensor_content taken out of it is read in place."""
    dtype = tf.dtypes.as_dtype(proto.dtype)
    if dtype == tf.string or dtype.is_quantized or dtype.is_complex:
        raise ValueError(f"expected a numeric dtype, received {dtype.name}")
    shape = [int(dim.size) for dim in proto.tensor_shape.dim]
    if any(size < 0 for size in shape):
        raise ValueError(f"expected sizes >= 0, received {shape}")
    numpy_type = np.dtype(dtype.as_numpy_dtype)
    expected = math.prod(shape) * numpy_type.itemsize
    if expected > 2 * max_bytes:
        # Typed values may hold one value for the whole shape, which
        # make_ndarray would expand: refuse before allocating it.
        raise ValueError(
            f"expected at most {2 * max_bytes} bytes once decoded, received "
            f"shape {shape} of {dtype.name} ({expected} bytes)"
        )
    # Reading a message's bytes field copies it; taken content is a view.
    content = proto.tensor_content if taken_content is None else taken_content
    if not content:
        return np.asarray(tf.make_ndarray(proto))
    if len(content) != expected:
        raise ValueError(
            f"expected {expected} bytes of tensor_content for {dtype.name} and "
            f"shape {shape}, received {len(content)}"
        )
    return np.frombuffer(content, dtype=numpy_type).reshape(shape)


def _predict_response(
    spec: model_pb2.ModelSpec, outputs: Mapping[str, Array]
) -> codec.Encoded:
    """Encode a PredictResponse with each output in tensor_content, copied once."""
    parts: list[codec.Part] = [
        predict_pb2.PredictResponse(model_spec=spec).SerializeToString()
    ]
    for name, array in outputs.items():
        values, content = codec.raw_bytes(array)
        head = tf_tensor_pb2.TensorProto(
            dtype=tf.as_dtype(values.dtype).as_datatype_enum,
            tensor_shape=tf.TensorShape(values.shape).as_proto(),
        ).SerializeToString()
        # TensorProto.tensor_content is field 4; PredictResponse.outputs field 1.
        parts += codec.map_entry(1, name, codec.with_content(head, 4, content)).parts
    return codec.Encoded(parts)


def _answered_spec(model_name: str, version: int) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=model_name, signature_name=SIGNATURE)
    spec.version.value = version
    return spec


def _signature_def(
    inputs: list[tensor_pb2.TensorSpec], outputs: list[tensor_pb2.TensorSpec]
) -> meta_graph_pb2.SignatureDef:
    return meta_graph_pb2.SignatureDef(
        inputs={spec.name: _tensor_info(spec) for spec in inputs},
        outputs={spec.name: _tensor_info(spec) for spec in outputs},
        method_name=PREDICT_METHOD,
    )


def _tensor_info(spec: tensor_pb2.TensorSpec) -> meta_graph_pb2.TensorInfo:
    dtype = tf.as_dtype(numpy_dtype(spec.dtype))
    shape = tf.TensorShape([None if size < 0 else size for size in spec.shape])
    return meta_graph_pb2.TensorInfo(
        name=f"{spec.name}:0",
        dtype=dtype.as_datatype_enum,
        tensor_shape=shape.as_proto(),
    )
