"""Fixtures that start real kerasrpc servers on loopback port 0."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from kerasrpc.client import Client

# Set before any test imports TensorFlow. The tests compute on the CPU unless
# KERASRPC_DEVICE names a GPU index.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
TEST_DEVICE = os.environ.get("KERASRPC_DEVICE", "cpu")
if TEST_DEVICE == "cpu":
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

StartServer = Callable[..., Any]


def make_settings(state_dir: Path, **changes: Any) -> Any:
    """Return test settings: loopback port 0, CPU, state in `state_dir`."""
    from kerasrpc.service.settings import Settings

    base = Settings(
        listen="127.0.0.1:0",
        state_dir=state_dir,
        metrics_address="127.0.0.1:0",
        device=TEST_DEVICE,
        grace_seconds=5.0,
        workers=32,
    )
    return base.replace(**changes)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Start one server for the whole session."""
    from kerasrpc.service.server import create_server

    running = create_server(make_settings(tmp_path_factory.mktemp("state")))
    yield running
    running.stop(grace=2.0)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Return a function that starts a server with extra settings."""
    from kerasrpc.service.server import create_server

    started: list[Any] = []

    def start(state_dir: Path | None = None, **changes: Any) -> Any:
        running = create_server(
            make_settings(state_dir or tmp_path / "state", **changes)
        )
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop(grace=2.0)


@pytest.fixture
def client(server: Any) -> Iterator[Client]:
    """A client connected to the session's server."""
    with Client(server.address, timeout=60) as connected:
        yield connected


@pytest.fixture
def channel(server: Any) -> Iterator[grpc.Channel]:
    """A plain channel to the session's server."""
    with grpc.insecure_channel(server.address) as opened:
        yield opened
