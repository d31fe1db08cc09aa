"""The server's lifecycle: health, reflection, flags, signals and errors."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.serve_process import ServeProcess

SERVICES = (
    "kerasrpc.v1.ModelService",
    "kerasrpc.v1.TrainingService",
    "kerasrpc.v1.InferenceService",
)


def _health(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    status: int = response.status
    return status


@pytest.mark.parametrize("service", ["", *SERVICES])
def test_health_reports_serving(channel: grpc.Channel, service: str) -> None:
    assert _health(channel, service) == health_pb2.HealthCheckResponse.SERVING


def test_health_of_an_unknown_service_is_not_found(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        _health(channel, "no.such.Service")

    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_services(channel: grpc.Channel) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)

    services = set(database.get_services())
    assert set(SERVICES) <= services
    assert "grpc.health.v1.Health" in services
    described = database.FindFileContainingSymbol("kerasrpc.v1.TrainingService")
    assert described.package == "kerasrpc.v1"


def test_the_client_imports_without_tensorflow() -> None:
    code = (
        "import sys, kerasrpc.client, kerasrpc.client.cli; "
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'; "
        "assert 'keras' not in sys.modules, 'keras was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _serve(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kerasrpc.client.cli", "serve", *flags],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--workers", "many"], "workers expected an integer, received 'many'"),
        (["--workers", "0"], "workers expected at least 1, received 0"),
        (["--state-dir", ""], "state_dir expected a path, received ''"),
        (["--listen", "nowhere"], "listen expected host:port, received 'nowhere'"),
        (["--log-format", "xml"], "log_format expected one of text, json"),
        (["--device", "tpu"], "device expected a GPU index"),
        (["--max-queued-jobs", "-1"], "max_queued_jobs expected a non-negative"),
    ],
)
def test_bad_flags_exit_non_zero_with_a_clear_error(
    flags: list[str], message: str
) -> None:
    result = _serve(*flags)

    assert result.returncode == 2
    assert message in result.stderr


def test_an_unknown_flag_is_refused() -> None:
    result = _serve("--colour", "blue")

    assert result.returncode == 2
    assert "unrecognized arguments: --colour" in result.stderr


def test_an_unwritable_state_directory_is_refused(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")

    result = _serve("--state-dir", str(blocked / "state"), "--device", "cpu")

    assert result.returncode == 1
    assert f"state_dir {blocked / 'state'} is not writable" in result.stderr


def test_an_address_in_use_is_refused(tmp_path: Path, server: Any) -> None:
    result = _serve(
        "--listen", server.address, "--state-dir", str(tmp_path), "--device", "cpu",
        "--metrics-address", "",
    )  # fmt: skip

    assert result.returncode == 1
    assert f"cannot listen on {server.address}" in result.stderr


def test_sigterm_drains_and_exits_zero(tmp_path: Path) -> None:
    serving = ServeProcess(tmp_path / "state")
    try:
        address = serving.wait_listening()
        with grpc.insecure_channel(address) as channel:
            assert _health(channel, "") == health_pb2.HealthCheckResponse.SERVING

        serving.process.send_signal(signal.SIGTERM)

        assert serving.process.wait(timeout=60) == 0
        assert "received SIGTERM; stopping" in serving.output
        assert "server stopped" in serving.output
    finally:
        serving.stop()


def test_the_health_command_reports_serving(server: Any) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kerasrpc.client.cli", "-s", server.address, "health"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "SERVING"


def test_the_health_command_fails_when_no_server_listens() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kerasrpc.client.cli", "-s", "127.0.0.1:1", "health",
         "--timeout", "1"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip

    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr


def test_sigterm_lets_an_open_stream_finish_and_refuses_new_calls(
    tmp_path: Path,
) -> None:
    import queue

    import numpy as np
    from kerasrpc.client import Client, KerasRpcError
    from kerasrpc.client.specs import load_message
    from kerasrpc.v1 import training_service_pb2

    examples = Path(__file__).resolve().parent.parent / "examples"
    spec = load_message(
        examples / "sequential.yaml", training_service_pb2.TrainRequest()
    )
    serving = ServeProcess(tmp_path / "state", "--grace-seconds", "20")
    try:
        with Client(serving.wait_listening(), timeout=60) as client:
            client.create_model("drain", spec.spec.spec)
            batches: queue.Queue[Any] = queue.Queue()
            stream = client.predict_stream("drain", _until_none(batches))
            batches.put(np.ones((3, 2, 8), np.float32))
            first = next(stream)

            serving.process.send_signal(signal.SIGTERM)
            _wait_for(lambda: "received SIGTERM" in serving.output)
            with pytest.raises(KerasRpcError) as refused:
                client.get_model("drain")
            batches.put(np.ones((5, 2, 8), np.float32))
            second = next(stream)
            batches.put(None)
            rest = list(stream)

        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        assert next(iter(first.values())).shape == (3, 2, 5)
        assert next(iter(second.values())).shape == (5, 2, 5)
        assert rest == []
        assert serving.process.wait(timeout=60) == 0
    finally:
        serving.stop()


def _until_none(items: Any) -> Any:
    while (item := items.get()) is not None:
        yield item


def _wait_for(condition: Any, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_the_cpu_thread_pools_follow_the_settings(tmp_path: Path) -> None:
    from kerasrpc.client import Client

    serving = ServeProcess(
        tmp_path / "state", "--intra-op-threads", "1", "--inter-op-threads", "2"
    )
    try:
        with Client(serving.wait_listening(), timeout=30) as client:
            info = client.server_info()
    finally:
        serving.stop()

    assert info.device_description.endswith("(1 thread per op, 2 ops at once)")


def test_thread_pools_cannot_change_once_tensorflow_computes() -> None:
    import tensorflow as tf
    from kerasrpc.service.device import DeviceError, configure_device

    tf.constant(1.0) + 1.0  # TensorFlow starts computing in this process
    other = tf.config.threading.get_intra_op_parallelism_threads() + 3

    with pytest.raises(
        DeviceError, match=f"intra_op_threads expected .*, received {other}"
    ):
        configure_device("cpu", intra_op_threads=other)


@pytest.mark.parametrize(
    ("method", "kind", "message"),
    [
        ("/kerasrpc.v1.InferenceService/Predict", "unary_unary", "PredictRequest"),
        ("/kerasrpc.v1.InferenceService/PredictStream", "stream_stream",
         "PredictStreamRequest"),
        ("/kerasrpc.v1.ModelService/GetModel", "unary_unary", "GetModelRequest"),
        ("/kerasrpc.v1.ModelService/ImportModel", "stream_unary",
         "ImportModelRequest"),
        ("/kerasrpc.v1.TrainingService/WatchTraining", "unary_stream",
         "WatchTrainingRequest"),
        ("/inference.GRPCInferenceService/ModelInfer", "unary_unary",
         "ModelInferRequest"),
        ("/inference.GRPCInferenceService/ModelStreamInfer", "stream_stream",
         "ModelInferRequest"),
        ("/tensorflow.serving.PredictionService/Predict", "unary_unary",
         "PredictRequest"),
        ("/grpc.health.v1.Health/Check", "unary_unary", "HealthCheckRequest"),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
         "stream_stream", "ServerReflectionRequest"),
    ],
)  # fmt: skip
def test_bytes_that_are_no_request_are_invalid_arguments(
    server: Any, method: str, kind: str, message: str
) -> None:
    garbage = b"\x0a\xff\xff\xff"  # a field whose length runs past the end

    def send() -> None:
        with grpc.insecure_channel(server.address) as channel:
            call = getattr(channel, kind)(method)
            request = iter([garbage]) if kind.startswith("stream") else garbage
            result = call(request, timeout=30)
            if kind.endswith("_stream"):
                list(result)

    with pytest.raises(grpc.RpcError) as raised:
        send()

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"the request is not a valid {message}" in raised.value.details()
