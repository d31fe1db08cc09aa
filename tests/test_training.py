"""Training jobs over a real server: streams, recomputed costs, control, watchers."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import grpc
import keras
import numpy as np
import pytest
from kerasrpc.client import Client
from kerasrpc.client.errors import KerasRpcError
from kerasrpc.client.specs import load_document, parse_message
from kerasrpc.v1 import spec_pb2, training_service_pb2

from tests.training_support import (
    check_log_shape,
    compile_spec,
    final_state,
    inline,
    linear_data,
    steps,
    training_spec,
    unique,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SUCCEEDED = training_service_pb2.JOB_STATE_SUCCEEDED


def test_loss_falls_and_every_step_is_streamed(client: Client) -> None:
    name = unique("falls")
    spec = training_spec(name, epochs=4)

    events = list(client.train(spec))

    check_log_shape(events)
    numbers = steps(events)
    assert len(numbers) == 4 * 8
    assert [s.epoch for s in numbers[:9]] == [1] * 8 + [2]
    ends = [e.epoch_end for e in events if e.WhichOneof("event") == "epoch_end"]
    assert [e.epoch for e in ends] == [1, 2, 3, 4]
    assert ends[-1].cost < ends[0].cost / 4
    assert ends[0].cost == pytest.approx(np.mean([s.cost for s in numbers[:8]]))
    state = final_state(events)
    assert state.state == SUCCEEDED
    assert client.get_version(name, state.model_version).version == state.model_version
    job = client.get_job(events[0].job_id)
    assert (job.state, job.step, job.total_steps) == (SUCCEEDED, 32, 32)


def test_streamed_costs_and_metrics_equal_a_recomputation(
    client: Client, tmp_path: Path
) -> None:
    """With learning rate 0 the stored model is the initial one: recompute."""
    name = unique("recompute")
    x, y = linear_data(rows=40)
    mae = spec_pb2.MetricSpec(name="mae", mean_absolute_error=spec_pb2.ErrorMetric())
    spec = training_spec(
        name,
        inline(x, y),
        compile=compile_spec(0.0, [mae]),
        epochs=2,
        shuffle=False,
    )

    events = list(client.train(spec))
    version = final_state(events).model_version
    model = keras.saving.load_model(
        client.export_model(name, tmp_path / "m.keras", version=version)
    )

    streamed = steps(events)
    assert len(streamed) == 10
    predictions = np.asarray(model(x))
    errors = np.abs(predictions - y)
    for i, step in enumerate(streamed):
        rows = slice((i % 5) * 8, (i % 5 + 1) * 8)
        expected = float(np.mean((predictions[rows] - y[rows]) ** 2))
        assert step.cost == pytest.approx(expected, rel=1e-5)
        seen = slice(0, (i % 5 + 1) * 8)
        assert step.metrics["mae"] == pytest.approx(errors[seen].mean(), rel=1e-5)
        assert step.learning_rate == 0.0


def test_learning_rate_of_each_step_follows_the_schedule(client: Client) -> None:
    compile = compile_spec()
    compile.optimizer.learning_rate.CopyFrom(
        spec_pb2.LearningRateSpec(
            inverse_step_decay=spec_pb2.InverseStepDecaySchedule(
                initial_learning_rate=0.1
            )
        )
    )
    spec = training_spec(unique("schedule"), compile=compile, epochs=1)

    streamed = steps(client.train(spec))

    rates = [s.learning_rate for s in streamed]
    assert rates == pytest.approx([0.1 / n for n in range(1, 9)], rel=1e-6)


def test_same_seed_gives_the_same_costs(client: Client) -> None:
    first = training_spec(unique("seeded"), epochs=2)
    second = training_spec(unique("seeded"), epochs=2)

    costs = [[s.cost for s in steps(client.train(spec))] for spec in (first, second)]

    assert costs[0] == costs[1]


@pytest.mark.parametrize(
    "example",
    ["sequential", "functional", "model_subclass", "custom_layer"],
)
def test_example_specs_train(client: Client, server: Any, example: str) -> None:
    root = server.app.settings.resolved_data_root
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    np.savez(
        root / "synthetic.npz",
        features=rng.random((64, 2, 8), dtype=np.float32),
        labels=rng.random((64, 2, 5), dtype=np.float32),
    )
    document = load_document(EXAMPLES / f"{example}.yaml")
    request = parse_message(document, training_service_pb2.TrainRequest())
    request.spec.model_name = unique(example)

    events = list(client.train(request.spec))

    check_log_shape(events)
    assert final_state(events).state == SUCCEEDED, final_state(events).message
    assert len(steps(events)) == 2 * 2
    names = set(steps(events)[0].metrics)
    assert names == {
        m.name or m.WhichOneof("metric") for m in request.spec.compile.metrics
    }


def _long_spec(name: str) -> training_service_pb2.TrainingSpec:
    return training_spec(name, epochs=100_000, checkpoint_every_steps=100_000)


def _wait_for_step(client: Client, job_id: str, step: int) -> None:
    for event in client.watch(job_id, from_step=step):
        if event.WhichOneof("event") == "step":
            return


def test_cancel_stops_a_running_job(client: Client) -> None:
    job = client.start_training(_long_spec(unique("cancel")))
    assert job.state in (
        training_service_pb2.JOB_STATE_QUEUED,
        training_service_pb2.JOB_STATE_RUNNING,
    )
    _wait_for_step(client, job.job_id, 3)

    client.cancel(job.job_id)
    events = list(client.watch(job.job_id))

    assert final_state(events).state == training_service_pb2.JOB_STATE_CANCELLED
    check_log_shape(events)
    ended = client.get_job(job.job_id)
    assert ended.state == training_service_pb2.JOB_STATE_CANCELLED
    assert 3 <= ended.step < ended.total_steps
    assert client.cancel(job.job_id).state == training_service_pb2.JOB_STATE_CANCELLED


def test_watchers_see_identical_streams_and_replay_from_a_step(
    client: Client,
) -> None:
    job = client.start_training(training_spec(unique("watch"), epochs=6))
    seen: list[list[training_service_pb2.TrainingEvent]] = [[], [], []]

    def follow(into: list[training_service_pb2.TrainingEvent]) -> None:
        into.extend(client.watch(job.job_id))

    threads = [threading.Thread(target=follow, args=(s,)) for s in seen]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert [thread.is_alive() for thread in threads] == [False, False, False]
    assert [final_state(stream).state for stream in seen] == [SUCCEEDED] * 3
    assert seen[0] == seen[1] == seen[2]
    check_log_shape(seen[0])
    replay = list(client.watch(job.job_id, from_step=20))
    assert replay[0].step.step == 20
    assert replay == [e for e in seen[0] if e.sequence >= replay[0].sequence]


def test_a_disconnected_caller_does_not_stop_its_job(client: Client) -> None:
    name = unique("disconnect")
    stream = client.training.Train(
        training_service_pb2.TrainRequest(spec=training_spec(name, epochs=20))
    )
    first = next(stream).events[0]
    stream.cancel()

    events = list(client.watch(first.job_id))

    assert final_state(events).state == SUCCEEDED
    check_log_shape(events)


def test_jobs_are_listed_newest_first_and_filtered(client: Client) -> None:
    name = unique("listed")
    ids = [next(iter(client.train(training_spec(name, epochs=1)))).job_id for _ in "ab"]
    for job_id in ids:
        list(client.watch(job_id))

    listed = client.list_jobs(model_name=name)

    assert [j.job_id for j in listed] == ids[::-1]
    assert client.list_jobs(model_name=name, states=[SUCCEEDED]) == listed
    assert (
        client.list_jobs(
            model_name=name, states=[training_service_pb2.JOB_STATE_FAILED]
        )
        == []
    )
    with pytest.raises(KerasRpcError) as error:
        client.get_job("no-such-job")
    assert error.value.code == grpc.StatusCode.NOT_FOUND


def test_listing_jobs_by_an_unknown_state_is_invalid(client: Client) -> None:
    with pytest.raises(KerasRpcError) as raised:
        client.list_jobs(states=[SUCCEEDED, 99])

    error = raised.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.violations] == ["states[1]"]
    assert error.message == "states[1]: expected a JobState value, received 99"


@pytest.mark.parametrize(
    "call",
    [
        lambda client: client.get_job(""),
        lambda client: client.cancel(""),
        lambda client: list(client.watch("")),
    ],
    ids=["GetJob", "CancelTraining", "WatchTraining"],
)
def test_an_empty_job_id_is_invalid(client: Client, call: Any) -> None:
    with pytest.raises(KerasRpcError) as raised:
        call(client)

    error = raised.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.violations] == ["job_id"]
    assert error.message == "job_id: expected a job id, received an empty string"


def test_server_info_names_device_and_limits(client: Client, server: Any) -> None:
    info = client.server_info()

    assert info.device == "/CPU:0"
    assert info.tensorflow_version
    assert info.keras_version == keras.__version__
    assert info.max_concurrent_jobs == server.app.settings.max_concurrent_jobs
    assert info.max_queued_jobs == server.app.settings.max_queued_jobs
    assert info.max_receive_message_bytes == server.app.settings.max_message_bytes


def test_queue_limit_gives_resource_exhausted(start_server: Any) -> None:
    running = start_server(max_concurrent_jobs=1, max_queued_jobs=1)
    with Client(running.address, timeout=60) as client:
        first = client.start_training(_long_spec(unique("q")))
        second = client.start_training(_long_spec(unique("q")))
        _wait_for_step(client, first.job_id, 1)
        assert client.get_job(second.job_id).state == (
            training_service_pb2.JOB_STATE_QUEUED
        )

        with pytest.raises(KerasRpcError) as error:
            client.start_training(_long_spec(unique("q")))

        assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue is full" in error.value.message
        client.cancel(second.job_id)
        client.cancel(first.job_id)
        assert final_state(list(client.watch(first.job_id))).state == (
            training_service_pb2.JOB_STATE_CANCELLED
        )
        assert client.server_info().device == "/CPU:0"


def test_gauges_equal_the_last_streamed_step(client: Client, server: Any) -> None:
    name = unique("gauges")
    mae = spec_pb2.MetricSpec(mean_absolute_error=spec_pb2.ErrorMetric())
    events = list(client.train(training_spec(name, compile=compile_spec(0.05, [mae]))))
    last = steps(events)[-1]
    job_id = events[0].job_id

    def gauge(series: str, **labels: str) -> float | None:
        value: float | None = server.app.metrics.registry.get_sample_value(
            series, {"job_id": job_id, "model": name, **labels}
        )
        return value

    assert gauge("kerasrpc_training_cost") == pytest.approx(last.cost)
    assert gauge("kerasrpc_training_step") == last.step
    assert gauge(
        "kerasrpc_training_metric", metric="mean_absolute_error"
    ) == pytest.approx(last.metrics["mean_absolute_error"])
    assert gauge("kerasrpc_training_job_running") == 0


def test_wall_time_and_throughput_are_reported(client: Client) -> None:
    started = time.time()
    events = list(client.train(training_spec(unique("timing"), epochs=1)))
    streamed = steps(events)

    assert all(s.examples_per_second > 0 for s in streamed)
    walls = [s.wall_time_seconds for s in streamed]
    assert walls == sorted(walls)
    assert 0 <= walls[-1] < time.time() - started + 1


def test_training_continues_from_a_stored_version(client: Client) -> None:
    name = unique("continued")
    first = list(client.train(training_spec(name, epochs=3)))
    base = final_state(first).model_version
    spec = training_spec(name, epochs=1)
    spec.base_version = base

    second = list(client.train(spec))

    assert final_state(second).state == SUCCEEDED
    assert final_state(second).model_version == base + 1
    assert steps(second)[0].cost < steps(first)[0].cost / 4
    assert client.get_version(name, base).version == base
