"""What the training gauges cost: per record_step call and per scrape.

Baseline: setting the same gauges by label values on every call
(`gauge.labels(job_id, model).set(value)`), the usual prometheus_client idiom.
record_step resolves each job's children once and caches them.

    .venv/bin/python -m bench.metrics_overhead
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kerasrpc.service.metrics import ServiceMetrics
from prometheus_client import CollectorRegistry, generate_latest

CALLS = 20_000
METRICS = {"accuracy": 0.5, "auc": 0.75, "mean_absolute_error": 0.1}
SCRAPE_JOBS = (1, 100, 1000)


def per_call(function: Callable[[int], None], calls: int = CALLS) -> float:
    """Return the best of three mean seconds per call."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for step in range(calls):
            function(step)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def cached(metrics: ServiceMetrics) -> Callable[[int], None]:
    def record(step: int) -> None:
        metrics.record_step(
            "job-1",
            "mnist",
            cost=0.5,
            metrics=METRICS,
            learning_rate=0.01,
            step=step,
            epoch=1,
            examples_per_second=1000.0,
        )

    return record


def by_labels(metrics: ServiceMetrics) -> Callable[[int], None]:
    def record(step: int) -> None:
        labels = ("job-1", "mnist")
        metrics.training_cost.labels(*labels).set(0.5)
        metrics.training_learning_rate.labels(*labels).set(0.01)
        metrics.training_step.labels(*labels).set(step)
        metrics.training_epoch.labels(*labels).set(1)
        metrics.training_examples_per_second.labels(*labels).set(1000.0)
        metrics.training_job_running.labels(*labels).set(1)
        for name, value in METRICS.items():
            metrics.training_metric.labels(*labels, name).set(value)

    return record


def scrape_seconds(jobs: int) -> float:
    metrics = ServiceMetrics(CollectorRegistry())
    for index in range(jobs):
        metrics.record_step(
            f"job-{index}",
            "mnist",
            cost=0.5,
            metrics=METRICS,
            learning_rate=0.01,
            step=index,
            epoch=1,
            examples_per_second=1000.0,
        )
    return per_call(lambda _: generate_latest(metrics.registry), calls=20)


def main() -> None:
    """Print the per-call costs, their ratio, and scrape times."""
    ours = per_call(cached(ServiceMetrics(CollectorRegistry())))
    baseline = per_call(by_labels(ServiceMetrics(CollectorRegistry())))
    print(f"record_step: {ours * 1e6:.2f} us per call")
    print(f"baseline (labels().set() per gauge): {baseline * 1e6:.2f} us per call")
    print(f"ratio record_step / baseline: {ours / baseline:.2f}")
    print(f"per training step at one call per 32 steps: {ours / 32 * 1e9:.0f} ns")
    for jobs in SCRAPE_JOBS:
        print(f"scrape with {jobs} job(s): {scrape_seconds(jobs) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
