"""A job's event log: an append-only file of length-prefixed TrainingEvents.

Each record is a fixed header (payload length, CRC-32 of the payload, the
event's step, flags) followed by the serialized TrainingEvent. The writer keeps
a sparse in-memory index (one entry every INDEX_EVERY records) so a watcher
that starts at a given step seeks near it instead of scanning the whole file.
A torn record at the end (the process died while writing it) is cut off when
the log is opened for writing and ignored by readers.
"""

from __future__ import annotations

import bisect
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from kerasrpc.v1 import training_service_pb2

logger = logging.getLogger("kerasrpc.service.training")

HEADER = struct.Struct("<IIqB")
FLAG_FINAL = 1
INDEX_EVERY = 1024
MAX_RECORD_BYTES = 16 * 1024 * 1024
READ_BYTES = 1024 * 1024

FINAL_STATES = frozenset(
    {
        training_service_pb2.JOB_STATE_SUCCEEDED,
        training_service_pb2.JOB_STATE_FAILED,
        training_service_pb2.JOB_STATE_CANCELLED,
    }
)


@dataclass(frozen=True)
class Record:
    """One event as stored: its step, whether it ends the job, and its bytes."""

    step: int
    final: bool
    payload: bytes
    end: int


def event_step(event: training_service_pb2.TrainingEvent) -> int:
    """Return the step an event belongs to."""
    kind = event.WhichOneof("event")
    if kind is None:
        return 0
    step: int = getattr(event, kind).step
    return step


def is_final(event: training_service_pb2.TrainingEvent) -> bool:
    """Return whether an event is the last of its job."""
    return event.WhichOneof("event") == "state" and event.state.state in FINAL_STATES


def encode(event: training_service_pb2.TrainingEvent) -> bytes:
    """Return an event's record: the header and the serialized event."""
    payload = event.SerializeToString()
    flags = FLAG_FINAL if is_final(event) else 0
    header = HEADER.pack(len(payload), zlib.crc32(payload), event_step(event), flags)
    return header + payload


def scan(path: Path, offset: int = 0, limit: int | None = None) -> Iterator[Record]:
    """Yield the complete records of a log file from `offset` up to `limit`."""
    with path.open("rb") as file:
        yield from _scan(file, offset, limit)


def _scan(file: BinaryIO, offset: int, limit: int | None) -> Iterator[Record]:
    file.seek(offset)
    buffer = b""
    position = offset
    while True:
        want = READ_BYTES if limit is None else min(READ_BYTES, limit - position)
        data = file.read(want) if want > 0 else b""
        if not data:
            return
        buffer += data
        position += len(data)
        start = position - len(buffer)
        used = 0
        while True:
            record = _decode(buffer, used, start + used)
            if record is None:
                break
            used = record.end - start
            yield record
        buffer = buffer[used:]


def _decode(buffer: bytes, at: int, offset: int) -> Record | None:
    if len(buffer) - at < HEADER.size:
        return None
    length, crc, step, flags = HEADER.unpack_from(buffer, at)
    begin = at + HEADER.size
    if length > MAX_RECORD_BYTES or len(buffer) - begin < length:
        return None
    payload = buffer[begin : begin + length]
    if zlib.crc32(payload) != crc:
        return None
    end = offset + HEADER.size + length
    return Record(step, bool(flags & FLAG_FINAL), payload, end)


class EventLog:
    """The event log of one job, written by its training thread.

    Readers follow it with `read`, which waits for new records, so any number
    of watchers read at their own pace and never slow the writer.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._changed = threading.Condition()
        self._closed = False
        self._index: list[tuple[int, int]] = []
        self._count = 0
        self._last_sequence = 0
        self._size = self._recover()
        self._file = path.open("ab")

    @property
    def last_sequence(self) -> int:
        """Return the sequence number of the last event written."""
        return self._last_sequence

    @property
    def size(self) -> int:
        """Return the bytes of complete records."""
        return self._size

    def _recover(self) -> int:
        """Index the records on disk and cut off a torn last record."""
        self.path.touch(exist_ok=True)
        end = 0
        last: Record | None = None
        for record in scan(self.path):
            self._note(record.step, end)
            end = record.end
            last = record
        if last is not None:
            event = training_service_pb2.TrainingEvent.FromString(last.payload)
            self._last_sequence = event.sequence
        if self.path.stat().st_size != end:
            logger.warning("cutting a torn record off the end of %s", self.path)
            os.truncate(self.path, end)
        return end

    def _note(self, step: int, offset: int) -> None:
        if self._count % INDEX_EVERY == 0:
            self._index.append((step, offset))
        self._count += 1

    def append(self, events: Sequence[training_service_pb2.TrainingEvent]) -> None:
        """Number the events, write them in one go and wake the watchers."""
        records = []
        with self._changed:
            offset = self._size
            for event in events:
                self._last_sequence += 1
                event.sequence = self._last_sequence
                record = encode(event)
                self._note(event_step(event), offset)
                offset += len(record)
                records.append(record)
            self._file.write(b"".join(records))
            self._file.flush()
            self._size = offset
            self._changed.notify_all()

    def sync(self) -> None:
        """Force the written records to disk."""
        with self._changed:
            os.fsync(self._file.fileno())

    def truncate_after(self, step: int) -> None:
        """Drop every record after the last one whose step is at most `step`."""
        with self._changed:
            keep = 0
            sequence = 0
            for record in scan(self.path, 0, self._size):
                if record.step > step:
                    break
                keep = record.end
                event = training_service_pb2.TrainingEvent.FromString(record.payload)
                sequence = event.sequence
            self._file.close()
            os.truncate(self.path, keep)
            self._index, self._count = [], 0
            self._last_sequence = 0
            self._size = self._recover()
            self._last_sequence = sequence
            self._file = self.path.open("ab")

    def start_offset(self, from_step: int) -> int:
        """Return an offset at or before the first record of step >= from_step."""
        with self._changed:
            steps = [step for step, _ in self._index]
            at = bisect.bisect_left(steps, from_step) - 1
            return self._index[at][1] if at >= 0 else 0

    def wait(self, offset: int, timeout: float) -> int:
        """Wait until data lies beyond `offset` or the log closes; return the end."""
        with self._changed:
            if self._size <= offset and not self._closed:
                self._changed.wait(timeout)
            return self._size

    @property
    def closed(self) -> bool:
        """Return whether the writer is done with this log."""
        return self._closed

    def close(self) -> None:
        """Flush and close the file; wake the watchers so they can finish."""
        with self._changed:
            if self._closed:
                return
            self._closed = True
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
            finally:
                self._file.close()
                self._changed.notify_all()
