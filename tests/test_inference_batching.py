"""The batching core in process: merging, splitting, deadlines and limits."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from kerasrpc.service.errors import Cancelled, DeadlineExceeded, ResourceExhausted
from kerasrpc.service.inference.batcher import Batcher, BatchHooks, PendingRequest
from kerasrpc.service.inference.policy import BatchPolicy

Array = np.ndarray[Any, Any]


class CountingModel:
    """y = 2x + 1 on input "x", taking `seconds` per call, counting its calls."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.calls: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        with self.lock:
            self.calls.append(len(inputs["x"]))
        time.sleep(self.seconds)
        if np.any(inputs["x"] < 0):
            raise ValueError("negative inputs")
        return {"y": inputs["x"] * 2 + 1}


class Recorded:
    """The hooks' observations."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []
        self.delays: list[float] = []
        self.depth = 0

    def hooks(self) -> BatchHooks:
        def depth(change: int) -> None:
            self.depth += change

        return BatchHooks(self.batch_sizes.append, self.delays.append, depth)


def make_batcher(
    model: CountingModel,
    recorded: Recorded,
    *,
    max_size: int = 64,
    delay: float = 0.05,
    queue_limit: int = 100,
) -> Batcher:
    policy = BatchPolicy(max_size, delay, queue_limit)
    return Batcher(model, policy, recorded.hooks(), name="test")


def request(values: Any, **kwargs: Any) -> PendingRequest:
    array = np.asarray(values, dtype=np.float32)
    return PendingRequest({"x": array}, len(array), **kwargs)


def test_concurrent_requests_merge_and_split_back_in_order() -> None:
    model, recorded = CountingModel(), Recorded()
    batcher = make_batcher(model, recorded, delay=0.2)
    rows = [np.full((1 + i % 3, 4), i, dtype=np.float32) for i in range(12)]

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda x: batcher.run(request(x)), rows))

    for row, result in zip(rows, results, strict=True):
        np.testing.assert_array_equal(result["y"], row * 2 + 1)
    assert len(model.calls) < len(rows)
    assert max(recorded.batch_sizes) > 1
    assert sum(recorded.batch_sizes) == sum(len(row) for row in rows)
    assert recorded.depth == 0
    batcher.close()


def test_a_request_whose_deadline_passes_in_the_queue_is_never_computed() -> None:
    model, recorded = CountingModel(), Recorded()
    batcher = make_batcher(model, recorded, delay=0.4)

    with pytest.raises(DeadlineExceeded):
        batcher.run(request([[1.0]], deadline=time.monotonic() + 0.05))
    # The worker takes requests in order, so once a later one is answered the
    # expired one has been through the queue.
    later = batcher.run(request([[2.0], [3.0]]))

    np.testing.assert_array_equal(later["y"], [[5.0], [7.0]])
    assert model.calls == [2]
    assert recorded.depth == 0
    batcher.close()


def test_an_expired_request_is_dropped_while_a_live_one_is_computed() -> None:
    model, recorded = CountingModel(), Recorded()
    batcher = make_batcher(model, recorded, delay=0.3)

    with ThreadPoolExecutor(2) as pool:
        short = pool.submit(
            batcher.run, request([[1.0]], deadline=time.monotonic() + 0.05)
        )
        live = pool.submit(batcher.run, request([[2.0], [3.0]]))
        with pytest.raises(DeadlineExceeded):
            short.result()
        np.testing.assert_array_equal(live.result()["y"], [[5.0], [7.0]])

    assert model.calls == [2]
    batcher.close()


def test_a_cancelled_request_is_never_computed() -> None:
    model, recorded = CountingModel(), Recorded()
    batcher = make_batcher(model, recorded, delay=0.1)
    gone = threading.Event()
    gone.set()

    with pytest.raises(Cancelled):
        batcher.run(request([[1.0]], cancelled=gone.is_set))

    assert model.calls == []
    batcher.close()


def test_a_full_queue_refuses_with_resource_exhausted() -> None:
    model, recorded = CountingModel(), Recorded()
    batcher = make_batcher(model, recorded, delay=0.5, queue_limit=2)

    with ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(batcher.run, request([[1.0]])) for _ in range(2)]
        while recorded.depth < 2:
            time.sleep(0.005)
        with pytest.raises(ResourceExhausted, match="full"):
            batcher.run(request([[1.0]]))
        assert [len(w.result()["y"]) for w in waiting] == [1, 1]

    assert model.calls == [2]
    batcher.close()


def test_a_request_as_large_as_the_batch_bypasses_the_queue() -> None:
    model, recorded = CountingModel(), Recorded()
    batcher = make_batcher(model, recorded, max_size=4, delay=5.0)

    started = time.monotonic()
    result = batcher.run(request(np.ones((4, 2))))

    assert time.monotonic() - started < 1.0
    assert result["y"].shape == (4, 2)
    assert model.calls == [4]
    batcher.close()


def test_requests_with_different_example_shapes_are_not_merged() -> None:
    model, recorded = CountingModel(), Recorded()
    batcher = make_batcher(model, recorded, delay=0.2)

    with ThreadPoolExecutor(4) as pool:
        shapes = [(1, 3), (1, 3), (1, 5), (1, 5)]
        results = list(pool.map(lambda s: batcher.run(request(np.ones(s))), shapes))

    assert [r["y"].shape for r in results] == shapes
    assert sorted(model.calls) == [2, 2]
    batcher.close()


def test_a_failing_request_fails_alone_when_merged() -> None:
    model, recorded = CountingModel(), Recorded()
    batcher = make_batcher(model, recorded, delay=0.2)

    with ThreadPoolExecutor(2) as pool:
        bad = pool.submit(batcher.run, request([[-1.0]]))
        good = pool.submit(batcher.run, request([[1.0]]))
        with pytest.raises(ValueError, match="negative"):
            bad.result()
        np.testing.assert_array_equal(good.result()["y"], [[3.0]])
    batcher.close()


def test_an_idle_batcher_stops_its_worker_and_restarts_on_demand() -> None:
    model, recorded = CountingModel(), Recorded()
    idle = threading.Event()
    batcher = Batcher(
        model,
        BatchPolicy(8, 0.001, 10),
        recorded.hooks(),
        on_idle=lambda _: idle.set(),
        idle_exit_seconds=0.05,
    )

    batcher.run(request([[1.0]]))
    assert idle.wait(2.0)
    result = batcher.run(request([[2.0]]))

    np.testing.assert_array_equal(result["y"], [[5.0]])
    batcher.close()
