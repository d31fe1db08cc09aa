"""The message size limit, checked before a response is built."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy.typing as npt
from kerasrpc.service.errors import ResourceExhausted

# Room for the names, dtypes, shapes and framing around the raw bytes.
ENVELOPE_BYTES = 64 * 1024


def check_response_size(arrays: Iterable[npt.NDArray[Any]], limit: int) -> None:
    """Refuse a response whose arrays would not fit in one message of `limit` bytes.

    Raises:
        ResourceExhausted: naming the response's size and the limit.
    """
    size = sum(int(array.nbytes) for array in arrays)
    if size + ENVELOPE_BYTES > limit:
        raise ResourceExhausted(
            f"the response would hold {size} bytes of outputs, over the server's "
            f"message limit of {limit} bytes (max_message_bytes); send fewer "
            "examples per request or ask for fewer outputs"
        )


def deadline_of(time_remaining: float | None) -> float | None:
    """Turn a call's remaining seconds into a time.monotonic() deadline."""
    if time_remaining is None or time_remaining > 10**8:
        return None
    return time.monotonic() + time_remaining
