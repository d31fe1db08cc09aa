"""Answer the messages of a bidirectional stream in order, several at once."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

Message = TypeVar("Message")
Answer = TypeVar("Answer")


def answer_in_order(
    messages: Iterator[Message],
    start: Callable[[Message, int], Callable[[], Answer]],
    *,
    in_flight: int,
    name: str,
) -> Iterator[Answer]:
    """Yield the answer to each message of `messages`, in the messages' order.

    A reader thread takes the messages and calls `start(message, index)` on
    each; it returns the computation of that message's answer, which runs in
    a pool of `in_flight` threads. So a stream's small batches merge like
    concurrent requests and its round trips overlap, while answers leave in
    order. An exception from the messages, from `start` or from a
    computation ends the stream after the answers before it. When the caller
    stops iterating (the call ended), the reader stops at its next message.

    Threads are named after `name`.
    """
    answers: queue.Queue[Future[Answer] | BaseException | None] = queue.Queue(in_flight)
    stop = threading.Event()
    with ThreadPoolExecutor(in_flight, thread_name_prefix=name) as pool:
        threading.Thread(
            target=_read,
            args=(messages, start, pool, answers, stop),
            name=f"{name}-reader",
            daemon=True,
        ).start()
        try:
            while (answer := answers.get()) is not None:
                if isinstance(answer, BaseException):
                    raise answer
                yield answer.result()
        finally:
            stop.set()
            # Answers nobody will read are not computed; running ones finish.
            pool.shutdown(wait=False, cancel_futures=True)


def _read(
    messages: Iterator[Message],
    start: Callable[[Message, int], Callable[[], Answer]],
    pool: ThreadPoolExecutor,
    answers: queue.Queue[Future[Answer] | BaseException | None],
    stop: threading.Event,
) -> None:
    """Submit each message's computation in turn; end with None or an error."""
    try:
        for index, message in enumerate(messages):
            if stop.is_set():
                return
            _hand_over(answers, pool.submit(start(message, index)), stop)
    except BaseException as error:
        _hand_over(answers, error, stop)
        return
    _hand_over(answers, None, stop)


def _hand_over(
    answers: queue.Queue[Future[Answer] | BaseException | None],
    answer: Future[Answer] | BaseException | None,
    stop: threading.Event,
) -> None:
    """Queue an answer, waiting for room, unless the stream has ended."""
    while not stop.is_set():
        try:
            answers.put(answer, timeout=0.1)
            return
        except queue.Full:
            continue
