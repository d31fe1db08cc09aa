"""The one error mapping every RPC passes through, on a real gRPC server.

The service's own RPCs are tested elsewhere; here a small servicer fails on
purpose in each of the four call kinds, so the mapping itself is pinned down:
no call ends in UNKNOWN and no caller sees a traceback or internals.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from kerasrpc.client import KerasRpcError
from kerasrpc.client.errors import FieldViolation
from kerasrpc.service.errors import InvalidArgument, NotFound, ResourceExhausted
from kerasrpc.service.interceptors import ServiceInterceptor, StreamSlots
from kerasrpc.service.metrics import ServiceMetrics
from prometheus_client import CollectorRegistry

SERVICE = "test.Failing"
KINDS = ("unary", "client_stream", "server_stream", "bidi_stream")


def _fail(request: bytes) -> None:
    """Raise the error the request names."""
    if request == b"invalid":
        raise InvalidArgument.field("spec.layers[2].units", "expected 1, received 0")
    if request == b"missing":
        raise NotFound("model 'x' does not exist")
    if request == b"full":
        raise ResourceExhausted("the queue is full")
    raise RuntimeError("secret internal detail /var/lib/state")


def _unary(request: bytes, context: Any) -> bytes:
    _fail(request)
    return request


def _client_stream(requests: Iterator[bytes], context: Any) -> bytes:
    for request in requests:
        if request != b"wait":
            _fail(request)
    return b"done"


def _server_stream(request: bytes, context: Any) -> Iterator[bytes]:
    yield b"first"
    _fail(request)


def _bidi_stream(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
    for request in requests:
        yield b"first"
        _fail(request)


@pytest.fixture(scope="module")
def failing() -> Iterator[tuple[str, ServiceMetrics]]:
    metrics = ServiceMetrics(CollectorRegistry())
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        interceptors=[ServiceInterceptor(metrics, StreamSlots(4))],
    )
    handlers = {
        "unary": grpc.unary_unary_rpc_method_handler(_unary),
        "client_stream": grpc.stream_unary_rpc_method_handler(_client_stream),
        "server_stream": grpc.unary_stream_rpc_method_handler(_server_stream),
        "bidi_stream": grpc.stream_stream_rpc_method_handler(_bidi_stream),
    }
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(SERVICE, handlers)]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", metrics
    server.stop(0)


def _call(address: str, kind: str, request: bytes) -> KerasRpcError:
    method = f"/{SERVICE}/{kind}"
    with grpc.insecure_channel(address) as channel:
        try:
            if kind == "unary":
                channel.unary_unary(method)(request, timeout=10)
            elif kind == "client_stream":
                channel.stream_unary(method)(iter([request]), timeout=10)
            elif kind == "server_stream":
                list(channel.unary_stream(method)(request, timeout=10))
            else:
                list(channel.stream_stream(method)(iter([request]), timeout=10))
        except grpc.RpcError as error:
            return KerasRpcError.from_rpc_error(error)
    raise AssertionError("the call did not fail")


@pytest.mark.parametrize("kind", KINDS)
def test_an_unexpected_error_is_internal_without_internals(
    failing: tuple[str, ServiceMetrics], kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    address, metrics = failing
    with caplog.at_level(logging.ERROR, logger="kerasrpc.service"):
        error = _call(address, kind, b"boom")

    assert error.code == grpc.StatusCode.INTERNAL
    assert "secret" not in error.message
    assert "/var/lib" not in error.message
    assert "Traceback" not in error.message
    assert "RuntimeError" not in error.message
    incident = error.message.rsplit(" ", 1)[-1]
    logged = [r for r in caplog.records if incident in r.getMessage()]
    assert logged
    assert logged[0].exc_info is not None
    handled = metrics.registry.get_sample_value(
        "grpc_server_handled_total",
        {"grpc_type": kind, "grpc_service": SERVICE, "grpc_method": kind,
         "grpc_code": "INTERNAL"},
    )  # fmt: skip
    assert handled is not None
    assert handled >= 1


@pytest.mark.parametrize("kind", KINDS)
def test_invalid_input_carries_the_field_path(
    failing: tuple[str, ServiceMetrics], kind: str
) -> None:
    error = _call(failing[0], kind, b"invalid")

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.violations == (
        FieldViolation("spec.layers[2].units", "expected 1, received 0"),
    )


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (b"missing", grpc.StatusCode.NOT_FOUND),
        (b"full", grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
)
@pytest.mark.parametrize("kind", KINDS)
def test_service_errors_keep_their_code_and_message(
    failing: tuple[str, ServiceMetrics],
    kind: str,
    request_bytes: bytes,
    code: grpc.StatusCode,
) -> None:
    error = _call(failing[0], kind, request_bytes)

    assert error.code == code
    assert error.message in ("model 'x' does not exist", "the queue is full")


def test_a_caller_that_cancels_an_upload_is_not_a_server_failure(
    failing: tuple[str, ServiceMetrics], caplog: pytest.LogCaptureFixture
) -> None:
    address, metrics = failing
    sent = threading.Event()

    def requests() -> Iterator[bytes]:
        yield b"wait"
        sent.set()
        threading.Event().wait(30)

    def handled(code: str) -> float:
        labels = {"grpc_type": "client_stream", "grpc_service": SERVICE,
                  "grpc_method": "client_stream", "grpc_code": code}  # fmt: skip
        return (
            metrics.registry.get_sample_value("grpc_server_handled_total", labels) or 0
        )

    codes = ("OK", "CANCELLED", "INTERNAL", "UNKNOWN")
    before = {code: handled(code) for code in codes}
    with caplog.at_level(logging.DEBUG, logger="kerasrpc.service"):
        with grpc.insecure_channel(address) as channel:
            call = channel.stream_unary(f"/{SERVICE}/client_stream").future(requests())
            sent.wait(10)
            call.cancel()
        _wait_until(lambda: any(handled(code) > before[code] for code in codes))

    counted = [code for code in codes if handled(code) > before[code]]
    # gRPC may hand the handler the cancel as the end of the requests, before
    # the call shows as cancelled: the handler then returns as if done (OK).
    # Either way the cancel is no server failure.
    assert counted in (["CANCELLED"], ["OK"])
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def _wait_until(condition: Any, timeout: float = 10.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        done.wait(0.05)
    raise AssertionError("condition not met in time")
