"""Server-side dynamic batching: merge concurrent requests for one version."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from kerasrpc.service.errors import (
    Cancelled,
    DeadlineExceeded,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from kerasrpc.service.inference.policy import BatchPolicy
from kerasrpc.service.inference.signature import example_shapes

logger = logging.getLogger("kerasrpc.service.inference")

Array = npt.NDArray[Any]
ForwardFn = Callable[[Mapping[str, Array]], dict[str, Array]]

IDLE_EXIT_SECONDS = 60.0


@dataclass
class BatchHooks:
    """What a batcher reports: batch sizes, queue delays and its queue depth."""

    batch_size: Callable[[int], None]
    queue_delay: Callable[[float], None]
    queue_depth: Callable[[int], None]


@dataclass(eq=False)
class PendingRequest:
    """One request waiting for its share of a merged batch."""

    inputs: Mapping[str, Array]
    size: int
    deadline: float | None = None
    cancelled: Callable[[], bool] | None = None
    enqueued: float = field(default_factory=time.monotonic)
    outputs: dict[str, Array] | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    abandoned: bool = False

    def __post_init__(self) -> None:
        self.shapes = example_shapes(self.inputs)

    def finish(
        self, outputs: dict[str, Array] | None, error: BaseException | None
    ) -> None:
        """Hand the outputs, or the error, to the waiting caller."""
        self.outputs = outputs
        self.error = error
        self.done.set()

    def dead_error(self, now: float) -> ServiceError | None:
        """Return why the request must not be computed, or None if it may be."""
        if self.abandoned or (self.deadline is not None and now >= self.deadline):
            return DeadlineExceeded(
                "the request's deadline passed while it waited in the batching queue"
            )
        if self.cancelled is not None and self.cancelled():
            return Cancelled("the caller cancelled the request")
        return None


class Batcher:
    """Merge requests for one model version up to a size and a delay.

    One worker thread per batcher takes the oldest live request, waits at
    most the policy's delay for others with the same per-example shapes, runs
    the merged batch and splits the outputs back. Requests whose deadline has
    passed or whose caller cancelled are dropped before merging, never
    computed. The worker exits after a minute without requests and starts
    again on the next one.
    """

    def __init__(
        self,
        forward: ForwardFn,
        policy: BatchPolicy,
        hooks: BatchHooks,
        *,
        name: str = "batcher",
        on_idle: Callable[[Batcher], None] | None = None,
        idle_exit_seconds: float = IDLE_EXIT_SECONDS,
    ) -> None:
        self.forward = forward
        self.policy = policy
        self._hooks = hooks
        self._name = name
        self._on_idle = on_idle
        self._idle_exit_seconds = idle_exit_seconds
        self._queue: deque[PendingRequest] = deque()
        self._queued_examples = 0
        self._lock = threading.Condition()
        self._worker: threading.Thread | None = None
        self._closed = False
        self._retiring = False

    def run(self, request: PendingRequest) -> dict[str, Array]:
        """Compute `request`, merged with others when it is small; return its outputs.

        Raises:
            ResourceExhausted: the queue is full.
            DeadlineExceeded: the deadline passed before it was computed.
            Cancelled: the caller cancelled it before it was computed.
        """
        if not self.policy.enabled or request.size >= self.policy.max_size:
            return self._run_alone(request)
        self._submit(request)
        return self._wait(request)

    def close(self) -> None:
        """Stop the worker; requests still queued fail as unavailable."""
        with self._lock:
            self._closed = True
            left = list(self._queue)
            self._queue.clear()
            self._queued_examples = 0
            self._lock.notify_all()
        for request in left:
            request.finish(None, Unavailable("the server is shutting down"))
        self._hooks.queue_depth(-len(left))

    def retire(self) -> None:
        """Let the worker finish the requests queued now, then exit at once.

        For a version that left memory: its worker would otherwise keep the
        model for another idle period. Requests still submitted are served.
        """
        with self._lock:
            self._retiring = True
            self._lock.notify()

    def _run_alone(self, request: PendingRequest) -> dict[str, Array]:
        error = request.dead_error(time.monotonic())
        if error is not None:
            raise error
        self._hooks.batch_size(request.size)
        return self.forward(request.inputs)

    def _submit(self, request: PendingRequest) -> None:
        with self._lock:
            if self._closed:
                raise Unavailable("the server is shutting down")
            if len(self._queue) >= self.policy.queue_limit:
                raise ResourceExhausted(
                    f"the batching queue of {self._name} is full "
                    f"({self.policy.queue_limit} requests); retry later"
                )
            self._queue.append(request)
            self._queued_examples += request.size
            self._start_worker()
            # The worker waits for a first request, then for a full batch or
            # the delay: wake it only when one of those can have changed.
            if len(self._queue) == 1 or self._queued_examples >= self.policy.max_size:
                self._lock.notify()
        self._hooks.queue_depth(1)

    def _wait(self, request: PendingRequest) -> dict[str, Array]:
        timeout = None
        if request.deadline is not None:
            timeout = max(0.0, request.deadline - time.monotonic())
        if not request.done.wait(timeout):
            with self._lock:
                request.abandoned = True
        if not request.done.is_set():
            raise DeadlineExceeded(
                "the request's deadline passed before its batch was computed"
            )
        if request.error is not None:
            raise request.error
        assert request.outputs is not None
        return request.outputs

    def _start_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(
                target=self._work, name=f"kerasrpc-batch-{self._name}", daemon=True
            )
            self._worker.start()

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if batch:
                self._compute(batch)

    def _next_batch(self) -> list[PendingRequest] | None:
        """Wait for a batch to fill or its delay to pass; None when idle or closed."""
        with self._lock:
            if not self._wait_for_work():
                return None
            flush_at = self._queue[0].enqueued + self.policy.max_delay_seconds
            while not self._closed and self._queued_examples < self.policy.max_size:
                remaining = flush_at - time.monotonic()
                if remaining <= 0:
                    break
                self._lock.wait(remaining)
            return self._take()

    def _wait_for_work(self) -> bool:
        while not self._queue:
            if self._closed or self._retiring:
                self._worker = None
                return False
            if not self._lock.wait(self._idle_exit_seconds) and not self._queue:
                self._worker = None
                if self._on_idle is not None:
                    self._on_idle(self)
                return False
        return True

    def _take(self) -> list[PendingRequest]:
        """Remove the requests of the next batch; fail those that are dead."""
        now = time.monotonic()
        taken: list[PendingRequest] = []
        kept: deque[PendingRequest] = deque()
        total = 0
        for request in self._queue:
            error = request.dead_error(now)
            if error is not None:
                request.finish(None, error)
            elif not taken or (
                request.shapes == taken[0].shapes
                and total + request.size <= self.policy.max_size
            ):
                taken.append(request)
                total += request.size
            else:
                kept.append(request)
        removed = len(self._queue) - len(kept)
        self._queue = kept
        self._queued_examples = sum(request.size for request in kept)
        self._hooks.queue_depth(-removed)
        for request in taken:
            self._hooks.queue_delay(now - request.enqueued)
        return taken

    def _compute(self, batch: list[PendingRequest]) -> None:
        try:
            outputs = self._forward_merged(batch)
        except Exception as error:
            self._retry_alone(batch, error)
            return
        start = 0
        for request in batch:
            end = start + request.size
            request.finish({k: v[start:end] for k, v in outputs.items()}, None)
            start = end

    def _forward_merged(self, batch: list[PendingRequest]) -> dict[str, Array]:
        self._hooks.batch_size(sum(request.size for request in batch))
        if len(batch) == 1:
            return self.forward(batch[0].inputs)
        merged = {
            name: np.concatenate([request.inputs[name] for request in batch])
            for name in batch[0].inputs
        }
        return self.forward(merged)

    def _retry_alone(self, batch: list[PendingRequest], error: Exception) -> None:
        """Compute each request alone, so one bad request fails only itself."""
        if len(batch) == 1:
            batch[0].finish(None, error)
            return
        logger.debug(
            "%s: a merged batch failed (%s); retrying alone", self._name, error
        )
        for request in batch:
            try:
                request.finish(self._run_alone(request), None)
            except Exception as alone_error:
                request.finish(None, alone_error)
