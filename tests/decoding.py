"""Checks shared by the tests of decoders that must agree with protobuf."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf.message import DecodeError


def corrupt(data: bytes, position: int, byte: int) -> bytes:
    """Return `data` with the byte at `position` (modulo its length) replaced."""
    if not data:
        return data
    changed = bytearray(data)
    changed[position % len(changed)] = byte
    return bytes(changed)


def decoded_both_ways(
    parse: Callable[[bytes], Any], decode: Callable[[bytes], Any], data: bytes
) -> tuple[Any, Any] | None:
    """Return (protobuf's message, the decoder's result) for `data`.

    When protobuf refuses `data`, check that the decoder refuses it too and
    return None.
    """
    try:
        parsed = parse(data)
    except DecodeError:
        with pytest.raises(DecodeError):
            decode(data)
        return None
    return parsed, decode(data)
