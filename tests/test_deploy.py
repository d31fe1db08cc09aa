"""The deployment files: compose, Kubernetes, dashboard and alert rules.

No container engine or cluster runs here, so these check what can be checked
without one: the files parse, validate against the Kubernetes schemas, refer to
files that exist, agree with each other and with the metrics the service
exports, and the alert rules pass promtool's own checks and unit tests.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kerasrpc.service.metrics import ServiceMetrics
from kerasrpc.v1 import inference_service_pb2
from prometheus_client import CollectorRegistry

from tests.tools import require_tool

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "kerasrpc-dashboard.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
KUBERNETES = DEPLOY / "kubernetes"
KUBERNETES_VERSION = "1.37.0"
INFERENCE_SERVICE = inference_service_pb2.DESCRIPTOR.services_by_name[
    "InferenceService"
].full_name


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def exported_names() -> set[str]:
    """Return every sample name a fresh server's registry exports."""
    registry = CollectorRegistry()
    ServiceMetrics(registry)
    names = {"up"}
    for family in registry.collect():
        names.add(family.name)
        names.update(f"{family.name}{suffix}" for suffix in SAMPLE_SUFFIXES)
    return names


SAMPLE_SUFFIXES = ("_total", "_bucket", "_sum", "_count")
METRIC_NAME = re.compile(r"\b((?:kerasrpc|grpc_server|process|python)_[a-z_]+)\b")


def metric_names(expr: str) -> set[str]:
    return set(METRIC_NAME.findall(expr))


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_queries() -> list[tuple[str, str]]:
    """Return (panel title, expr) for every query of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = require_tool("promtool", "apt: prometheus")
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, check=False, timeout=60
    )


# --- compose ---------------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(DEPLOY / "compose.yaml")
    return loaded


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Map each bind-mounted container path to its file under deploy/."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = DEPLOY / source
    return mounts


def test_compose_builds_the_service_from_the_repository_dockerfile() -> None:
    service = compose()["services"]["kerasrpc"]

    context = (DEPLOY / service["build"]["context"]).resolve()
    assert context == ROOT
    assert (context / service["build"]["dockerfile"]).is_file()


def test_compose_reserves_one_nvidia_gpu() -> None:
    service = compose()["services"]["kerasrpc"]

    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert service["environment"]["KERASRPC_DEVICE"] == "0"


def test_compose_mounts_only_files_that_exist() -> None:
    for name, service in compose()["services"].items():
        for target, source in bind_mounts(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target})"


def test_prometheus_in_compose_scrapes_the_service_and_loads_the_rules() -> None:
    services = compose()["services"]
    mounts = bind_mounts(services["prometheus"])
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")

    [config_path] = [
        a.split("=", 1)[1]
        for a in services["prometheus"]["command"]
        if a.startswith("--config.file=")
    ]
    assert mounts[config_path].resolve() == DEPLOY / "prometheus" / "prometheus.yml"
    for rule_file in config["rule_files"]:
        assert mounts[rule_file].resolve() == ALERTS
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "kerasrpc"]
    metrics_port = services["kerasrpc"]["environment"]["KERASRPC_METRICS_ADDRESS"]
    assert job["static_configs"][0]["targets"] == [
        f"kerasrpc:{metrics_port.rpartition(':')[2]}"
    ]


def test_grafana_in_compose_provisions_the_dashboard_and_the_datasource() -> None:
    mounts = bind_mounts(compose()["services"]["grafana"])
    provisioning = mounts["/etc/grafana/provisioning"]
    [provider] = load_yaml(provisioning / "dashboards" / "kerasrpc.yaml")["providers"]
    [source] = load_yaml(provisioning / "datasources" / "prometheus.yaml")[
        "datasources"
    ]

    dashboards = {
        target: path.resolve()
        for target, path in mounts.items()
        if target.startswith(provider["options"]["path"] + "/")
    }
    assert list(dashboards.values()) == [DASHBOARD]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"


# --- Kubernetes --------------------------------------------------------------


def manifest(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(KUBERNETES / name)
    return loaded


@pytest.mark.parametrize("name", ["deployment.yaml", "pvc.yaml", "service.yaml"])
def test_manifest_is_valid_against_the_kubernetes_schema(name: str) -> None:
    kubernetes_validate.validate(manifest(name), KUBERNETES_VERSION, strict=True)


def test_schema_validation_catches_a_misspelt_field() -> None:
    broken = manifest("deployment.yaml")
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def container() -> dict[str, Any]:
    spec = manifest("deployment.yaml")["spec"]["template"]["spec"]
    found: dict[str, Any] = spec["containers"][0]
    return found


def test_pod_takes_one_gpu_and_is_configured_by_environment() -> None:
    items = container()["env"]
    env = {item["name"]: item["value"] for item in items if "value" in item}
    derived = {item["name"]: item["valueFrom"] for item in items if "valueFrom" in item}

    assert container()["resources"]["limits"]["nvidia.com/gpu"] == 1
    # TensorFlow's op thread pool is sized to the CPUs the pod asks for.
    assert derived["KERASRPC_INTRA_OP_THREADS"] == {
        "resourceFieldRef": {"resource": "requests.cpu"}
    }
    assert env["KERASRPC_LISTEN"] == "0.0.0.0:50051"
    assert env["KERASRPC_METRICS_ADDRESS"] == "0.0.0.0:9464"
    assert env["KERASRPC_DEVICE"] == "0"


def test_probes_ask_the_grpc_health_service() -> None:
    probes = container()

    for probe in ("startupProbe", "livenessProbe"):
        assert probes[probe]["grpc"] == {"port": 50051, "service": ""}
    assert probes["readinessProbe"]["grpc"] == {
        "port": 50051,
        "service": INFERENCE_SERVICE,
    }


def test_state_directory_is_the_claimed_volume() -> None:
    pod = manifest("deployment.yaml")["spec"]["template"]["spec"]
    env = {i["name"]: i["value"] for i in container()["env"] if "value" in i}

    [volume] = pod["volumes"]
    [mount] = container()["volumeMounts"]
    assert (
        volume["persistentVolumeClaim"]["claimName"]
        == (manifest("pvc.yaml")["metadata"]["name"])
    )
    assert mount == {"name": volume["name"], "mountPath": env["KERASRPC_STATE_DIR"]}


def test_service_exposes_the_container_ports_to_the_pods() -> None:
    service = manifest("service.yaml")["spec"]
    pod_labels = manifest("deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    container_ports = {port["name"] for port in container()["ports"]}

    assert {port["targetPort"] for port in service["ports"]} == container_ports
    assert service["selector"].items() <= pod_labels.items()


PODMONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "minLength": 1}},
        },
        "spec": {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object",
                    "required": ["matchLabels"],
                    "properties": {"matchLabels": {"type": "object"}},
                },
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": "^[0-9]+[smh]$"},
                        },
                    },
                },
            },
        },
    },
}


def test_podmonitor_scrapes_the_metrics_port_of_the_pods() -> None:
    monitor = manifest("podmonitor.yaml")
    pod_labels = manifest("deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    ports = {port["name"]: port["containerPort"] for port in container()["ports"]}

    jsonschema.validate(monitor, PODMONITOR_SCHEMA)
    spec = monitor["spec"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    assert ports[spec["podMetricsEndpoints"][0]["port"]] == 9464
    assert pod_labels[spec["jobLabel"]] == "kerasrpc"


def test_kustomization_lists_every_manifest() -> None:
    listed = set(manifest("kustomization.yaml")["resources"])

    assert listed == {p.name for p in KUBERNETES.glob("*.yaml")} - {
        "kustomization.yaml"
    }


# --- dashboard ---------------------------------------------------------------


def test_dashboard_selects_its_prometheus_through_a_variable() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}

    assert board["schemaVersion"] >= 39
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_panels_have_unique_ids_and_fit_the_grid() -> None:
    panels = dashboard()["panels"]

    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_dashboard_shows_what_operators_watch() -> None:
    exprs = " ".join(expr for _, expr in dashboard_queries())

    for needed in [
        "kerasrpc_training_cost",
        "kerasrpc_training_metric",
        "kerasrpc_training_learning_rate",
        "kerasrpc_training_examples_per_second",
        "kerasrpc_training_step",
        "rate(kerasrpc_predict_requests_total",
        "histogram_quantile(0.5, sum by (le, model) (rate("
        "kerasrpc_predict_latency_seconds_bucket",
        "histogram_quantile(0.9, sum by (le, model) (rate("
        "kerasrpc_predict_latency_seconds_bucket",
        "histogram_quantile(0.99, sum by (le, model) (rate("
        "kerasrpc_predict_latency_seconds_bucket",
        'code!="OK"',
        "kerasrpc_predict_batch_size_bucket",
        "kerasrpc_predict_queue_delay_seconds_bucket",
        "kerasrpc_predict_queue_depth",
        "kerasrpc_device_memory_bytes",
        "sum by (grpc_code) (rate(grpc_server_handled_total",
    ]:
        assert needed in exprs


def test_dashboard_queries_name_only_exported_metrics() -> None:
    known = exported_names()

    for title, expr in dashboard_queries():
        unknown = metric_names(expr) - known
        assert not unknown, f"{title}: {sorted(unknown)}"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"panel:query_{index}", "expr": _concrete(expr)}
                    for index, (_, expr) in enumerate(dashboard_queries())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))

    result = run_promtool("check", "rules", str(path))

    assert result.returncode == 0, result.stdout + result.stderr


def _concrete(expr: str) -> str:
    return expr.replace("$__rate_interval", "1m").replace("$instance", ".*")


# --- alert rules -------------------------------------------------------------


def test_alert_rules_pass_promtool_check() -> None:
    result = run_promtool("check", "rules", str(ALERTS))

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_alert_rule_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", str(ALERTS_TEST))

    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases = [
        case
        for test in load_yaml(ALERTS_TEST)["tests"]
        for case in test["alert_rule_test"]
    ]

    for rule in alert_rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), rule["alert"]
        assert any(not case["exp_alerts"] for case in mine), rule["alert"]


def test_alerts_name_only_exported_metrics() -> None:
    known = exported_names()

    for rule in alert_rules():
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, f"{rule['alert']}: {sorted(unknown)}"
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
