"""Event streams: resuming past the end, and the bound on open streams."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kerasrpc.client import Client, KerasRpcError
from kerasrpc.v1 import training_service_pb2

from tests.training_support import final_state, steps, training_spec, unique


def test_a_watch_from_past_the_last_step_gets_the_final_state(client: Client) -> None:
    events = list(client.train(training_spec(unique("past-end"), epochs=1)))
    last_step = steps(events)[-1].step
    job_id = events[0].job_id

    resumed = list(client.watch(job_id, from_step=last_step + 1))

    assert [e.WhichOneof("event") for e in resumed] == ["state"]
    assert final_state(resumed).state == training_service_pb2.JOB_STATE_SUCCEEDED


def test_open_streams_are_bounded_and_short_calls_still_answer(
    start_server: Any,
) -> None:
    running = start_server(workers=4, max_concurrent_jobs=1)
    opened: list[Any] = []
    with Client(running.address, timeout=30) as client:
        job = client.start_training(
            training_spec(unique("long"), epochs=100_000, batch_size=8)
        )
        try:
            with grpc.insecure_channel(running.address) as channel:
                stub = client.training
                for _ in range(2):
                    stream = stub.WatchTraining(
                        training_service_pb2.WatchTrainingRequest(job_id=job.job_id)
                    )
                    next(stream)
                    opened.append(stream)

                with pytest.raises(KerasRpcError) as refused:
                    next(iter(client.watch(job.job_id)))
                info = client.server_info()
                health = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
        finally:
            for stream in opened:
                stream.cancel()
            client.cancel(job.job_id)

    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "streams open" in refused.value.message
    assert info.max_concurrent_jobs == 1
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_a_closed_stream_gives_its_slot_back(start_server: Any) -> None:
    running = start_server(workers=2)  # room for one stream at a time
    with Client(running.address, timeout=60) as client:
        for _ in range(3):
            events = list(client.train(training_spec(unique("slot"), epochs=1)))
            assert final_state(events).state == training_service_pb2.JOB_STATE_SUCCEEDED
