"""InferenceService: batch predictions."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING

import grpc
from kerasrpc.client import codec
from kerasrpc.client.tensors import to_array
from kerasrpc.service.errors import FieldViolation, InvalidArgument
from kerasrpc.service.inference import Prediction
from kerasrpc.service.inference.limits import check_response_size, deadline_of
from kerasrpc.service.servicers.ordered import answer_in_order
from kerasrpc.v1 import inference_service_pb2

if TYPE_CHECKING:
    from kerasrpc.service.server import Application

PROTOCOL = "kerasrpc"
# Messages of one PredictStream computed at once.
STREAM_IN_FLIGHT = 4
# Large requests arrive decoded in place (see codec.decode_predict_request).
Request = inference_service_pb2.PredictRequest | codec.PredictRequestView


class InferenceServicer:
    """Serve kerasrpc.v1.InferenceService, answering with encoded responses."""

    def __init__(self, app: Application) -> None:
        self._app = app

    def Predict(  # noqa: N802 - the gRPC method name
        self,
        request: Request,
        context: grpc.ServicerContext,
    ) -> codec.Encoded:
        """Predict one batch."""
        with self._app.inference.counting_refusals(PROTOCOL):
            if not request.model_name:
                raise InvalidArgument.field("model_name", "required")
        prediction = self._predict(
            request, request.model_name, request.version, context
        )
        return self._response(prediction)

    def PredictStream(  # noqa: N802
        self,
        request_iterator: Iterator[
            inference_service_pb2.PredictStreamRequest | codec.PredictStreamRequestView
        ],
        context: grpc.ServicerContext,
    ) -> Iterator[codec.Encoded]:
        """Predict a stream of batches, answering each in order.

        Up to STREAM_IN_FLIGHT messages are computed at once (see
        answer_in_order). The first message names the model; its version,
        "the latest" resolved once, answers the messages that name none.
        """
        first: tuple[str, int] | None = None

        def start(
            message: inference_service_pb2.PredictStreamRequest
            | codec.PredictStreamRequestView,
            index: int,
        ) -> Callable[[], codec.Encoded]:
            nonlocal first
            request = message.request
            with self._app.inference.counting_refusals(PROTOCOL):
                model_name, version = _stream_target(request, first, index)
            if first is None:
                version = self._app.inference.warm(model_name, version)
                first = (model_name, version)
            return partial(self._answer, request, model_name, version, context, index)

        return answer_in_order(
            request_iterator, start, in_flight=STREAM_IN_FLIGHT, name="kerasrpc-stream"
        )

    def _answer(
        self,
        request: Request,
        model_name: str,
        version: int,
        context: grpc.ServicerContext,
        index: int,
    ) -> codec.Encoded:
        """Predict one stream message; name the message in input errors."""
        try:
            prediction = self._predict(request, model_name, version, context)
        except InvalidArgument as error:
            raise _in_stream(error, index) from None
        # PredictStreamResponse holds the PredictResponse as its field 1.
        return self._response(prediction).nested(1)

    def _predict(
        self,
        request: Request,
        model_name: str,
        version: int,
        context: grpc.ServicerContext,
    ) -> Prediction:
        with self._app.inference.counting_refusals(PROTOCOL):
            inputs = {
                name: to_array(tensor, f"inputs[{name}]")
                for name, tensor in request.inputs.items()
            }
        deadline, cancelled = caller_limits(context)
        return self._app.inference.predict(
            model_name,
            version,
            inputs,
            output_names=list(request.output_names),
            deadline=deadline,
            cancelled=cancelled,
        )

    def _response(self, prediction: Prediction) -> codec.Encoded:
        """Encode a PredictResponse, copying each output's bytes once."""
        outputs = prediction.outputs
        check_response_size(outputs.values(), self._app.settings.max_message_bytes)
        return codec.predict_response(
            prediction.model_name, prediction.version, outputs
        )


def caller_limits(
    context: grpc.ServicerContext,
) -> tuple[float | None, Callable[[], bool]]:
    """Return the call's deadline (time.monotonic()) and whether it was cancelled."""
    return deadline_of(context.time_remaining()), lambda: not context.is_active()


def _stream_target(
    request: Request,
    first: tuple[str, int] | None,
    index: int,
) -> tuple[str, int]:
    """Return the model and version of a stream message, reusing the first's."""
    if request.model_name:
        return request.model_name, request.version
    if first is None:
        field = "request.model_name" if index == 0 else f"[{index}].request.model_name"
        raise InvalidArgument.field(field, "required in the stream's first message")
    return first[0], request.version or first[1]


def _in_stream(error: InvalidArgument, index: int) -> InvalidArgument:
    """Name the stream message an error is about."""
    violations = [
        FieldViolation(f"[{index}].request.{v.field}", v.description)
        for v in error.violations
    ]
    message = f"stream message {index}: {error.message}"
    return InvalidArgument(message, violations)
