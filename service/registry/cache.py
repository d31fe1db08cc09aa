"""A least-recently-used map bounded by bytes, and one-at-a-time loading."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ByteBoundedLru(Generic[K, V]):
    """Keep values up to a total size, dropping the least recently used.

    Not thread-safe: callers hold their own lock.
    """

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.total_bytes = 0
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()

    def get(self, key: K) -> V | None:
        """Return the value and mark it most recently used; None when absent."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def keys(self) -> list[K]:
        """Return the keys, least recently used first."""
        return list(self._entries)

    def put(self, key: K, value: V, size: int) -> list[K]:
        """Add a value; drop older ones until the total fits; return their keys.

        The value just added is never dropped, even when it alone is over
        the capacity.
        """
        self.pop(key)
        self._entries[key] = (value, size)
        self.total_bytes += size
        evicted: list[K] = []
        while self.total_bytes > self.capacity_bytes and len(self._entries) > 1:
            oldest = next(iter(self._entries))
            self.pop(oldest)
            evicted.append(oldest)
        return evicted

    def pop(self, key: K) -> V | None:
        """Remove a value; return it, or None when absent."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        self.total_bytes -= entry[1]
        return entry[0]

    def clear(self) -> None:
        """Remove every value."""
        self._entries.clear()
        self.total_bytes = 0


class Pending(Generic[V]):
    """The result of a load that one thread runs and others wait for."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._value: V | None = None
        self._error: BaseException | None = None

    def set_result(self, value: V) -> None:
        """Hand the loaded value to every waiter."""
        self._value = value
        self._done.set()

    def set_error(self, error: BaseException) -> None:
        """Hand the load's error to every waiter."""
        self._error = error
        self._done.set()

    def wait(self) -> V:
        """Block until the load ends; return its value or raise its error."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value
