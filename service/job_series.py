"""Per-job training series: cheap updates while a job runs, removal after it ends.

Each running job owns a handful of labelled gauge children. Looking children up
by label values on every update costs a dict lookup and a lock per gauge, so
they are resolved once per job and cached here. When a job ends its series stay
visible for a retention period (so dashboards and alerts see the final values),
then they are removed. Removal is a lazy sweep, run on each scrape and each job
end, so no timer thread exists and the work is bounded by the finished jobs.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import Gauge
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

logger = logging.getLogger("kerasrpc.service.metrics")

JobKey = tuple[str, str]


@dataclass(frozen=True)
class TrainingGauges:
    """The labelled gauges that carry one series per job."""

    cost: Gauge
    metric: Gauge
    learning_rate: Gauge
    step: Gauge
    epoch: Gauge
    examples_per_second: Gauge
    running: Gauge

    def all(self) -> tuple[Gauge, ...]:
        """Return every per-job gauge."""
        return (*self.per_job(), self.metric)

    def per_job(self) -> tuple[Gauge, ...]:
        """Return the gauges labelled by job and model alone."""
        return (
            self.cost,
            self.learning_rate,
            self.step,
            self.epoch,
            self.examples_per_second,
            self.running,
        )


@dataclass(frozen=True)
class StepValues:
    """What one training step reports to the per-job gauges."""

    cost: float
    metrics: Mapping[str, float]
    learning_rate: float
    step: int
    epoch: int
    examples_per_second: float


@dataclass
class _JobChildren:
    """The resolved gauge children of one job, and its metric children."""

    cost: Gauge
    learning_rate: Gauge
    step: Gauge
    epoch: Gauge
    examples_per_second: Gauge
    running: Gauge
    metrics: dict[str, Gauge] = field(default_factory=dict)
    other_metric_names: set[str] = field(default_factory=set)


class JobSeries(Collector):
    """Update the series of running jobs and drop those of finished ones.

    The gauges are not registered themselves: this collector is, and each
    scrape first sweeps the series whose retention has passed, then yields
    the gauges, so a scrape never shows a series past its retention.
    """

    def __init__(
        self,
        gauges: TrainingGauges,
        retention_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._gauges = gauges
        self._retention = retention_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._jobs: dict[JobKey, _JobChildren] = {}
        self._expiry: list[tuple[float, JobKey]] = []
        self._finished: dict[JobKey, float] = {}

    def started(self, job_id: str, model: str, step: int = 0) -> None:
        """Mark a job running from `step` (0, or where it resumes)."""
        children = self._children((job_id, model))
        children.step.set(step)
        children.running.set(1)

    def record(
        self,
        job_id: str,
        model: str,
        values: StepValues,
    ) -> None:
        """Set a running job's gauges to the values of its latest step."""
        children = self._children((job_id, model))
        children.cost.set(values.cost)
        children.learning_rate.set(values.learning_rate)
        children.step.set(values.step)
        children.epoch.set(values.epoch)
        children.examples_per_second.set(values.examples_per_second)
        children.running.set(1)
        for name, value in values.metrics.items():
            self._metric_child(job_id, model, children, name).set(value)

    def finished(self, job_id: str, model: str, metric_names: Iterable[str]) -> None:
        """Mark a job ended; its series go once the retention has passed."""
        key = (job_id, model)
        deadline = self._clock() + self._retention
        with self._lock:
            children = self._jobs.get(key)
            if children is None:
                return  # it never started: it has no series
            children.other_metric_names.update(metric_names)
            self._finished[key] = deadline
            heapq.heappush(self._expiry, (deadline, key))

        children.running.set(0)
        self.sweep()

    def sweep(self) -> int:
        """Remove the series of jobs whose retention has passed; return how many."""
        now = self._clock()
        expired = []
        with self._lock:
            while self._expiry and self._expiry[0][0] <= now:
                deadline, key = heapq.heappop(self._expiry)
                if self._finished.get(key) == deadline:
                    del self._finished[key]
                    expired.append((key, self._jobs.pop(key, None)))

        for key, children in expired:
            self._remove(key, children)
        return len(expired)

    def collect(self) -> Iterator[Metric]:
        """Sweep expired series, then yield the per-job gauges."""
        self.sweep()
        for gauge in self._gauges.all():
            yield from gauge.collect()

    def describe(self) -> Iterator[Metric]:
        """Declare the per-job gauges' names without sweeping."""
        for gauge in self._gauges.all():
            yield from gauge.describe()

    def tracked_jobs(self) -> int:
        """Return how many jobs have series now."""
        with self._lock:
            return len(self._jobs)

    def _children(self, key: JobKey) -> _JobChildren:
        children = self._jobs.get(key)
        if children is not None and key not in self._finished:
            return children

        with self._lock:
            self._finished.pop(key, None)
            children = self._jobs.get(key)
            if children is None:
                children = self._resolve(key)
                self._jobs[key] = children
        return children

    def _resolve(self, key: JobKey) -> _JobChildren:
        gauges = self._gauges
        return _JobChildren(
            cost=gauges.cost.labels(*key),
            learning_rate=gauges.learning_rate.labels(*key),
            step=gauges.step.labels(*key),
            epoch=gauges.epoch.labels(*key),
            examples_per_second=gauges.examples_per_second.labels(*key),
            running=gauges.running.labels(*key),
        )

    def _metric_child(
        self, job_id: str, model: str, children: _JobChildren, name: str
    ) -> Gauge:
        child = children.metrics.get(name)
        if child is None:
            child = self._gauges.metric.labels(job_id, model, name)
            children.metrics[name] = child
        return child

    def _remove(self, key: JobKey, children: _JobChildren | None) -> None:
        for gauge in self._gauges.per_job():
            gauge.remove(*key)
        names = set()
        if children is not None:
            names = children.metrics.keys() | children.other_metric_names
        for name in names:
            self._gauges.metric.remove(*key, name)
        logger.debug("dropped the metric series of finished job %s", key[0])
