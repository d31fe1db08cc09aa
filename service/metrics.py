"""The Prometheus metrics the service exports.

Every metric lives on a registry passed in by the caller, so each server (and
each test) has its own and nothing is global.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from kerasrpc.service.device_memory import DeviceMemoryCollector
from kerasrpc.service.job_series import JobSeries, StepValues, TrainingGauges
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)
QUEUE_DELAY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
)  # fmt: skip

JOB_LABELS = ("job_id", "model")
FINAL_JOB_STATES = ("succeeded", "failed", "cancelled")
DEFAULT_JOB_SERIES_RETENTION_SECONDS = 600.0


class ServiceMetrics:
    """Hold every metric the service updates, on one registry.

    Args:
        registry: where every metric is registered.
        job_series_retention_seconds: how long a finished job's series stay.
        clock: monotonic seconds, which time that retention.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        job_series_retention_seconds: float = DEFAULT_JOB_SERIES_RETENTION_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self._training(registry, job_series_retention_seconds, clock)
        self._serving(registry)
        self._device(registry)
        self._grpc(registry)
        self._process(registry)

    def set_device(self, name: str, description: str) -> None:
        """Name the device the server computes on, e.g. "/GPU:0"."""
        self.device_info.labels(name, description).set(1)
        self.device_memory.set_device(name)

    def job_started(self, job_id: str, model: str, step: int = 0) -> None:
        """Show a job as running from `step` (0, or where it resumes)."""
        self.job_series.started(job_id, model, step)

    def record_step(
        self,
        job_id: str,
        model: str,
        *,
        cost: float,
        metrics: Mapping[str, float],
        learning_rate: float,
        step: int,
        epoch: int,
        examples_per_second: float,
    ) -> None:
        """Set a job's training gauges to its latest step (call once per chunk)."""
        values = StepValues(
            cost, metrics, learning_rate, step, epoch, examples_per_second
        )
        self.job_series.record(job_id, model, values)

    def job_finished(
        self, job_id: str, model: str, metric_names: Iterable[str] = ()
    ) -> None:
        """Mark a job ended; drop its series after the retention period.

        Counting the job in kerasrpc_training_jobs_finished_total stays the
        caller's step (training_jobs_finished), as only it knows the state.
        """
        self.job_series.finished(job_id, model, metric_names)

    def set_job_counts(self, counts: Mapping[str, int]) -> None:
        """Set how many jobs are in each state; states left out become 0."""
        for state in self._job_states - counts.keys():
            self.training_jobs.labels(state).set(0)
        for state, count in counts.items():
            self.training_jobs.labels(state).set(count)
        self._job_states.update(counts.keys())

    def _training(
        self,
        registry: CollectorRegistry,
        retention: float,
        clock: Callable[[], float],
    ) -> None:
        self._job_gauges(registry, retention, clock)
        self.training_jobs = Gauge(
            "kerasrpc_training_jobs",
            "Training jobs known to the server, by state.",
            ("state",),
            registry=registry,
        )
        self.training_jobs_finished = Counter(
            "kerasrpc_training_jobs_finished_total",
            "Training jobs that ended, by final state.",
            ("state",),
            registry=registry,
        )
        # Exported at 0 from the start, so that increase() sees the first end.
        for state in FINAL_JOB_STATES:
            self.training_jobs_finished.labels(state)
        self._job_states: set[str] = set()

    def _job_gauges(
        self,
        registry: CollectorRegistry,
        retention: float,
        clock: Callable[[], float],
    ) -> None:
        """Create the per-job gauges, exported through the JobSeries collector."""
        self.training_cost = _job_gauge(
            "kerasrpc_training_cost", "Cost of the latest training step, per job."
        )
        self.training_metric = _job_gauge(
            "kerasrpc_training_metric",
            "Value of each training metric after the latest step, per job.",
            "metric",
        )
        self.training_learning_rate = _job_gauge(
            "kerasrpc_training_learning_rate",
            "Learning rate applied at the latest step, per job.",
        )
        self.training_step = _job_gauge(
            "kerasrpc_training_step", "Latest completed training step, per job."
        )
        self.training_epoch = _job_gauge(
            "kerasrpc_training_epoch", "Current training epoch, per job."
        )
        self.training_examples_per_second = _job_gauge(
            "kerasrpc_training_examples_per_second",
            "Training throughput around the latest step, per job.",
        )
        self.training_job_running = _job_gauge(
            "kerasrpc_training_job_running",
            "1 while the job runs, 0 once it ended (kept for the retention).",
        )
        gauges = TrainingGauges(
            cost=self.training_cost,
            metric=self.training_metric,
            learning_rate=self.training_learning_rate,
            step=self.training_step,
            epoch=self.training_epoch,
            examples_per_second=self.training_examples_per_second,
            running=self.training_job_running,
        )
        self.job_series = JobSeries(gauges, retention, clock)
        registry.register(self.job_series)

    def _serving(self, registry: CollectorRegistry) -> None:
        self.models_loaded = Gauge(
            "kerasrpc_models_loaded",
            "Models with at least one version loaded in memory.",
            registry=registry,
        )
        self.model_versions_loaded = Gauge(
            "kerasrpc_model_versions_loaded",
            "Model versions loaded in memory.",
            registry=registry,
        )
        self.predict_requests = Counter(
            "kerasrpc_predict_requests_total",
            "Predict requests, by model, version, protocol and status code.",
            ("model", "version", "protocol", "code"),
            registry=registry,
        )
        self.predict_latency = Histogram(
            "kerasrpc_predict_latency_seconds",
            "Time from receiving a Predict request to answering it.",
            ("model", "protocol"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.predict_batch_size = Histogram(
            "kerasrpc_predict_batch_size",
            "Examples in each batch the model computed, after merging.",
            ("model",),
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.predict_queue_delay = Histogram(
            "kerasrpc_predict_queue_delay_seconds",
            "Time a Predict request waited in the batching queue.",
            ("model",),
            buckets=QUEUE_DELAY_BUCKETS,
            registry=registry,
        )
        self.predict_queue_depth = Gauge(
            "kerasrpc_predict_queue_depth",
            "Predict requests waiting in batching queues.",
            ("model",),
            registry=registry,
        )

    def _device(self, registry: CollectorRegistry) -> None:
        self.device_info = Gauge(
            "kerasrpc_device_info",
            "The device the server computes on (value 1).",
            ("device", "description"),
            registry=registry,
        )
        # kerasrpc_device_memory_bytes and kerasrpc_device_memory_peak_bytes,
        # read at scrape time.
        self.device_memory = DeviceMemoryCollector()
        registry.register(self.device_memory)

    def _grpc(self, registry: CollectorRegistry) -> None:
        labels = ("grpc_type", "grpc_service", "grpc_method")
        self.grpc_started = Counter(
            "grpc_server_started_total",
            "RPCs started on the server.",
            labels,
            registry=registry,
        )
        self.grpc_handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, regardless of success or failure.",
            (*labels, "grpc_code"),
            registry=registry,
        )
        self.grpc_handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Response latency of RPCs handled by the server.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def _process(self, registry: CollectorRegistry) -> None:
        """Add process_*, python_info and python_gc_* for this process."""
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)


def _job_gauge(name: str, documentation: str, *more_labels: str) -> Gauge:
    """Create a gauge labelled by job and model, on no registry of its own."""
    return Gauge(name, documentation, (*JOB_LABELS, *more_labels), registry=None)
