"""Encode and decode Predict messages around raw tensor bytes, without copies.

Building a message the usual way copies every array several times: into a
bytes object, into the message, into the serialized string; parsing one
copies each tensor into the message, and reading the field copies it again.
For large batches those copies are a visible share of a call.

Encoding: protobuf still encodes every small field (names, dtypes, shapes,
versions); only the length-delimited envelopes that enclose raw tensor bytes
are written by hand, following the protobuf wire format, so that each array
is copied once, straight into the serialized message. Parsers merge repeated
occurrences and accept fields in any order, which is what lets a serialized
message be extended by appending fields to it.

Decoding: large messages are read in place, each tensor's content a view of
the received bytes; anything unexpected goes to protobuf.

The server uses this for its responses and for requests; the client for its
requests and for responses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from google.protobuf.message import Message
from kerasrpc.client.tensors import data_type
from kerasrpc.v1 import inference_service_pb2, tensor_pb2

Part = bytes | memoryview
M = TypeVar("M", bound=Message)
View = TypeVar("View")

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


def tensor_map(field_number: int, arrays: Mapping[str, npt.ArrayLike]) -> list[Part]:
    """Encode a map<string, kerasrpc.v1.Tensor> field, each array copied once."""
    parts: list[Part] = []
    for name, array in arrays.items():
        values, content = raw_bytes(array)
        head = tensor_pb2.Tensor(
            dtype=data_type(values.dtype),  # type: ignore[arg-type]
            shape=values.shape,
        ).SerializeToString()
        # Tensor.content is field 3.
        parts += map_entry(field_number, name, with_content(head, 3, content)).parts
    return parts


def predict_request(
    model_name: str,
    version: int,
    inputs: Mapping[str, npt.ArrayLike],
    output_names: Iterable[str] = (),
) -> Encoded:
    """Encode a kerasrpc.v1.PredictRequest (inputs are its field 3)."""
    head = inference_service_pb2.PredictRequest(
        model_name=model_name, version=version, output_names=list(output_names)
    ).SerializeToString()
    return Encoded([head, *tensor_map(3, inputs)])


def predict_response(
    model_name: str, version: int, outputs: Mapping[str, npt.ArrayLike]
) -> Encoded:
    """Encode a kerasrpc.v1.PredictResponse (outputs are its field 3)."""
    head = inference_service_pb2.PredictResponse(
        model_name=model_name, version=version
    ).SerializeToString()
    return Encoded([head, *tensor_map(3, outputs)])


def serialize(message: Any) -> bytes:
    """Serialize a message for gRPC: an Encoded one, or a message object."""
    if isinstance(message, Encoded):
        return message.serialize()
    data: bytes = message.SerializeToString()
    return data


# Decoding ---------------------------------------------------------------------
#
# Anything the fast path does not expect (groups, a tensor given twice in one
# map entry, unknown fields inside a map entry, invalid UTF-8, a truncated
# message) goes to protobuf, which parses it or raises as usual.

# Messages smaller than this are parsed by protobuf: its copies cost less
# there than decoding in Python does.
DECODE_IN_PLACE_BYTES = 64 * 1024

_VARINT, _FIXED64, _FIXED32 = 0, 1, 5
_INT64_SIGN = 1 << 63
_UINT64_END = 1 << 64
_INT32_END = 1 << 31
_FIELD_NUMBER_END = 1 << 29


class _Unexpected(Exception):
    """An encoding the fast path leaves to protobuf."""


@dataclass
class TensorView:
    """A Tensor whose content is a view of the received message's bytes."""

    dtype: int = 0
    shape: list[int] = field(default_factory=list)
    content: memoryview = field(default_factory=lambda: memoryview(b""))


@dataclass
class PredictRequestView:
    """The fields of a PredictRequest, its tensors views of the received bytes."""

    model_name: str = ""
    version: int = 0
    inputs: dict[str, TensorView] = field(default_factory=dict)
    output_names: list[str] = field(default_factory=list)


@dataclass
class PredictStreamRequestView:
    """A PredictStreamRequest whose request was decoded in place."""

    request: PredictRequestView


@dataclass
class PredictResponseView:
    """The fields of a PredictResponse, its tensors views of the received bytes."""

    model_name: str = ""
    version: int = 0
    outputs: dict[str, TensorView] = field(default_factory=dict)


@dataclass
class PredictStreamResponseView:
    """A PredictStreamResponse whose response was decoded in place."""

    response: PredictResponseView


def decode_predict_request(
    data: bytes, in_place_from: int = DECODE_IN_PLACE_BYTES
) -> inference_service_pb2.PredictRequest | PredictRequestView:
    """Deserialize a PredictRequest; from `in_place_from` bytes, into views of `data`.

    Raises:
        DecodeError: `data` is not a PredictRequest.
    """
    return _decode(
        data,
        in_place_from,
        lambda buffer: _predict_request(buffer, 0, len(buffer)),
        inference_service_pb2.PredictRequest,
    )


def decode_predict_stream_request(
    data: bytes, in_place_from: int = DECODE_IN_PLACE_BYTES
) -> inference_service_pb2.PredictStreamRequest | PredictStreamRequestView:
    """Deserialize a PredictStreamRequest, like decode_predict_request.

    Raises:
        DecodeError: `data` is not a PredictStreamRequest.
    """
    return _decode(
        data,
        in_place_from,
        lambda buffer: PredictStreamRequestView(
            _predict_request(buffer, *_only_field_1(buffer))
        ),
        inference_service_pb2.PredictStreamRequest,
    )


def decode_predict_response(
    data: bytes, in_place_from: int = DECODE_IN_PLACE_BYTES
) -> inference_service_pb2.PredictResponse | PredictResponseView:
    """Deserialize a PredictResponse, like decode_predict_request.

    Raises:
        DecodeError: `data` is not a PredictResponse.
    """
    return _decode(
        data,
        in_place_from,
        lambda buffer: _predict_response(buffer, 0, len(buffer)),
        inference_service_pb2.PredictResponse,
    )


def decode_predict_stream_response(
    data: bytes, in_place_from: int = DECODE_IN_PLACE_BYTES
) -> inference_service_pb2.PredictStreamResponse | PredictStreamResponseView:
    """Deserialize a PredictStreamResponse, like decode_predict_request.

    Raises:
        DecodeError: `data` is not a PredictStreamResponse.
    """
    return _decode(
        data,
        in_place_from,
        lambda buffer: PredictStreamResponseView(
            _predict_response(buffer, *_only_field_1(buffer))
        ),
        inference_service_pb2.PredictStreamResponse,
    )


def _decode(
    data: bytes,
    in_place_from: int,
    in_place: Callable[[memoryview], View],
    message_type: type[M],
) -> M | View:
    """Decode `data` in place from `in_place_from` bytes on, else with protobuf.

    Protobuf also takes any encoding the in-place decoder does not expect.
    """
    if len(data) >= in_place_from:
        try:
            return in_place(memoryview(data))
        except _Unexpected:
            pass
    return message_type.FromString(data)


def split_bytes_field(
    data: bytes, field_number: int
) -> tuple[bytes, list[memoryview]] | None:
    """Take a top-level repeated bytes field out of a serialized message.

    Returns the message without that field, to parse with protobuf (its
    other fields are small), and the field's values in order, as views of
    `data`; None when the encoding is one to leave to protobuf whole.
    """
    buffer = memoryview(data)
    kept: list[memoryview] = []
    values: list[memoryview] = []
    field_start = 0
    try:
        for number, wire_type, start, end in _fields(buffer, 0, len(buffer)):
            if number == field_number:
                if wire_type != _LENGTH_DELIMITED:
                    raise _Unexpected
                values.append(buffer[start:end])
            else:
                kept.append(buffer[field_start:end])
            field_start = end
    except _Unexpected:
        return None
    return b"".join(kept), values


def take_map_contents(
    data: bytes, map_field: int, content_field: int
) -> tuple[bytes, dict[str, memoryview]] | None:
    """Take a bytes field out of each value of a top-level map<string, message>.

    Returns the message without those fields, to parse with protobuf, and the
    fields' values by map key, as views of `data`; None when the encoding is
    one to leave to protobuf whole.
    """
    buffer = memoryview(data)
    parts: list[Part] = []
    contents: dict[str, memoryview] = {}
    field_start = 0
    try:
        for number, wire_type, start, end in _fields(buffer, 0, len(buffer)):
            if number != map_field:
                parts.append(buffer[field_start:end])
            elif wire_type != _LENGTH_DELIMITED:
                raise _Unexpected
            else:
                key, entry, content = _entry_without(buffer, start, end, content_field)
                parts += [length_prefix(map_field, sum(map(len, entry))), *entry]
                if content is None:
                    contents.pop(key, None)  # the later entry wins, as in protobuf
                else:
                    contents[key] = content
            field_start = end
    except _Unexpected:
        return None
    return b"".join(parts), contents


def _entry_without(
    buffer: memoryview, start: int, end: int, content_field: int
) -> tuple[str, list[Part], memoryview | None]:
    """Re-encode a map entry without its value's `content_field`; return that too."""
    name = ""
    key = memoryview(b"")
    value: tuple[int, int] | None = None
    for number, wire_type, value_start, value_end in _fields(buffer, start, end):
        if number == 1:
            name = _text(buffer, wire_type, value_start, value_end)
            key = buffer[value_start:value_end]
        elif number == 2 and wire_type == _LENGTH_DELIMITED and value is None:
            value = (value_start, value_end)
        else:
            raise _Unexpected  # protobuf merges or keeps such entries out
    entry: list[Part] = [length_prefix(1, len(key)), key]
    if value is None:
        return name, entry, None
    rest: list[Part] = []
    content = None
    field_start = value[0]
    for number, wire_type, value_start, value_end in _fields(buffer, *value):
        if number == content_field:
            if wire_type != _LENGTH_DELIMITED or content is not None:
                raise _Unexpected
            content = buffer[value_start:value_end]
        else:
            rest.append(buffer[field_start:value_end])
        field_start = value_end
    entry += [length_prefix(2, sum(map(len, rest))), *rest]
    return name, entry, content


def _only_field_1(buffer: memoryview) -> tuple[int, int]:
    """Return the bounds of a stream wrapper's one message field (number 1)."""
    bounds = (0, 0)
    seen = False
    for number, wire_type, start, end in _fields(buffer, 0, len(buffer)):
        if number == 1:
            if wire_type != _LENGTH_DELIMITED or seen:
                raise _Unexpected  # a repeated message field merges
            bounds, seen = (start, end), True
    return bounds


def _predict_request(buffer: memoryview, start: int, end: int) -> PredictRequestView:
    request = PredictRequestView()
    for number, wire_type, value, value_end in _fields(buffer, start, end):
        if number == 1:
            request.model_name = _text(buffer, wire_type, value, value_end)
        elif number == 2:
            request.version = _int64(wire_type, value)
        elif number == 3:
            name, tensor = _tensor_entry(buffer, wire_type, value, value_end)
            request.inputs[name] = tensor
        elif number == 4:
            request.output_names.append(_text(buffer, wire_type, value, value_end))
    return request


def _predict_response(buffer: memoryview, start: int, end: int) -> PredictResponseView:
    response = PredictResponseView()
    for number, wire_type, value, value_end in _fields(buffer, start, end):
        if number == 1:
            response.model_name = _text(buffer, wire_type, value, value_end)
        elif number == 2:
            response.version = _int64(wire_type, value)
        elif number == 3:
            name, tensor = _tensor_entry(buffer, wire_type, value, value_end)
            response.outputs[name] = tensor
    return response


def _tensor_entry(
    buffer: memoryview, wire_type: int, start: int, end: int
) -> tuple[str, TensorView]:
    if wire_type != _LENGTH_DELIMITED:
        raise _Unexpected
    name = ""
    tensor = None
    for number, entry_wire_type, value, value_end in _fields(buffer, start, end):
        if number == 1:
            name = _text(buffer, entry_wire_type, value, value_end)
        elif number == 2:
            if entry_wire_type != _LENGTH_DELIMITED or tensor is not None:
                raise _Unexpected
            tensor = _tensor(buffer, value, value_end)
        else:
            raise _Unexpected  # protobuf keeps such an entry out of the map
    return name, tensor or TensorView()


def _tensor(buffer: memoryview, start: int, end: int) -> TensorView:
    tensor = TensorView()
    for number, wire_type, value, value_end in _fields(buffer, start, end):
        if number == 1:
            if wire_type != _VARINT or value >= _INT32_END:
                raise _Unexpected
            tensor.dtype = value
        elif number == 2:
            if wire_type == _LENGTH_DELIMITED:  # packed, as encoders write it
                position = value
                while position < value_end:
                    size, position = _varint(buffer, position, value_end)
                    tensor.shape.append(_int64(_VARINT, size))
            else:
                tensor.shape.append(_int64(wire_type, value))
        elif number == 3:
            if wire_type != _LENGTH_DELIMITED:
                raise _Unexpected
            tensor.content = buffer[value:value_end]
    return tensor


def _fields(
    buffer: memoryview, position: int, end: int
) -> Iterator[tuple[int, int, int, int]]:
    """Yield each field as (number, wire type, value, end).

    A varint field's value is the number; the value and end of any other
    field are its bounds in `buffer`.
    """
    while position < end:
        key, position = _varint(buffer, position, end)
        number, wire_type = key >> 3, key & 7
        if not 0 < number < _FIELD_NUMBER_END:
            raise _Unexpected
        if wire_type == _VARINT:
            value, position = _varint(buffer, position, end)
            yield number, wire_type, value, position
        elif wire_type == _LENGTH_DELIMITED:
            length, position = _varint(buffer, position, end)
            if position + length > end:
                raise _Unexpected
            yield number, wire_type, position, position + length
            position += length
        elif wire_type in (_FIXED64, _FIXED32):
            start = position
            position += 8 if wire_type == _FIXED64 else 4
            if position > end:
                raise _Unexpected
            yield number, wire_type, start, position
        else:
            raise _Unexpected  # groups


def _varint(buffer: memoryview, position: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while position < end and shift < 64:
        byte = buffer[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if value >= _UINT64_END:
                raise _Unexpected
            return value, position
        shift += 7
    raise _Unexpected


def _int64(wire_type: int, value: int) -> int:
    if wire_type != _VARINT:
        raise _Unexpected
    return value - _UINT64_END if value >= _INT64_SIGN else value


def _text(buffer: memoryview, wire_type: int, start: int, end: int) -> str:
    if wire_type != _LENGTH_DELIMITED:
        raise _Unexpected
    try:
        return str(buffer[start:end], "utf-8")
    except UnicodeDecodeError:
        raise _Unexpected from None
