"""A real Prometheus scrapes a real server while it trains and serves.

One Prometheus process scrapes the session server's metrics endpoint every
second and evaluates deploy/prometheus/alerts.yml. A small job trains and
Predict calls (good and bad) are served; then every query of every dashboard
panel must return data through Prometheus's HTTP API, the training gauges must
equal the last streamed step, and the gRPC series must carry their labels.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kerasrpc.client import Client
from kerasrpc.client.errors import KerasRpcError
from kerasrpc.client.specs import parse_message
from kerasrpc.client.tensors import to_tensor
from kerasrpc.service.metrics import FINAL_JOB_STATES
from kerasrpc.v1 import training_service_pb2

from tests.tools import require_tool

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "kerasrpc-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
MODEL = "prometheus-probe"
PREDICT_CALLS = 12
READY_SECONDS = 30.0


@dataclass(frozen=True)
class Prometheus:
    """A running Prometheus and how to ask it."""

    url: str
    process: subprocess.Popen[bytes]

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as reply:
            body = json.loads(reply.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float:
        [sample] = self.query(expr)
        return float(sample["value"][1])

    def wait_for(self, expr: str, timeout: float = READY_SECONDS) -> None:
        """Wait until `expr` returns at least one series."""
        deadline = time.monotonic() + timeout
        while not self.query(expr):
            assert time.monotonic() < deadline, f"no data for {expr} in {timeout}s"
            time.sleep(0.5)


@dataclass(frozen=True)
class Workload:
    """What the test did: the job's last step, and the Predict calls."""

    job_id: str
    last_step: training_service_pb2.StepEvent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_config(directory: Path, target: str) -> Path:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": "kerasrpc", "static_configs": [{"targets": [target]}]}
        ],
    }
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, "prometheus exited at start"
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"prometheus was not ready in {READY_SECONDS}s")


@pytest.fixture(scope="module")
def prometheus(
    server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """Start Prometheus scraping the session server every second."""
    binary = require_tool("prometheus", "apt: prometheus")
    directory = tmp_path_factory.mktemp("prometheus")
    config = write_config(directory, server.metrics_endpoint.address)
    port = free_port()
    log = (directory / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        running = Prometheus(url, process)
        running.wait_for('up{job="kerasrpc"} == 1')
        yield running
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def training_spec() -> training_service_pb2.TrainingSpec:
    """A Dense model on 64 examples of 4 features: 16 steps of 8."""
    rng = np.random.default_rng(3)
    features = rng.normal(size=(64, 4)).astype(np.float32)
    labels = (features @ np.array([[1.0], [-2.0], [0.5], [3.0]], np.float32)) + 1
    spec = parse_message(
        {
            "model_name": MODEL,
            "spec": {
                "sequential": {
                    "input": {"shape": [4], "dtype": "DATA_TYPE_FLOAT32"},
                    "layers": [{"dense": {"units": 1}}],
                }
            },
            "compile": {
                "loss": {"mean_squared_error": {}},
                "optimizer": {"sgd": {}, "learning_rate": {"constant": 0.05}},
                "metrics": [{"mean_absolute_error": {}}],
            },
            "config": {"batch_size": 8, "epochs": 2, "seed": 1},
        },
        training_service_pb2.TrainingSpec(),
    )
    spec.train_data.inline.features.CopyFrom(to_tensor(features))
    spec.train_data.inline.labels.CopyFrom(to_tensor(labels))
    return spec


def train(client: Client) -> tuple[str, training_service_pb2.StepEvent]:
    """Train the spec; return the job id and its last step event."""
    events = list(client.train(training_spec()))

    steps = [event.step for event in events if event.WhichOneof("event") == "step"]
    final = events[-1].state
    assert final.state == training_service_pb2.JOB_STATE_SUCCEEDED, final.message
    return events[-1].job_id, steps[-1]


def predict(client: Client) -> None:
    """Serve good Predict calls and some that fail, by more than one caller."""
    batch = np.ones((3, 4), np.float32)
    for _ in range(PREDICT_CALLS):
        client.predict(MODEL, batch)
    for bad in (np.ones((2, 7), np.float32), np.ones((2, 4), np.int64)):
        with pytest.raises(KerasRpcError):
            client.predict(MODEL, bad)
    with pytest.raises(KerasRpcError, match="NOT_FOUND"):
        client.predict("no-such-model", batch)


@pytest.fixture(scope="module")
def workload(server: Any, prometheus: Prometheus) -> Workload:
    """Train and predict, then wait until Prometheus has scraped the results."""
    with Client(server.address, timeout=60) as client:
        job_id, last_step = train(client)
        predict(client)

    prometheus.wait_for(
        f'kerasrpc_training_step{{job_id="{job_id}"}} == {last_step.step}'
    )
    prometheus.wait_for(
        f'sum(kerasrpc_predict_requests_total{{model="{MODEL}"}}) '
        f">= {PREDICT_CALLS + 2}"
    )
    prometheus.wait_for('grpc_server_handled_total{grpc_code="NOT_FOUND"}')
    # rate() needs two samples of a series; take three after the last call.
    prometheus.wait_for(
        f'count_over_time(kerasrpc_predict_requests_total{{model="{MODEL}", '
        f'code="OK"}}[1m]) >= 3'
    )
    return Workload(job_id, last_step)


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]


def concrete(expr: str) -> str:
    """Fill in the dashboard's variables as Grafana would for the last minute."""
    return expr.replace("$__rate_interval", "1m").replace("$instance", ".*")


@pytest.mark.usefixtures("workload")
def test_every_dashboard_query_returns_data(prometheus: Prometheus) -> None:
    empty = [
        f"{title}: {expr}"
        for title, expr in dashboard_queries()
        if not prometheus.query(concrete(expr))
    ]

    assert not empty, "queries without data:\n" + "\n".join(empty)


def test_training_gauges_equal_the_last_streamed_step(
    prometheus: Prometheus, workload: Workload
) -> None:
    job = f'job_id="{workload.job_id}", model="{MODEL}"'
    step = workload.last_step

    assert prometheus.value(f"kerasrpc_training_step{{{job}}}") == step.step
    assert prometheus.value(f"kerasrpc_training_epoch{{{job}}}") == step.epoch
    assert prometheus.value(f"kerasrpc_training_cost{{{job}}}") == pytest.approx(
        step.cost, rel=1e-6
    )
    assert prometheus.value(
        f"kerasrpc_training_learning_rate{{{job}}}"
    ) == pytest.approx(step.learning_rate, rel=1e-6)
    assert step.metrics
    for name, expected in step.metrics.items():
        found = prometheus.value(f'kerasrpc_training_metric{{{job}, metric="{name}"}}')
        assert found == pytest.approx(expected, rel=1e-6), name
    assert prometheus.value(f"kerasrpc_training_job_running{{{job}}}") == 0


def test_grpc_handled_series_carry_type_service_method_and_code(
    prometheus: Prometheus, workload: Workload
) -> None:
    del workload
    handled = "grpc_server_handled_total"
    predict = 'grpc_service="kerasrpc.v1.InferenceService", grpc_method="Predict"'
    train = 'grpc_service="kerasrpc.v1.TrainingService", grpc_method="Train"'

    ok = prometheus.value(f'{handled}{{{predict}, grpc_type="unary", grpc_code="OK"}}')
    assert ok >= PREDICT_CALLS
    assert prometheus.query(f'{handled}{{{predict}, grpc_code="NOT_FOUND"}}')
    assert prometheus.query(f'{handled}{{{predict}, grpc_code="INVALID_ARGUMENT"}}')
    assert (
        prometheus.value(
            f'{handled}{{{train}, grpc_type="server_stream", grpc_code="OK"}}'
        )
        >= 1
    )
    for sample in prometheus.query(handled):
        assert set(sample["metric"]) == {
            "__name__",
            "instance",
            "job",
            "grpc_type",
            "grpc_service",
            "grpc_method",
            "grpc_code",
        }
        assert sample["metric"]["grpc_type"] in (
            "unary",
            "client_stream",
            "server_stream",
            "bidi_stream",
        )


@pytest.mark.usefixtures("workload")
def test_alert_rules_evaluate_on_live_data_without_error(
    prometheus: Prometheus,
) -> None:
    alerts = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]

    deadline = time.monotonic() + READY_SECONDS
    while any(rule["health"] == "unknown" for rule in live_rules(prometheus)):
        assert time.monotonic() < deadline, "the rules were never evaluated"
        time.sleep(0.5)

    rules = live_rules(prometheus)
    assert {rule["name"] for rule in rules} == {rule["alert"] for rule in alerts}
    assert all(rule["health"] == "ok" for rule in rules), rules
    assert prometheus.value('up{job="kerasrpc"}') == 1


def live_rules(prometheus: Prometheus) -> list[dict[str, Any]]:
    return [
        rule
        for group in prometheus.get("/api/v1/rules")["groups"]
        for rule in group["rules"]
    ]


def test_promtool_finds_nothing_to_report_on_the_live_endpoint(server: Any) -> None:
    promtool = require_tool("promtool", "apt: prometheus")
    with urllib.request.urlopen(server.metrics_endpoint.url, timeout=5) as reply:
        exposition = reply.read()

    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        check=False,
        timeout=30,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == b""


def test_rpcs_are_counted_by_type_service_method_and_code(
    server: Any, prometheus: Prometheus
) -> None:
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(3):
            health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        with pytest.raises(grpc.RpcError) as missing:
            health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    check = (
        'grpc_type="unary", grpc_service="grpc.health.v1.Health", grpc_method="Check"'
    )
    prometheus.wait_for(f'grpc_server_handled_total{{{check}, grpc_code="NOT_FOUND"}}')
    ok = prometheus.value(f'grpc_server_handled_total{{{check}, grpc_code="OK"}}')
    started = prometheus.value(f"grpc_server_started_total{{{check}}}")
    timed = prometheus.value(f"grpc_server_handling_seconds_count{{{check}}}")
    assert ok >= 3
    assert started == timed >= ok + 1


def test_finished_jobs_are_counted_under_the_states_the_alerts_use(
    prometheus: Prometheus, workload: Workload
) -> None:
    del workload
    finished = prometheus.query("kerasrpc_training_jobs_finished_total")

    assert {sample["metric"]["state"] for sample in finished} == set(FINAL_JOB_STATES)
    assert (
        prometheus.value('kerasrpc_training_jobs_finished_total{state="succeeded"}')
        >= 1
    )
    assert 'state="failed"' in ALERTS.read_text()
