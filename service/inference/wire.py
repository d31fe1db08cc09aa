"""Encode prediction responses with each output's bytes copied once.

Building a response message the usual way copies every output several
times: into a bytes object, into the message, into the serialized string.
For large batches those copies are a visible share of a Predict call. Here
protobuf still encodes every small field (names, dtypes, shapes, versions);
only the length-delimited envelopes that enclose raw tensor bytes are
written by hand, following the protobuf wire format, so that the array
memory is copied once, straight into the serialized response.

Parsers merge repeated occurrences and accept fields in any order, which is
what lets a serialized message be extended by appending fields to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf import message_factory
from kerasrpc.client.tensors import data_type
from kerasrpc.v1 import inference_service_pb2, tensor_pb2

Array = npt.NDArray[Any]
Part = bytes | memoryview

_LENGTH_DELIMITED = 2


class Encoded:
    """A message serialized in parts, joined only when gRPC sends it."""

    def __init__(self, parts: list[Part]) -> None:
        self.parts = parts
        self.size = sum(len(part) for part in parts)

    def nested(self, field_number: int) -> Encoded:
        """Return this message as field `field_number` of an enclosing message."""
        return Encoded([length_prefix(field_number, self.size), *self.parts])

    def serialize(self) -> bytes:
        """Return the message's bytes."""
        return b"".join(self.parts)


def varint(value: int) -> bytes:
    """Encode a non-negative integer as a protobuf base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_prefix(field_number: int, length: int) -> bytes:
    """Return the tag and length that start a length-delimited field."""
    return varint(field_number << 3 | _LENGTH_DELIMITED) + varint(length)


def raw_bytes(array: npt.ArrayLike) -> tuple[np.ndarray[Any, Any], memoryview]:
    """Return an array as little-endian C-ordered values and a view of their bytes.

    The view shares the array's memory: nothing is copied unless the array
    was big-endian or not C-contiguous.
    """
    values = np.asarray(array)
    if values.dtype.byteorder == ">":
        values = values.astype(values.dtype.newbyteorder("<"))
    if not values.flags.c_contiguous:
        values = values.copy(order="C")  # ascontiguousarray would make 0-d 1-d
    # A uint8 view exports any dtype, bfloat16 included, through the buffer
    # protocol.
    return values, values.reshape(-1).view(np.uint8).data


def with_content(head: bytes, field_number: int, content: memoryview) -> Encoded:
    """Encode a message: its other fields, serialized, then a bytes field."""
    return Encoded([head, length_prefix(field_number, content.nbytes), content])


def map_entry(field_number: int, key: str, value: Encoded) -> Encoded:
    """Encode one entry of a map<string, message> field."""
    name = key.encode()
    return Encoded([length_prefix(1, len(name)), name, *value.nested(2).parts]).nested(
        field_number
    )


def predict_response(
    model_name: str, version: int, outputs: Mapping[str, npt.ArrayLike]
) -> Encoded:
    """Encode a kerasrpc.v1.PredictResponse."""
    parts: list[Part] = [
        inference_service_pb2.PredictResponse(
            model_name=model_name, version=version
        ).SerializeToString()
    ]
    for name, array in outputs.items():
        values, content = raw_bytes(array)
        head = tensor_pb2.Tensor(
            dtype=data_type(values.dtype),  # type: ignore[arg-type]
            shape=values.shape,
        ).SerializeToString()
        # Tensor.content is field 3; PredictResponse.outputs is field 3.
        parts += map_entry(3, name, with_content(head, 3, content)).parts
    return Encoded(parts)


def add_servicer(server: grpc.Server, service: Any, servicer: Any) -> None:
    """Serve every method of `service` (a ServiceDescriptor) from `servicer`.

    Like the generated add_*_to_server functions, except that a method may
    return (or yield) an Encoded message as well as a message object.
    """
    handlers = {}
    for method in service.methods:
        request = message_factory.GetMessageClass(method.input_type)
        kind = _HANDLER_KINDS[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = kind(
            getattr(servicer, method.name),
            request_deserializer=request.FromString,
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


def serialize(response: Any) -> bytes:
    """Serialize a response for gRPC: an Encoded one, or a message object."""
    if isinstance(response, Encoded):
        return response.serialize()
    data: bytes = response.SerializeToString()
    return data
