"""Register servicers whose methods may answer with encoded responses."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import grpc
from google.protobuf import message_factory
from kerasrpc.client.codec import serialize
from kerasrpc.service.interceptors import keeping_undecodable


def add_servicer(
    server: grpc.Server,
    service: Any,
    servicer: Any,
    deserializers: Mapping[str, Callable[[bytes], Any]] | None = None,
) -> None:
    """Serve every method of `service` (a ServiceDescriptor) from `servicer`.

    Like the generated add_*_to_server functions, except that:
    - a method may return (or yield) an Encoded message as well as a message
      object;
    - `deserializers` may replace protobuf's parsing of some requests, by
      method name;
    - request bytes that do not parse reach the interceptor as Undecodable,
      which refuses them with INVALID_ARGUMENT (gRPC would answer INTERNAL).
    """
    handlers = {}
    for method in service.methods:
        request = message_factory.GetMessageClass(method.input_type)
        kind = _HANDLER_KINDS[(method.client_streaming, method.server_streaming)]
        decode = (deserializers or {}).get(method.name, request.FromString)
        handlers[method.name] = kind(
            getattr(servicer, method.name),
            request_deserializer=keeping_undecodable(decode, method.input_type.name),
            response_serializer=serialize,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    # Registered methods skip the per-call lookup by name; grpc's stubs omit it.
    server.add_registered_method_handlers(  # type: ignore[attr-defined]
        service.full_name, handlers
    )


_HANDLER_KINDS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}
