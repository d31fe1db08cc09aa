"""The Open Inference Protocol (KServe v2) over gRPC, for its existing clients."""

from __future__ import annotations

import importlib.metadata
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import numpy.typing as npt
from kerasrpc.client import codec
from kerasrpc.client.tensors import data_type, numpy_dtype
from kerasrpc.service.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ServiceError,
    status_code,
)
from kerasrpc.service.inference.limits import check_response_size
from kerasrpc.service.servicers.inference import STREAM_IN_FLIGHT, caller_limits
from kerasrpc.service.servicers.ordered import answer_in_order
from kerasrpc.v1 import tensor_pb2
from tritonclient.grpc import service_pb2, service_pb2_grpc

if TYPE_CHECKING:
    from kerasrpc.service.server import Application

logger = logging.getLogger("kerasrpc.service.compat")

Array = npt.NDArray[Any]
PROTOCOL = "open_inference"
RAW_INPUT_CONTENTS = 7  # ModelInferRequest's field number
STREAM_INFER_RESPONSE = 2  # ModelStreamInferResponse's field number
PLATFORM = "keras"

# The protocol's datatype names and the tensor dtypes they stand for.
DATATYPES: dict[str, int] = {
    "BOOL": tensor_pb2.DATA_TYPE_BOOL,
    "INT8": tensor_pb2.DATA_TYPE_INT8,
    "INT16": tensor_pb2.DATA_TYPE_INT16,
    "INT32": tensor_pb2.DATA_TYPE_INT32,
    "INT64": tensor_pb2.DATA_TYPE_INT64,
    "UINT8": tensor_pb2.DATA_TYPE_UINT8,
    "UINT16": tensor_pb2.DATA_TYPE_UINT16,
    "UINT32": tensor_pb2.DATA_TYPE_UINT32,
    "UINT64": tensor_pb2.DATA_TYPE_UINT64,
    "FP16": tensor_pb2.DATA_TYPE_FLOAT16,
    "BF16": tensor_pb2.DATA_TYPE_BFLOAT16,
    "FP32": tensor_pb2.DATA_TYPE_FLOAT32,
    "FP64": tensor_pb2.DATA_TYPE_FLOAT64,
}
_NAMES = {value: name for name, value in DATATYPES.items()}

# Which InferTensorContents field carries each datatype's typed values.
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


class OpenInferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Serve inference.GRPCInferenceService from the model registry.

    Health, metadata and inference, unary and streaming, are served;
    repository control, shared memory, statistics, tracing and log settings
    answer UNIMPLEMENTED.
    """

    # TODO: shared-memory inputs and outputs and the classification extension
    # are not served; clients that rely on them get INVALID_ARGUMENT and must
    # send and receive their tensors in the messages.

    def __init__(self, app: Application) -> None:
        self._app = app

    def ServerLive(  # noqa: N802 - the protocol's method names
        self, request: service_pb2.ServerLiveRequest, context: grpc.ServicerContext
    ) -> service_pb2.ServerLiveResponse:
        """Answer that the server is live."""
        return service_pb2.ServerLiveResponse(live=True)

    def ServerReady(  # noqa: N802
        self, request: service_pb2.ServerReadyRequest, context: grpc.ServicerContext
    ) -> service_pb2.ServerReadyResponse:
        """Answer that the server is ready for requests."""
        return service_pb2.ServerReadyResponse(ready=True)

    def ModelReady(  # noqa: N802
        self, request: service_pb2.ModelReadyRequest, context: grpc.ServicerContext
    ) -> service_pb2.ModelReadyResponse:
        """Answer whether a version can serve now, loading and compiling it."""
        version = parse_version(request.version, "version")
        try:
            self._app.inference.warm(request.name, version)
        except (NotFound, FailedPrecondition) as error:
            logger.debug("model %s not ready: %s", request.name, error.message)
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=True)

    def ServerMetadata(  # noqa: N802
        self,
        request: service_pb2.ServerMetadataRequest,
        context: grpc.ServicerContext,
    ) -> service_pb2.ServerMetadataResponse:
        """Name the server and its version; it supports no extensions."""
        return service_pb2.ServerMetadataResponse(
            name="kerasrpc", version=_package_version(), extensions=[]
        )

    def ModelMetadata(  # noqa: N802
        self,
        request: service_pb2.ModelMetadataRequest,
        context: grpc.ServicerContext,
    ) -> service_pb2.ModelMetadataResponse:
        """Describe a version's inputs and outputs, and list the model's versions."""
        version = parse_version(request.version, "version")
        registry = self._app.registry
        _, inputs, outputs = registry.signature(request.name, version)
        model = registry.get_model(request.name)
        return service_pb2.ModelMetadataResponse(
            name=request.name,
            versions=[str(v.version) for v in model.versions],
            platform=PLATFORM,
            inputs=[_metadata(spec) for spec in inputs],
            outputs=[_metadata(spec) for spec in outputs],
        )

    def ModelInfer(  # noqa: N802
        self,
        received: service_pb2.ModelInferRequest | InferRequest,
        context: grpc.ServicerContext,
    ) -> codec.Encoded:
        """Predict one batch and return the outputs as raw bytes."""
        request, raw = _parts(received)
        with self._app.inference.counting_refusals(PROTOCOL):
            if not request.model_name:
                raise InvalidArgument.field("model_name", "required")
            version = parse_version(request.model_version, "model_version")
            _check_requested_outputs(request.outputs)
            inputs = decode_inputs(request, raw)
        deadline, cancelled = caller_limits(context)
        prediction = self._app.inference.predict(
            request.model_name,
            version,
            inputs,
            output_names=[output.name for output in request.outputs],
            deadline=deadline,
            protocol=PROTOCOL,
            cancelled=cancelled,
        )
        check_response_size(
            prediction.outputs.values(), self._app.settings.max_message_bytes
        )
        return _infer_response(request, prediction.version, prediction.outputs)

    def ModelStreamInfer(  # noqa: N802
        self,
        requests: Iterator[service_pb2.ModelInferRequest | InferRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[codec.Encoded]:
        """Answer a stream of inference requests in order.

        Up to STREAM_IN_FLIGHT requests are computed at once, so a stream's
        small batches merge. A request that fails gets an answer carrying
        its error_message and, in infer_response, only its id; the stream
        goes on, as the protocol's clients expect.
        """

        def start(
            request: service_pb2.ModelInferRequest | InferRequest, index: int
        ) -> Callable[[], codec.Encoded]:
            return partial(self._stream_answer, request, context)

        return answer_in_order(
            requests, start, in_flight=STREAM_IN_FLIGHT, name="kerasrpc-infer-stream"
        )

    def _stream_answer(
        self,
        request: service_pb2.ModelInferRequest | InferRequest,
        context: grpc.ServicerContext,
    ) -> codec.Encoded:
        try:
            answer = self.ModelInfer(request, context)
        except ServiceError as error:
            text = f"{status_code(error).name}: {error.message}"
            failed = service_pb2.ModelStreamInferResponse(error_message=text)
            # The id tells a client which of its requests failed.
            failed.infer_response.id = _parts(request)[0].id
            return codec.Encoded([failed.SerializeToString()])
        return answer.nested(STREAM_INFER_RESPONSE)


# Output parameters that ask for what the service does not do; others, such
# as binary_data, only shape how an answer travels and change nothing here.
_UNSERVED_OUTPUT_PARAMETERS = {
    "classification": "the classification extension is not supported",
    "shared_memory_region": "shared-memory outputs are not supported",
}


def _check_requested_outputs(
    outputs: Sequence[service_pb2.ModelInferRequest.InferRequestedOutputTensor],
) -> None:
    """Refuse requested outputs that need what the service does not serve."""
    violations = [
        FieldViolation(f"outputs[{i}].parameters[{key}]", reason)
        for i, output in enumerate(outputs)
        for key, reason in _UNSERVED_OUTPUT_PARAMETERS.items()
        if key in output.parameters
    ]
    if violations:
        raise InvalidArgument.fields(violations)


def parse_version(text: str, field: str) -> int:
    """Parse a protocol version string; "" means the latest (0)."""
    if not text:
        return 0
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise InvalidArgument.field(
            field, f"expected a version number >= 1 or empty, received {text!r}"
        )
    return int(text)


@dataclass
class InferRequest:
    """A ModelInferRequest whose raw inputs were taken out before parsing."""

    message: service_pb2.ModelInferRequest
    raw_input_contents: list[memoryview]


def _parts(
    received: service_pb2.ModelInferRequest | InferRequest,
) -> tuple[service_pb2.ModelInferRequest, list[bytes] | list[memoryview]]:
    """Return a request's message and its raw inputs, wherever they were kept."""
    if isinstance(received, InferRequest):
        return received.message, received.raw_input_contents
    return received, list(received.raw_input_contents)


def decode_infer_request(
    data: bytes, in_place_from: int = codec.DECODE_IN_PLACE_BYTES
) -> service_pb2.ModelInferRequest | InferRequest:
    """Deserialize a ModelInferRequest; a large one's raw inputs as views of `data`.

    Protobuf parses everything but raw_input_contents (field 7), which stays
    in the received bytes instead of being copied into the message.

    Raises:
        DecodeError: `data` is not a ModelInferRequest.
    """
    if len(data) >= in_place_from:
        split = codec.split_bytes_field(data, RAW_INPUT_CONTENTS)
        if split is not None:
            rest, raw = split
            return InferRequest(service_pb2.ModelInferRequest.FromString(rest), raw)
    return service_pb2.ModelInferRequest.FromString(data)


def decode_inputs(
    request: service_pb2.ModelInferRequest,
    raw: Sequence[bytes | memoryview] | None = None,
) -> dict[str, Array]:
    """Decode the request's inputs, raw or typed, into arrays by name.

    Args:
        request: the request.
        raw: its raw_input_contents, when they were taken out of it.

    Raises:
        InvalidArgument: naming the input at fault.
    """
    raw = list(request.raw_input_contents) if raw is None else list(raw)
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument.field(
            "raw_input_contents",
            f"expected one entry per input ({len(request.inputs)}), "
            f"received {len(raw)}",
        )
    arrays: dict[str, Array] = {}
    violations: list[FieldViolation] = []
    for index, tensor in enumerate(request.inputs):
        try:
            arrays[tensor.name] = _decode(tensor, raw[index] if raw else None, index)
        except InvalidArgument as error:
            violations += error.violations
    if violations:
        raise InvalidArgument.fields(violations)
    return arrays


def _decode(
    tensor: service_pb2.ModelInferRequest.InferInputTensor,
    raw: bytes | memoryview | None,
    index: int,
) -> Array:
    where = f"inputs[{index}]"
    if "shared_memory_region" in tensor.parameters:
        raise InvalidArgument.field(
            f"{where}.parameters", "shared-memory inputs are not supported"
        )
    dtype = _dtype(tensor.datatype, f"{where}.datatype")
    shape = tuple(int(size) for size in tensor.shape)
    if any(size < 0 for size in shape):
        raise InvalidArgument.field(
            f"{where}.shape", f"expected sizes >= 0, received {list(shape)}"
        )
    count = math.prod(shape)
    if raw is not None:
        return _from_raw(raw, dtype, shape, count, f"raw_input_contents[{index}]")
    return _from_contents(tensor, dtype, shape, count, f"{where}.contents")


def _dtype(datatype: str, field: str) -> np.dtype[Any]:
    if datatype not in DATATYPES:
        raise InvalidArgument.field(
            field, f"expected one of {', '.join(DATATYPES)}, received {datatype!r}"
        )
    return numpy_dtype(DATATYPES[datatype])


def _from_raw(
    raw: bytes | memoryview,
    dtype: np.dtype[Any],
    shape: tuple[int, ...],
    count: int,
    field: str,
) -> Array:
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidArgument.field(
            field,
            f"expected {expected} bytes for {dtype.name} and shape {list(shape)}, "
            f"received {len(raw)}",
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _from_contents(
    tensor: service_pb2.ModelInferRequest.InferInputTensor,
    dtype: np.dtype[Any],
    shape: tuple[int, ...],
    count: int,
    field: str,
) -> Array:
    name = _CONTENTS.get(tensor.datatype)
    if name is None:
        raise InvalidArgument.field(
            field, f"{tensor.datatype} travels in raw_input_contents only"
        )
    values = getattr(tensor.contents, name)
    if len(values) != count:
        raise InvalidArgument.field(
            f"{field}.{name}",
            f"expected {count} values for shape {list(shape)}, received {len(values)}",
        )
    _check_range(values, dtype, tensor.datatype, f"{field}.{name}")
    array = np.array(values, dtype=dtype)
    return array.reshape(shape)


def _check_range(
    values: Sequence[Any], dtype: np.dtype[Any], datatype: str, field: str
) -> None:
    if dtype.kind not in "iu" or not values:
        return
    limits = np.iinfo(dtype)
    low, high = min(values), max(values)
    if low < limits.min or high > limits.max:
        raise InvalidArgument.field(
            field,
            f"expected values in [{limits.min}, {limits.max}] for {datatype}, "
            f"received {low if low < limits.min else high}",
        )


def _metadata(
    spec: tensor_pb2.TensorSpec,
) -> service_pb2.ModelMetadataResponse.TensorMetadata:
    return service_pb2.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=_NAMES.get(spec.dtype, ""), shape=list(spec.shape)
    )


def _infer_response(
    request: service_pb2.ModelInferRequest, version: int, outputs: dict[str, Array]
) -> codec.Encoded:
    """Encode a ModelInferResponse, copying each output's bytes once."""
    names: Sequence[str] = list(outputs)
    contents = [codec.raw_bytes(outputs[name])[1] for name in names]
    head = service_pb2.ModelInferResponse(
        model_name=request.model_name,
        model_version=str(version),
        id=request.id,
        outputs=[
            service_pb2.ModelInferResponse.InferOutputTensor(
                name=name,
                datatype=_datatype_name(outputs[name]),
                shape=list(outputs[name].shape),
            )
            for name in names
        ],
    ).SerializeToString()
    # raw_output_contents (field 6) is appended, one entry per output in order.
    return codec.Encoded(
        [
            head,
            *(
                part
                for raw in contents
                for part in codec.with_content(b"", 6, raw).parts
            ),
        ]
    )


def _datatype_name(array: Array) -> str:
    return _NAMES[data_type(array.dtype)]


def _package_version() -> str:
    try:
        return importlib.metadata.version("kerasrpc")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
