"""The interceptor every RPC passes through: errors, access log and metrics.

Applying one interceptor to the whole server means every RPC, present and
future, maps errors the same way: a ServiceError becomes its status code with
rich details, anything else becomes INTERNAL with a generic message, and no
call ends in UNKNOWN or shows the caller a traceback.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_status import rpc_status
from kerasrpc.client.tensors import TensorFormatError
from kerasrpc.service.errors import (
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
    status_code,
    to_rpc_status,
)
from kerasrpc.service.metrics import ServiceMetrics

logger = logging.getLogger("kerasrpc.service")
access_logger = logging.getLogger("kerasrpc.service.access")

Behavior = Callable[..., Any]
# Worker threads kept free of streams for short calls such as health checks.
RESERVED_WORKERS = 8
Handler = Any  # grpc.RpcMethodHandler, whose stubs disagree with the runtime


class _Call:
    """What the interceptor knows about one RPC while it runs."""

    def __init__(self, full_method: str, rpc_type: str, metrics: ServiceMetrics):
        service, _, method = full_method.lstrip("/").partition("/")
        self.labels = (rpc_type, service, method)
        self.full_method = full_method
        self.metrics = metrics
        self.started = time.perf_counter()
        metrics.grpc_started.labels(*self.labels).inc()

    def finish(self, code: grpc.StatusCode, context: grpc.ServicerContext) -> None:
        elapsed = time.perf_counter() - self.started
        self.metrics.grpc_handled.labels(*self.labels, code.name).inc()
        self.metrics.grpc_handling_seconds.labels(*self.labels).observe(elapsed)
        if access_logger.isEnabledFor(logging.DEBUG):
            access_logger.debug(
                "%s %s %.1fms peer=%s",
                self.full_method,
                code.name,
                elapsed * 1000,
                context.peer(),
            )


@dataclass
class Undecodable:
    """Request bytes that do not parse, handed on so that they are refused."""

    message_name: str
    reason: str

    def error(self) -> InvalidArgument:
        """Return the error the caller gets."""
        return InvalidArgument(
            f"the request is not a valid {self.message_name}: {self.reason}"
        )


def keeping_undecodable(
    decode: Callable[[bytes], Any], message_name: str
) -> Callable[[bytes], Any]:
    """Wrap a request deserializer: bytes it cannot parse become an Undecodable.

    gRPC answers a deserializer's exception with INTERNAL, as if the server
    had failed; the interceptor answers an Undecodable with INVALID_ARGUMENT.
    """

    def deserialize(data: bytes) -> Any:
        try:
            return decode(data)
        except DecodeError as error:
            return Undecodable(message_name, str(error) or "not a valid message")

    return deserialize


def _decoded(request: Any) -> Any:
    """Return a request message; raise InvalidArgument for an Undecodable."""
    if isinstance(request, Undecodable):
        raise request.error()
    return request


def _decoded_stream(requests: Iterator[Any]) -> Iterator[Any]:
    """Yield a stream's messages; raise InvalidArgument at an Undecodable one."""
    for request in requests:
        yield _decoded(request)


class StreamSlots:
    """Bound the calls that hold a worker thread for long: streams and uploads.

    Each open stream (a training event stream, PredictStream, an upload)
    keeps one of the server's worker threads for as long as it lasts. Without
    a bound, enough of them would leave no thread for health checks and other
    short calls, which would then wait forever.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open = 0
        self._lock = threading.Lock()

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold a slot while the block runs; ResourceExhausted when all are taken."""
        with self._lock:
            if self._open >= self.limit:
                raise ResourceExhausted(
                    f"the server has {self.limit} streams open, its limit; "
                    "retry later or raise --workers"
                )
            self._open += 1
        try:
            yield
        finally:
            with self._lock:
                self._open -= 1


def stream_limit(workers: int) -> int:
    """Return how many worker threads streams may hold, keeping some for the rest."""
    return max(1, workers - min(RESERVED_WORKERS, workers // 2))


class ServiceInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Map errors, log access at DEBUG and count RPCs for every method."""

    def __init__(self, metrics: ServiceMetrics, stream_slots: StreamSlots) -> None:
        self._metrics = metrics
        self._slots = stream_slots

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        """Wrap the method's handler, whatever its streaming kind."""
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method, "unary"),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(
                    handler.stream_unary, method, "client_stream", holds_slot=True
                ),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, method, "server_stream"),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(handler.stream_stream, method, "bidi_stream"),
            handler.request_deserializer,
            handler.response_serializer,
        )

    def _unary(
        self,
        behavior: Behavior,
        method: str,
        rpc_type: str,
        *,
        holds_slot: bool = False,
    ) -> Behavior:
        decoded = _decoded_stream if rpc_type == "client_stream" else _decoded

        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            call = _Call(method, rpc_type, self._metrics)
            code = grpc.StatusCode.OK
            try:
                with self._slots.held() if holds_slot else nullcontext():
                    return behavior(decoded(request), context)
            except BaseException as error:
                code = _abort(error, context, method)
                raise
            finally:
                call.finish(_final_code(code, context), context)

        return handle

    def _streaming(self, behavior: Behavior, method: str, rpc_type: str) -> Behavior:
        decoded = _decoded_stream if rpc_type == "bidi_stream" else _decoded

        def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            call = _Call(method, rpc_type, self._metrics)
            code = grpc.StatusCode.OK
            try:
                with self._slots.held():
                    yield from behavior(decoded(request), context)
            except GeneratorExit:
                code = grpc.StatusCode.CANCELLED
                raise
            except BaseException as error:
                code = _abort(error, context, method)
                raise
            finally:
                call.finish(_final_code(code, context), context)

        return handle


def _final_code(
    code: grpc.StatusCode, context: grpc.ServicerContext
) -> grpc.StatusCode:
    if code == grpc.StatusCode.OK and not context.is_active():
        return grpc.StatusCode.CANCELLED
    set_code = _context_code(context)
    return set_code if isinstance(set_code, grpc.StatusCode) else code


def _context_code(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    code = getattr(context, "code", lambda: None)()
    return code if isinstance(code, grpc.StatusCode) else None


def _abort(
    error: BaseException, context: grpc.ServicerContext, method: str
) -> grpc.StatusCode:
    """Abort the call with the status that `error` maps to; return that code."""
    already = _context_code(context)
    if isinstance(already, grpc.StatusCode) and already != grpc.StatusCode.OK:
        return already  # the servicer aborted the call itself
    if isinstance(error, grpc.RpcError) or not context.is_active():
        logger.debug("%s ended by the caller: %r", method, error)
        return grpc.StatusCode.CANCELLED
    service_error = _as_service_error(error, method)
    if service_error is None:
        return grpc.StatusCode.CANCELLED
    code = status_code(service_error)
    context.abort_with_status(rpc_status.to_status(to_rpc_status(service_error)))
    return code  # pragma: no cover - abort_with_status raises


def _as_service_error(error: BaseException, method: str) -> ServiceError | None:
    if isinstance(error, ServiceError):
        logger.debug("%s failed: %s", method, error.message)
        return error
    if isinstance(error, TensorFormatError):
        return InvalidArgument.field(error.field, error.description)
    if isinstance(error, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        return None
    incident = uuid.uuid4().hex[:12]
    logger.error("%s failed (incident %s)", method, incident, exc_info=error)
    return _internal(incident)


def _internal(incident: str) -> ServiceError:
    from kerasrpc.service.errors import Internal

    return Internal(
        f"the server failed to complete the call; its logs hold the details "
        f"under incident {incident}"
    )
