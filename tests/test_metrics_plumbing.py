"""The metrics endpoint, the per-job training series and the device memory.

These run on a registry of their own and a real HTTP endpoint; the scrape of a
whole running server is covered by test_prometheus.py.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from kerasrpc.service.device_memory import DeviceMemory, DeviceMemoryCollector
from kerasrpc.service.metrics import ServiceMetrics
from kerasrpc.service.metrics_http import (
    MetricsEndpoint,
    parse_address,
    start_metrics_endpoint,
)
from kerasrpc.service.settings import SettingsError
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.tools import require_tool

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(endpoint: MetricsEndpoint) -> str:
    with urllib.request.urlopen(endpoint.url, timeout=5) as response:
        return str(response.read().decode())


def samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def names(found: Samples) -> set[str]:
    return {name for name, _ in found}


@pytest.fixture
def metrics() -> ServiceMetrics:
    return ServiceMetrics(CollectorRegistry(), job_series_retention_seconds=600)


@pytest.fixture
def endpoint(metrics: ServiceMetrics) -> Iterator[MetricsEndpoint]:
    running = start_metrics_endpoint("127.0.0.1:0", metrics.registry)
    yield running
    running.stop()


def record(metrics: ServiceMetrics, job_id: str, step: int, cost: float) -> None:
    metrics.record_step(
        job_id,
        "mnist",
        cost=cost,
        metrics={"accuracy": 0.5 + step / 100},
        learning_rate=0.01,
        step=step,
        epoch=1,
        examples_per_second=1000.0 + step,
    )


def test_endpoint_binds_a_free_port_and_serves_the_registry(
    endpoint: MetricsEndpoint, metrics: ServiceMetrics
) -> None:
    record(metrics, "job-1", step=7, cost=0.25)

    found = samples(scrape(endpoint))

    assert endpoint.port > 0
    assert endpoint.address == f"127.0.0.1:{endpoint.port}"
    assert value(found, "kerasrpc_training_cost", job_id="job-1", model="mnist") == (
        0.25
    )
    assert "process_resident_memory_bytes" in names(found)
    assert "python_info" in names(found)
    assert "python_gc_collections_total" in names(found)


def test_stop_closes_the_port(metrics: ServiceMetrics) -> None:
    running = start_metrics_endpoint("127.0.0.1:0", metrics.registry)
    running.stop()

    with pytest.raises(urllib.error.URLError):
        scrape(running)


@pytest.mark.parametrize(
    "address", ["9464", "localhost:", "host:port", ":9464", "127.0.0.1:70000"]
)
def test_malformed_address_is_refused_with_the_value(address: str) -> None:
    with pytest.raises(SettingsError, match="expected host:port") as raised:
        parse_address(address)

    assert repr(address) in str(raised.value)


def test_ipv6_address_is_parsed() -> None:
    assert parse_address("[::1]:9464") == ("::1", 9464)


def test_a_taken_port_is_reported_with_the_address(
    endpoint: MetricsEndpoint, metrics: ServiceMetrics
) -> None:
    with pytest.raises(OSError, match=r"metrics_address '127\.0\.0\.1:\d+': cannot"):
        start_metrics_endpoint(endpoint.address, metrics.registry)


def test_promtool_finds_nothing_to_report_in_the_exposition(
    endpoint: MetricsEndpoint, metrics: ServiceMetrics
) -> None:
    record(metrics, "job-1", step=3, cost=1.5)
    metrics.set_job_counts({"running": 1, "queued": 0})
    metrics.predict_latency.labels("mnist", "kerasrpc").observe(0.01)
    promtool = require_tool("promtool", "apt: prometheus")

    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=scrape(endpoint),
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_record_step_sets_every_training_gauge(
    endpoint: MetricsEndpoint, metrics: ServiceMetrics
) -> None:
    record(metrics, "job-1", step=1, cost=2.0)
    record(metrics, "job-1", step=32, cost=0.5)

    found = samples(scrape(endpoint))

    job = {"job_id": "job-1", "model": "mnist"}
    assert value(found, "kerasrpc_training_cost", **job) == 0.5
    assert value(found, "kerasrpc_training_step", **job) == 32
    assert value(found, "kerasrpc_training_epoch", **job) == 1
    assert value(found, "kerasrpc_training_learning_rate", **job) == 0.01
    assert value(found, "kerasrpc_training_examples_per_second", **job) == 1032
    assert value(found, "kerasrpc_training_job_running", **job) == 1
    assert value(found, "kerasrpc_training_metric", metric="accuracy", **job) == (
        pytest.approx(0.82)
    )


def test_set_job_counts_zeroes_states_left_out(
    endpoint: MetricsEndpoint, metrics: ServiceMetrics
) -> None:
    metrics.set_job_counts({"queued": 2, "running": 1})
    metrics.set_job_counts({"running": 1, "succeeded": 2})

    found = samples(scrape(endpoint))

    assert value(found, "kerasrpc_training_jobs", state="queued") == 0
    assert value(found, "kerasrpc_training_jobs", state="running") == 1
    assert value(found, "kerasrpc_training_jobs", state="succeeded") == 2


def test_finished_job_series_go_at_the_first_scrape_after_retention() -> None:
    metrics = ServiceMetrics(CollectorRegistry(), job_series_retention_seconds=0.2)
    running = start_metrics_endpoint("127.0.0.1:0", metrics.registry)
    try:
        record(metrics, "old", step=5, cost=1.0)
        record(metrics, "live", step=5, cost=1.0)
        metrics.job_finished("old", "mnist", ["accuracy"])

        kept = samples(scrape(running))
        threading.Event().wait(0.3)
        swept = samples(scrape(running))
    finally:
        running.stop()

    old = {"job_id": "old", "model": "mnist"}
    assert value(kept, "kerasrpc_training_job_running", **old) == 0
    assert value(kept, "kerasrpc_training_cost", **old) == 1.0
    assert not any(("job_id", "old") in labels for _, labels in swept)
    assert value(swept, "kerasrpc_training_cost", job_id="live", model="mnist") == 1


METRIC = "kerasrpc_training_metric"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def clocked_metrics(clock: FakeClock, retention: float = 60) -> ServiceMetrics:
    """Return metrics whose finished jobs' series expire on `clock`."""
    return ServiceMetrics(
        CollectorRegistry(), job_series_retention_seconds=retention, clock=clock
    )


def job_sample(
    metrics: ServiceMetrics, job_id: str, name: str = "kerasrpc_training_cost"
) -> float | None:
    """Return a job's exported sample, or None when it has no series."""
    labels = {"job_id": job_id, "model": "mnist"}
    if name == METRIC:
        labels["metric"] = "accuracy"
    return metrics.registry.get_sample_value(name, labels)


def test_series_stay_for_the_retention_then_go() -> None:
    clock = FakeClock()
    metrics = clocked_metrics(clock, retention=60)
    record(metrics, "a", step=4, cost=1.0)
    metrics.job_finished("a", "mnist", ["accuracy", "loss"])

    clock.now += 59
    kept = job_sample(metrics, "a"), job_sample(metrics, "a", METRIC)
    clock.now += 1

    assert kept == (1.0, 0.54)
    assert job_sample(metrics, "a") is None
    assert job_sample(metrics, "a", METRIC) is None
    assert metrics.job_series.tracked_jobs() == 0


def test_a_job_that_records_again_is_not_dropped() -> None:
    clock = FakeClock()
    metrics = clocked_metrics(clock, retention=60)
    record(metrics, "a", step=4, cost=1.0)
    metrics.job_finished("a", "mnist", [])

    record(metrics, "a", step=5, cost=2.0)
    clock.now += 120

    assert job_sample(metrics, "a") == 2.0
    assert job_sample(metrics, "a", "kerasrpc_training_job_running") == 1
    assert metrics.job_series.tracked_jobs() == 1


def test_many_finished_jobs_are_swept_in_one_pass() -> None:
    clock = FakeClock()
    metrics = clocked_metrics(clock, retention=10)
    for index in range(500):
        record(metrics, f"job-{index}", step=4, cost=1.0)
        metrics.job_finished(f"job-{index}", "mnist", ["accuracy"])

    clock.now += 10

    assert metrics.job_series.sweep() == 500
    assert metrics.job_series.tracked_jobs() == 0
    assert b"job-" not in generate_latest(metrics.registry)


def test_cpu_memory_is_the_resident_set_and_its_peak_holds(
    endpoint: MetricsEndpoint,
) -> None:
    before = samples(scrape(endpoint))
    ballast = bytearray(64 * 1024 * 1024)
    ballast[::4096] = b"x" * len(ballast[::4096])
    during = samples(scrape(endpoint))
    del ballast
    after = samples(scrape(endpoint))

    def memory(found: Samples, name: str) -> float:
        result = value(found, name, device="/CPU:0")
        assert result is not None
        return result

    grown = memory(during, "kerasrpc_device_memory_bytes") - memory(
        before, "kerasrpc_device_memory_bytes"
    )
    assert grown > 60 * 1024 * 1024
    peak_after = memory(after, "kerasrpc_device_memory_peak_bytes")
    assert peak_after >= memory(during, "kerasrpc_device_memory_bytes")
    assert peak_after >= memory(after, "kerasrpc_device_memory_bytes")


def test_gpu_memory_is_absent_without_tensorflow_running_on_a_gpu(
    endpoint: MetricsEndpoint, metrics: ServiceMetrics
) -> None:
    metrics.set_device("/GPU:0", "test GPU")

    found = samples(scrape(endpoint))

    devices = {
        dict(labels)["device"]
        for name, labels in found
        if name == "kerasrpc_device_memory_bytes"
    }
    assert devices == {"/CPU:0"}
    assert (
        value(found, "kerasrpc_device_info", device="/GPU:0", description=("test GPU"))
        == 1
    )


def test_scrapes_run_in_parallel_with_updates(
    endpoint: MetricsEndpoint, metrics: ServiceMetrics
) -> None:
    stop = threading.Event()

    def train() -> None:
        step = 0
        while not stop.is_set():
            step += 1
            record(metrics, f"job-{step % 7}", step=step, cost=1 / step)
            if step % 50 == 0:
                metrics.job_finished(f"job-{step % 7}", "mnist", ["accuracy"])

    trainer = threading.Thread(target=train)
    trainer.start()
    try:
        scrapes = [samples(scrape(endpoint)) for _ in range(20)]
    finally:
        stop.set()
        trainer.join()

    assert all("kerasrpc_training_cost" in names(found) for found in scrapes[1:])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_chosen_port_is_used(metrics: ServiceMetrics) -> None:
    port = free_port()
    running = start_metrics_endpoint(f"127.0.0.1:{port}", metrics.registry)
    try:
        assert running.port == port
        assert "kerasrpc_device_memory_bytes" in scrape(running)
    finally:
        running.stop()


def test_final_job_states_start_at_zero_so_the_first_failure_counts(
    endpoint: MetricsEndpoint, metrics: ServiceMetrics
) -> None:
    before = samples(scrape(endpoint))
    metrics.training_jobs_finished.labels("failed").inc()
    after = samples(scrape(endpoint))

    name = "kerasrpc_training_jobs_finished_total"
    assert value(before, name, state="failed") == 0
    assert value(before, name, state="succeeded") == 0
    assert value(after, name, state="failed") == 1


def test_a_started_job_shows_running_at_its_first_step(
    endpoint: MetricsEndpoint, metrics: ServiceMetrics
) -> None:
    metrics.job_started("fresh", "mnist")
    metrics.job_started("resumed", "mnist", step=1200)

    found = samples(scrape(endpoint))

    for job_id, step in (("fresh", 0), ("resumed", 1200)):
        job = {"job_id": job_id, "model": "mnist"}
        assert value(found, "kerasrpc_training_job_running", **job) == 1
        assert value(found, "kerasrpc_training_step", **job) == step


@pytest.mark.gpu
def test_gpu_memory_follows_tensorflow_allocations() -> None:
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        pytest.skip("no GPU is visible to TensorFlow")
    collector = DeviceMemoryCollector("/GPU:0")

    def gpu() -> DeviceMemory:
        return {memory.device: memory for memory in collector.read()}["/GPU:0"]

    before = gpu()
    with tf.device("/GPU:0"):
        ballast = tf.ones((64, 1024, 1024), tf.float32)
    during = gpu()
    del ballast
    after = gpu()

    assert during.current_bytes - before.current_bytes >= 256 * 1024 * 1024
    assert after.current_bytes < during.current_bytes
    assert after.peak_bytes >= during.current_bytes


def test_a_job_that_never_started_leaves_no_series(
    endpoint: MetricsEndpoint, metrics: ServiceMetrics
) -> None:
    metrics.job_finished("never-ran", "mnist", ["accuracy"])

    found = samples(scrape(endpoint))

    assert not any(("job_id", "never-ran") in labels for _, labels in found)
