"""Running one job: batches in order, events for every step, checkpoints, stops.

The Python side of the loop. It plans each chunk of steps (cut at checkpoint,
epoch and max_steps boundaries), hands it to the Trainer, turns the stacked
results into one event per step, appends them to the job's log in one write,
and updates the job's gauges once per chunk.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from google.protobuf import timestamp_pb2
from kerasrpc.service.metrics import ServiceMetrics
from kerasrpc.service.training.eventlog import EventLog
from kerasrpc.service.training.loop import ChunkResult, Position, Trainer
from kerasrpc.service.training.plan import Plan
from kerasrpc.v1 import training_service_pb2

MAX_CHUNK_STEPS = 64

Event = training_service_pb2.TrainingEvent


@dataclass(frozen=True)
class Outcome:
    """How a run ended: a final state with its message, or interrupted."""

    state: int
    message: str = ""
    interrupted: bool = False


@dataclass
class RunContext:
    """What a run reports to and how it is told to stop."""

    job_id: str
    log: EventLog
    metrics: ServiceMetrics
    checkpoints: Path
    cancel: threading.Event
    stop: threading.Event
    started: float
    on_step: Callable[[int, int], None]


class JobRunner:
    """Drive a Trainer through a plan from a position to the end or a stop."""

    def __init__(self, plan: Plan, trainer: Trainer, context: RunContext) -> None:
        self.plan = plan
        self.trainer = trainer
        self.context = context
        self.config = plan.config
        self.total = plan.total_steps

    def run(self, position: Position) -> Outcome:
        """Train from `position`; return how the run ended."""
        while position.step < self.total:
            order = self._epoch_order(position.epoch)
            outcome = self._run_epoch(position, order)
            if outcome is not None:
                return outcome
        return Outcome(training_service_pb2.JOB_STATE_SUCCEEDED)

    def _epoch_order(self, epoch: int) -> npt.NDArray[np.int64]:
        count = len(self.plan.train)
        if not self.config.shuffle:
            return np.arange(count, dtype=np.int64)
        generator = np.random.default_rng([self.config.seed & 0xFFFFFFFF, epoch])
        return generator.permutation(count).astype(np.int64)

    def _run_epoch(
        self, position: Position, order: npt.NDArray[np.int64]
    ) -> Outcome | None:
        steps_per_epoch = self.plan.steps_per_epoch
        while True:
            stopped = self._check_stop(position)
            if stopped is not None:
                return stopped
            size = self._chunk_size(position, steps_per_epoch, len(order))
            batches = self._batches(order, position.batch, size)
            failure = self._run_chunk(position, batches)
            if failure is not None:
                return failure

            epoch_done = position.batch == steps_per_epoch
            if epoch_done or position.step == self.total:
                self._end_epoch(position, steps_per_epoch)
                return None
            if position.step % self.config.checkpoint_every_steps == 0:
                self._checkpoint(position)

    def _chunk_size(self, position: Position, steps_per_epoch: int, count: int) -> int:
        batch_size = self.config.batch_size
        full_batches = count // batch_size
        if position.batch >= full_batches:
            return 1
        every = self.config.checkpoint_every_steps
        return max(
            1,
            min(
                MAX_CHUNK_STEPS,
                full_batches - position.batch,
                self.total - position.step,
                every - position.step % every,
            ),
        )

    def _batches(
        self, order: npt.NDArray[np.int64], first: int, size: int
    ) -> npt.NDArray[np.int64]:
        batch_size = self.config.batch_size
        rows = order[first * batch_size : (first + size) * batch_size]
        return rows.reshape(size, -1)

    def _run_chunk(
        self, position: Position, batches: npt.NDArray[np.int64]
    ) -> Outcome | None:
        begun = time.monotonic()
        result = self.trainer.run_chunk(batches)
        elapsed = max(time.monotonic() - begun, 1e-9)
        steps = len(result.costs)
        bad = ~np.isfinite(result.costs)
        good = int(np.argmax(bad)) if bad.any() else steps

        throughput = batches.size / elapsed
        self._append_steps(position, result, good, throughput, elapsed)
        position.step += good
        position.batch += good
        position.epoch_cost_sum += float(result.costs[:good].sum())
        if good:
            self._record_gauges(position, result, good - 1, throughput)
        if good < steps:
            word = "NaN" if math.isnan(result.costs[good]) else "infinite"
            return Outcome(
                training_service_pb2.JOB_STATE_FAILED,
                f"cost became {word} at step {position.step + 1}",
            )
        self.context.on_step(position.step, position.epoch)
        return None

    def _append_steps(
        self,
        position: Position,
        result: ChunkResult,
        count: int,
        throughput: float,
        elapsed: float,
    ) -> None:
        now = time.time()
        wall = now - self.context.started
        events = []
        for i in range(count):
            share = (count - 1 - i) / max(count, 1) * elapsed
            step = training_service_pb2.StepEvent(
                step=position.step + i + 1,
                epoch=position.epoch,
                cost=float(result.costs[i]),
                metrics={name: float(v[i]) for name, v in result.metrics.items()},
                learning_rate=float(result.learning_rates[i]),
                examples_per_second=throughput,
                wall_time_seconds=wall - share,
            )
            events.append(
                Event(job_id=self.context.job_id, time=_stamp(now - share), step=step)
            )
        if events:
            self.context.log.append(events)

    def _record_gauges(
        self, position: Position, result: ChunkResult, last: int, throughput: float
    ) -> None:
        self.context.metrics.record_step(
            self.context.job_id,
            self.plan.model_name,
            cost=float(result.costs[last]),
            metrics={name: float(v[last]) for name, v in result.metrics.items()},
            learning_rate=float(result.learning_rates[last]),
            step=position.step,
            epoch=position.epoch,
            examples_per_second=throughput,
        )

    def _end_epoch(self, position: Position, steps_per_epoch: int) -> None:
        batches = max(position.batch, 1)
        end = training_service_pb2.EpochEndEvent(
            epoch=position.epoch,
            step=position.step,
            cost=position.epoch_cost_sum / batches,
            metrics=self.trainer.metric_values(),
        )
        if self.plan.validation is not None:
            cost, values = self.trainer.validate(self.config.batch_size)
            end.validation_cost = cost
            end.validation_metrics.update(values)
        event = Event(
            job_id=self.context.job_id, time=_stamp(time.time()), epoch_end=end
        )
        self.context.log.append([event])

        position.epoch += 1
        position.batch = 0
        position.epoch_cost_sum = 0.0
        self.trainer.reset_metrics()
        if position.step < self.total:
            self._checkpoint(position)

    def _checkpoint(self, position: Position) -> None:
        self.context.log.sync()
        self.trainer.save(self.context.checkpoints, position)

    def _check_stop(self, position: Position) -> Outcome | None:
        if self.context.cancel.is_set():
            return Outcome(training_service_pb2.JOB_STATE_CANCELLED, "cancelled")
        if self.context.stop.is_set():
            self._checkpoint(position)
            return Outcome(training_service_pb2.JOB_STATE_RUNNING, interrupted=True)
        return None


def _stamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp
