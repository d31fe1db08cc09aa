"""The model store across restarts, crashes, corruption and memory limits."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import grpc
import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kerasrpc.client import Client, KerasRpcError
from kerasrpc.service.errors import NotFound, status_code
from kerasrpc.service.metrics import ServiceMetrics
from kerasrpc.service.registry import ModelRegistry
from kerasrpc.service.registry.registry import transient_load_failure
from kerasrpc.v1 import model_service_pb2, tensor_pb2
from prometheus_client import CollectorRegistry

from tests.test_models import dense_spec

TRAINED = model_service_pb2.VERSION_SOURCE_TRAINED


def open_registry(root: Path, cache_bytes: int = 1 << 20) -> ModelRegistry:
    """Open a registry on `root` with metrics of its own."""
    metrics = ServiceMetrics(CollectorRegistry())
    return ModelRegistry(root, cache_bytes=cache_bytes, metrics=metrics)


def small_model(units: int = 3) -> keras.Model:
    """Return a built Sequential model on inputs of shape (4,)."""
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(units)])


def error_of(call: Any) -> KerasRpcError:
    """Run `call` and return the KerasRpcError it raises."""
    with pytest.raises(KerasRpcError) as raised:
        call()
    return raised.value


def loaded_flags(client: Client, name: str) -> list[bool]:
    """Return whether each version of a model is loaded, oldest first."""
    return [v.loaded for v in client.get_model(name).versions]


def store_versions(start_server: Any, state: Path, name: str, count: int) -> None:
    """Create `count` versions of a model on a server in `state`, then stop it."""
    running = start_server(state)
    with Client(running.address, timeout=60) as client:
        for _ in range(count):
            client.create_model(name, dense_spec())
    running.stop(grace=1.0)


# Restarts -----------------------------------------------------------------


def test_restart_lists_versions_and_loads_them_lazily(
    start_server: Any, tmp_path: Path
) -> None:
    first = start_server(tmp_path / "state")
    with Client(first.address, timeout=60) as client:
        client.create_model("kept", dense_spec(3))
        client.create_model("kept", dense_spec(4))
        client.summary("kept", 1)
        before = client.get_model("kept")
    first.stop(grace=1.0)

    second = start_server(tmp_path / "state")
    with Client(second.address, timeout=60) as client:
        after = client.get_model("kept")
        assert [v.version for v in after.versions] == [1, 2]
        assert loaded_flags(client, "kept") == [False, False]
        assert client.summary("kept", 2).parameter_count == 8 * 4 + 4
        assert loaded_flags(client, "kept") == [False, True]

    for old, new in zip(before.versions, after.versions, strict=True):
        assert new.create_time == old.create_time
        assert new.size_bytes == old.size_bytes


def test_numbers_of_a_deleted_model_are_not_reused_after_restart(
    tmp_path: Path,
) -> None:
    registry = open_registry(tmp_path)
    registry.add_version("reborn", small_model(), source=TRAINED)
    registry.add_version("reborn", small_model(), source=TRAINED)
    registry.delete_model("reborn")
    registry.close()

    reopened = open_registry(tmp_path)
    stored = reopened.add_version("reborn", small_model(), source=TRAINED)

    assert stored.version == 3
    assert [m.name for m in reopened.list_models()] == ["reborn"]


# Crashes and corruption ------------------------------------------------------

_SLOW_SAVE = """
import sys, time
from pathlib import Path
import keras
from kerasrpc.service.metrics import ServiceMetrics
from kerasrpc.service.registry import ModelRegistry
from prometheus_client import CollectorRegistry

class SlowToSave(keras.layers.Dense):
    def save_own_variables(self, store):
        super().save_own_variables(store)
        Path(sys.argv[2]).touch()
        time.sleep(300)

registry = ModelRegistry(
    Path(sys.argv[1]), cache_bytes=1 << 20, metrics=ServiceMetrics(CollectorRegistry())
)
model = keras.Sequential([keras.Input((4,)), SlowToSave(3)])
registry.add_version("crash", model, source=2)
"""


def test_a_kill_during_a_save_leaves_earlier_versions_intact(tmp_path: Path) -> None:
    root = tmp_path / "models"
    registry = open_registry(root)
    registry.add_version("crash", small_model(), source=TRAINED)
    registry.close()
    saving = tmp_path / "saving"
    child = subprocess.Popen(
        [sys.executable, "-c", _SLOW_SAVE, str(root), str(saving)],
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "-1", "TF_CPP_MIN_LOG_LEVEL": "3"},
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(saving, child)
        assert any((root / ".tmp").rglob("model.keras"))  # a half-written file
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()

    reopened = open_registry(root)

    assert [v.version for v in reopened.get_model("crash").versions] == [1]
    assert list((root / ".tmp").iterdir()) == []
    assert reopened.load("crash").model.count_params() == 4 * 3 + 3
    assert reopened.add_version("crash", small_model(), source=TRAINED).version == 2


def _wait_for(path: Path, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        if child.poll() is not None:
            assert child.stderr is not None
            pytest.fail(child.stderr.read().decode()[-2000:])
        assert time.monotonic() < deadline, "the child never started saving"
        time.sleep(0.05)


def test_temp_leftovers_and_stray_files_are_ignored(
    start_server: Any, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    store_versions(start_server, state, "steady", 1)
    models = state / "models"
    leftover = models / ".tmp" / "save-killed"
    leftover.mkdir()
    (leftover / "model.keras").write_bytes(b"PK\x03\x04 half written")
    (models / "steady" / ".model.json.partial").write_text("{")
    (models / "steady" / "not-a-version").mkdir()

    second = start_server(state)
    with Client(second.address, timeout=60) as client:
        assert [m.name for m in client.list_models()] == ["steady"]
        assert [v.version for v in client.get_model("steady").versions] == [1]
        assert client.create_model("steady", dense_spec()).model_version.version == 2

    assert list((models / ".tmp").iterdir()) == []
    assert not (models / "steady" / ".model.json.partial").exists()


def test_a_stored_fixed_batch_size_is_described_as_any_after_a_restart(
    start_server: Any, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    store_versions(start_server, state, "fixed", 1)
    record = state / "models/fixed/1/version.json"
    data = json.loads(record.read_text())
    for spec in data["signature"]["inputs"]:
        spec["shape"][0] = "32"  # as a version built on batches of 32 recorded it
    record.write_text(json.dumps(data))

    second = start_server(state)
    with Client(second.address, timeout=60) as client:
        metadata = client.metadata("fixed", 1)
        outputs = client.predict("fixed", np.ones((3, 2, 8), "float32"))

    assert [list(s.shape) for s in metadata.inputs] == [[-1, 2, 8]]
    assert [list(s.shape) for s in metadata.outputs] == [[-1, 2, 5]]
    assert [v.shape for v in outputs.values()] == [(3, 2, 5)]


def test_unreadable_versions_are_reported_and_the_server_stays_healthy(
    start_server: Any, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    store_versions(start_server, state, "damaged", 3)
    (state / "models/damaged/1/model.keras").write_bytes(b"garbage")
    with zipfile.ZipFile(state / "models/damaged/2/model.keras", "w") as broken:
        broken.writestr("config.json", '{"class_name": "Nothing"}')

    second = start_server(state)
    with Client(second.address, timeout=60) as client:
        # Caught when the registry opens: not a zip archive at all.
        assert (
            "not a readable .keras archive"
            in client.get_version("damaged", 1).load_error
        )
        error = error_of(lambda: client.summary("damaged", 1))
        assert error.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "version 1 of model 'damaged' cannot be loaded" in error.message
        # Caught on first load: a zip whose contents Keras refuses.
        assert client.get_version("damaged", 2).load_error == ""
        error = error_of(lambda: client.summary("damaged", 2))
        assert error.code == grpc.StatusCode.FAILED_PRECONDITION
        assert client.get_version("damaged", 2).load_error in error.message
        assert error_of(lambda: client.metadata("damaged", 2)).code == (
            grpc.StatusCode.FAILED_PRECONDITION
        )
        # The healthy version still serves, and so does the server.
        assert client.summary("damaged", 3).parameter_count == 45
        assert [v.load_error == "" for v in client.get_model("damaged").versions] == [
            False,
            False,
            True,
        ]
        with grpc.insecure_channel(second.address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_a_file_unreadable_for_a_while_is_retried_not_marked_broken(
    start_server: Any, tmp_path: Path
) -> None:
    running = start_server(tmp_path / "state")
    model_file = tmp_path / "state/models/flaky/1/model.keras"
    aside = tmp_path / "aside.keras"
    with Client(running.address, timeout=60) as client:
        client.create_model("flaky", dense_spec())
        model_file.rename(aside)
        model_file.mkdir()  # opening it fails with "Is a directory" until put back

        error = error_of(lambda: client.summary("flaky", 1))
        assert error.code == grpc.StatusCode.UNAVAILABLE
        assert "cannot be read now (Is a directory); retry later" in error.message
        assert str(tmp_path) not in error.message
        assert client.get_version("flaky", 1).load_error == ""

        model_file.rmdir()
        aside.rename(model_file)
        assert client.summary("flaky", 1).parameter_count == 45


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (OSError(errno.EMFILE, os.strerror(errno.EMFILE)), "UNAVAILABLE"),
        (OSError(errno.EIO, os.strerror(errno.EIO)), "UNAVAILABLE"),
        (PermissionError(errno.EACCES, os.strerror(errno.EACCES)), "UNAVAILABLE"),
        (MemoryError(), "RESOURCE_EXHAUSTED"),
        (
            tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor"),
            "RESOURCE_EXHAUSTED",
        ),
        (
            ValueError("Example error message: OOM when allocating"),
            "RESOURCE_EXHAUSTED",
        ),
        (zipfile.BadZipFile("File is not a zip file"), None),
        (FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT)), None),
        (ValueError("Unknown layer: 'Nothing'"), None),
        (KeyError("config"), None),
        (TypeError("unexpected keyword argument 'units'"), None),
    ],
)
def test_only_load_failures_that_may_pass_are_transient(
    error: BaseException, code: str | None
) -> None:
    transient = transient_load_failure(error, "version 1 of model 'm'")

    assert (transient and status_code(transient).name) == code


def test_a_corrupt_weights_file_is_a_lasting_failure(tmp_path: Path) -> None:
    garbage = tmp_path / "model.weights.h5"
    garbage.write_bytes(b"not an HDF5 file")
    with pytest.raises(OSError, match="signature") as raised:
        h5py.File(garbage, "r")

    assert transient_load_failure(raised.value, "version 1 of model 'm'") is None


# Memory bound and concurrency --------------------------------------------------


def test_least_recently_used_versions_are_unloaded_beyond_the_cache(
    start_server: Any,
) -> None:
    model_bytes = (8 * 5 + 5) * 4  # one Dense(5) on (2, 8), float32
    running = start_server(model_cache_bytes=2 * model_bytes)
    gauges = running.app.metrics.registry
    with Client(running.address, timeout=60) as client:
        for _ in range(3):
            client.create_model("lru", dense_spec(5))
        for version in (1, 2, 3):
            client.summary("lru", version)
        assert loaded_flags(client, "lru") == [False, True, True]

        client.summary("lru", 2)  # now 3 is the least recently used
        client.summary("lru", 1)

        assert loaded_flags(client, "lru") == [True, True, False]
    assert gauges.get_sample_value("kerasrpc_model_versions_loaded") == 2
    assert gauges.get_sample_value("kerasrpc_models_loaded") == 1


def test_concurrent_loads_of_one_version_load_it_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = open_registry(tmp_path)
    registry.add_version("busy", small_model(), source=TRAINED)
    results: list[Any] = []
    start = threading.Barrier(8)

    def load() -> None:
        start.wait()
        results.append(registry.load("busy"))

    with caplog.at_level(logging.INFO, logger="kerasrpc.service.registry"):
        threads = [threading.Thread(target=load) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert len(results) == 8
    assert all(r is results[0] for r in results)
    loads = [r for r in caplog.records if r.getMessage().startswith("loaded version")]
    assert len(loads) == 1


def test_a_version_in_use_keeps_working_after_it_is_deleted(tmp_path: Path) -> None:
    registry = open_registry(tmp_path)
    registry.add_version("in-use", small_model(), source=TRAINED)
    registry.add_version("in-use", small_model(), source=TRAINED)
    held = registry.load("in-use", 1)

    registry.delete_version("in-use", 1)

    assert held.model.predict(np.ones((2, 4), "float32"), verbose=0).shape == (2, 3)
    with pytest.raises(NotFound, match="has no version 1; its versions are 2"):
        registry.load("in-use", 1)
    assert not (tmp_path / "in-use" / "1").exists()
    assert registry.load("in-use").version == 2


def test_loaded_version_describes_inputs_and_outputs(tmp_path: Path) -> None:
    registry = open_registry(tmp_path)
    first = keras.Input((3,), name="left")
    second = keras.Input((2,), name="right", dtype="int32")
    joined = keras.layers.Concatenate()(
        [first, keras.layers.Activation("linear")(keras.ops.cast(second, "float32"))]
    )
    model = keras.Model(
        [first, second],
        [
            keras.layers.Dense(1, name="score")(joined),
            keras.layers.Dense(2, name="aux")(joined),
        ],
    )
    registry.add_version("two-headed", model, source=TRAINED)

    loaded = registry.load("two-headed")

    assert [(s.name, s.dtype, list(s.shape)) for s in loaded.inputs] == [
        ("left", tensor_pb2.DATA_TYPE_FLOAT32, [-1, 3]),
        ("right", tensor_pb2.DATA_TYPE_INT32, [-1, 2]),
    ]
    assert [(s.name, list(s.shape)) for s in loaded.outputs] == [
        ("score", [-1, 1]),
        ("aux", [-1, 2]),
    ]
