"""Answering a stream's messages in order, several at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from kerasrpc.service.servicers.ordered import answer_in_order


def test_answers_leave_in_order_though_computed_out_of_order() -> None:
    delays = [0.2, 0.0, 0.1, 0.0]

    def start(message: int, index: int) -> Callable[[], int]:
        def compute() -> int:
            time.sleep(delays[index])
            return message * 10

        return compute

    answers = list(answer_in_order(iter([1, 2, 3, 4]), start, in_flight=4, name="t"))

    assert answers == [10, 20, 30, 40]


def test_a_failed_answer_ends_the_stream_and_queued_ones_are_not_computed() -> None:
    computed: list[int] = []
    lock = threading.Lock()
    third_submitted = threading.Event()

    def start(message: int, index: int) -> Callable[[], int]:
        if index == 2:
            third_submitted.set()

        def compute() -> int:
            if index == 0:
                third_submitted.wait(10)
                time.sleep(0.05)  # the third is in the pool's queue by now
                raise ValueError("the first message is bad")
            with lock:
                computed.append(index)
            time.sleep(0.3)
            return index

        return compute

    # One computation at a time: when the first fails, the second and third
    # wait in the pool. The second may start before the stream ends; the
    # third, which waits for it, must never run.
    answers = answer_in_order(iter(range(10)), start, in_flight=1, name="t")

    with pytest.raises(ValueError, match="the first message is bad"):
        next(answers)
    time.sleep(0.7)  # time enough for both to run, had they not been dropped

    assert computed in ([], [1])
