"""Jobs survive kill -9 and graceful stops: they resume with the same steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kerasrpc.client import Client
from kerasrpc.service.training.eventlog import HEADER
from kerasrpc.v1 import training_service_pb2

from tests.serve_process import ServeProcess
from tests.training_support import (
    check_log_shape,
    final_state,
    steps,
    training_spec,
)

SUCCEEDED = training_service_pb2.JOB_STATE_SUCCEEDED
RUNNING = training_service_pb2.JOB_STATE_RUNNING


def _spec(name: str, epochs: int) -> training_service_pb2.TrainingSpec:
    return training_spec(name, epochs=epochs, checkpoint_every_steps=10)


def _wait_for_step(client: Client, job_id: str, step: int) -> None:
    for event in client.watch(job_id, from_step=step):
        if event.WhichOneof("event") == "step":
            return


def _resumed_events(events: list[Any]) -> list[Any]:
    return [
        e.state
        for e in events
        if e.WhichOneof("event") == "state" and e.state.message.startswith("resumed")
    ]


def test_a_killed_server_resumes_its_job_with_the_same_steps(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    first = ServeProcess(state_dir)
    try:
        with Client(first.wait_listening(), timeout=60) as client:
            job = client.start_training(_spec("killed", epochs=150))
            _wait_for_step(client, job.job_id, 150)
    finally:
        first.stop()

    log = state_dir / "jobs" / job.job_id / "events.log"
    with log.open("ab") as file:
        file.write(HEADER.pack(1000, 0, 10**6, 0) + b"torn")
    second = ServeProcess(state_dir)
    try:
        with Client(second.wait_listening(), timeout=60) as client:
            events = list(client.watch(job.job_id))
            reference = list(client.train(_spec("reference", epochs=150)))
            resumed = client.get_job(job.job_id)
            stored = [v.version for v in client.get_model("killed").versions]
    finally:
        second.stop()

    check_log_shape(events)
    assert final_state(events).state == SUCCEEDED
    assert len(steps(events)) == 150 * 8
    assert resumed.resume_count == 1
    [restart] = _resumed_events(events)
    assert restart.state == RUNNING
    assert 0 < restart.step <= resumed.total_steps
    assert [s.cost for s in steps(events)] == [s.cost for s in steps(reference)]
    assert stored == [resumed.model_version]


def test_a_graceful_stop_checkpoints_and_the_next_start_resumes(
    start_server: Any, tmp_path: Path
) -> None:
    state_dir = tmp_path / "graceful"
    running = start_server(state_dir)
    with Client(running.address, timeout=60) as client:
        job = client.start_training(_spec("graceful", epochs=400))
        _wait_for_step(client, job.job_id, 30)
    running.stop(grace=10.0)

    again = start_server(state_dir)
    with Client(again.address, timeout=60) as client:
        events = list(client.watch(job.job_id))
        ended = client.get_job(job.job_id)

    check_log_shape(events)
    assert final_state(events).state == SUCCEEDED
    [restart] = _resumed_events(events)
    assert restart.step >= 30
    assert ended.resume_count == 1
    assert ended.step == ended.total_steps == 400 * 8
    assert client_versions(again, "graceful") == [ended.model_version]


def client_versions(running: Any, model_name: str) -> list[int]:
    """Return the stored versions of a model."""
    with Client(running.address, timeout=60) as client:
        return [v.version for v in client.get_model(model_name).versions]
