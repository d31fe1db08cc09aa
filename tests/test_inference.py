"""InferenceService over a real server: predictions, errors, versions, limits."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from kerasrpc.client import Client, KerasRpcError
from kerasrpc.client.tensors import to_array
from kerasrpc.v1 import inference_service_pb2

from tests.inference_models import (
    BUILDERS,
    example_inputs,
    output_names,
    reference,
    store,
    unique,
)

TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


def error_of(call: Any) -> KerasRpcError:
    """Run `call` and return the KerasRpcError it raises."""
    with pytest.raises(KerasRpcError) as raised:
        call()
    return raised.value


def sample(server: Any, name: str, labels: dict[str, str]) -> float:
    """Return a metric sample of a server, 0 when absent."""
    value = server.app.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


# 4,000 examples make every style's request larger than the size from which
# the server decodes requests in place (codec.DECODE_IN_PLACE_BYTES).
@pytest.mark.parametrize("batch", [4, 4000])
@pytest.mark.parametrize("style", sorted(BUILDERS))
def test_predictions_equal_the_model_in_process(
    client: Client, tmp_path: Path, style: str, batch: int
) -> None:
    stored = store(client, tmp_path, style)
    stored.inputs = example_inputs(style, batch)

    outputs = client.predict(stored.name, stored.inputs)

    expected = stored.expected()
    assert set(outputs) == set(expected)
    for name, value in expected.items():
        assert outputs[name].dtype == value.dtype
        np.testing.assert_allclose(outputs[name], value, **TOLERANCE)


def test_a_single_input_model_accepts_its_input_under_any_name(
    client: Client, tmp_path: Path
) -> None:
    stored = store(client, tmp_path, "sequential")

    outputs = client.predict(stored.name, stored.inputs["features"])

    np.testing.assert_allclose(
        outputs["scores"], stored.expected()["scores"], **TOLERANCE
    )


def test_a_subclassed_model_called_on_one_batch_size_serves_any(
    client: Client, tmp_path: Path
) -> None:
    from kerasrpc.service.keras import SingleDenseModel

    model = SingleDenseModel(units=3)
    model(np.zeros((32, 6), "float32"))  # built by a call, on a batch of 32
    stored = store(client, tmp_path, "subclassed", model=model)
    x = example_inputs("subclassed", 5)["inputs"]

    [given] = client.metadata(stored.name).inputs
    outputs = client.predict(stored.name, x)

    assert list(given.shape) == [-1, 6]
    np.testing.assert_allclose(outputs[output_names(model)[0]], model(x), **TOLERANCE)


def test_output_names_select_outputs_and_unknown_ones_list_the_known(
    client: Client, tmp_path: Path
) -> None:
    stored = store(client, tmp_path, "functional")

    only = client.predict(stored.name, stored.inputs, outputs=["second"])
    error = error_of(lambda: client.predict(stored.name, stored.inputs, outputs=["x"]))

    assert set(only) == {"second"}
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.violations[0].field == "output_names[0]"
    assert "first, second" in error.violations[0].description


def test_predict_stream_answers_in_order_reusing_the_first_target(
    client: Client, tmp_path: Path
) -> None:
    stored = store(client, tmp_path, "sequential")
    batches = [example_inputs("sequential", n) for n in (1, 5, 3)]
    from kerasrpc.client.client import predict_request
    from kerasrpc.client.tensors import to_array
    from kerasrpc.v1 import inference_service_pb2

    requests = [predict_request(stored.name, b, 0, []) for b in batches]
    for later in requests[1:]:
        later.model_name = ""
    stream = client.inference.PredictStream(
        iter(inference_service_pb2.PredictStreamRequest(request=r) for r in requests),
        timeout=60,
    )
    responses = [message.response for message in stream]

    assert [r.version for r in responses] == [stored.version] * 3
    for batch, response in zip(batches, responses, strict=True):
        got = to_array(response.outputs["scores"])
        np.testing.assert_allclose(got, stored.model(batch["features"]), **TOLERANCE)


@pytest.mark.parametrize(
    ("inputs", "field", "words"),
    [
        ({"features": np.zeros((2, 2, 8), "int64")}, "inputs[features].dtype",
         "expected float32, received int64"),
        ({"features": np.zeros((2, 3, 8), "float32")}, "inputs[features].shape",
         "expected [None, 2, 8]"),
        ({"features": np.zeros((2, 8), "float32")}, "inputs[features].shape",
         "received [2, 8]"),
        ({"features": np.zeros((1, 2, 8), "float32"), "extra": np.zeros(1)},
         "inputs[extra]", "unknown input"),
    ],
)  # fmt: skip
def test_bad_inputs_name_the_field(
    client: Client, tmp_path: Path, inputs: dict[str, Any], field: str, words: str
) -> None:
    stored = store(client, tmp_path, "sequential")

    error = error_of(lambda: client.predict(stored.name, inputs))

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.violations[0].field == field
    assert words in error.violations[0].description


def test_missing_inputs_and_unequal_batches_are_refused(
    client: Client, tmp_path: Path
) -> None:
    stored = store(client, tmp_path, "functional")
    left, right = np.zeros((2, 3), "float32"), np.zeros((3, 4), "float32")

    missing = error_of(lambda: client.predict(stored.name, {"left": left}))
    unequal = error_of(
        lambda: client.predict(stored.name, {"left": left, "right": right})
    )

    assert missing.violations[0].field == "inputs[right]"
    assert "missing" in missing.violations[0].description
    assert unequal.violations[0].field == "inputs[right].shape[0]"
    assert "expected batch size 2" in unequal.violations[0].description


def test_unknown_models_and_versions_are_not_found(
    client: Client, tmp_path: Path
) -> None:
    stored = store(client, tmp_path, "sequential")

    model = error_of(lambda: client.predict(unique("absent"), stored.inputs))
    version = error_of(lambda: client.predict(stored.name, stored.inputs, version=9))

    assert model.code == grpc.StatusCode.NOT_FOUND
    assert version.code == grpc.StatusCode.NOT_FOUND
    assert "9" in version.message


def test_concurrent_requests_reach_the_version_they_name(
    client: Client, tmp_path: Path
) -> None:
    name = unique("versions")
    first = store(client, tmp_path, "sequential", name=name, model=reference(1))
    second = store(client, tmp_path, "sequential", name=name, model=reference(2))
    x = example_inputs("sequential", 3)
    expected = {
        v: np.asarray(s.model(x["features"]))
        for v, s in ((first.version, first), (second.version, second), (0, second))
    }

    def ask(version: int) -> tuple[int, np.ndarray]:
        return version, client.predict(name, x, version=version)["scores"]

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(ask, [first.version, second.version, 0] * 8))

    for version, scores in results:
        np.testing.assert_allclose(scores, expected[version], **TOLERANCE)
    assert not np.allclose(expected[first.version], expected[second.version])


def test_concurrent_requests_are_merged_and_overrides_turn_it_off(
    start_server: Any, tmp_path: Path
) -> None:
    solo = unique("solo")
    running = start_server(
        batch_max_delay_ms=100, batch_overrides=f'{{"{solo}": {{"max_size": 1}}}}'
    )
    with Client(running.address, timeout=60) as client:
        merged = store(client, tmp_path, "sequential")
        alone = store(client, tmp_path, "sequential", name=solo)
        rows = [example_inputs("sequential", 1) for _ in range(8)]

        for stored in (merged, alone):
            with ThreadPoolExecutor(8) as pool:
                got = list(
                    pool.map(lambda x, s=stored: client.predict(s.name, x), rows)
                )
            for x, outputs in zip(rows, got, strict=True):
                want = stored.model(x["features"])
                np.testing.assert_allclose(outputs["scores"], want, **TOLERANCE)

    def batches(name: str) -> tuple[float, float]:
        labels = {"model": name}
        count = sample(running, "kerasrpc_predict_batch_size_count", labels)
        return count, sample(running, "kerasrpc_predict_batch_size_sum", labels)

    merged_count, merged_examples = batches(merged.name)
    assert merged_examples == 8
    assert merged_count < 8
    assert batches(solo) == (8, 8)
    assert sample(running, "kerasrpc_predict_queue_delay_seconds_count",
                  {"model": merged.name}) == 8  # fmt: skip


def test_a_deadline_shorter_than_the_queue_delay_is_never_computed(
    start_server: Any, tmp_path: Path
) -> None:
    running = start_server(batch_max_delay_ms=800)
    with Client(running.address, timeout=60) as client:
        stored = store(client, tmp_path, "sequential")
        client.predict(stored.name, np.zeros((64, 2, 8), "float32"))  # bypasses
        computed = {"model": stored.name}
        before = sample(running, "kerasrpc_predict_batch_size_count", computed)
        examples = sample(running, "kerasrpc_predict_batch_size_sum", computed)

        error = error_of(
            lambda: client.predict(stored.name, stored.inputs, timeout=0.2)
        )
        # Batches are taken in order: once a later request is answered, the
        # expired one has been through the queue.
        client.predict(stored.name, stored.inputs)

    assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert sample(running, "kerasrpc_predict_batch_size_count", computed) == before + 1
    assert sample(running, "kerasrpc_predict_batch_size_sum", computed) == (
        examples + len(next(iter(stored.inputs.values())))
    )
    refused = {"model": stored.name, "version": str(stored.version),
               "protocol": "kerasrpc", "code": "DEADLINE_EXCEEDED"}  # fmt: skip
    assert sample(running, "kerasrpc_predict_requests_total", refused) == 1
    assert sample(running, "kerasrpc_predict_queue_depth", computed) == 0


def test_a_full_queue_refuses_with_resource_exhausted(
    start_server: Any, tmp_path: Path
) -> None:
    running = start_server(batch_max_delay_ms=500, batch_queue_limit=1)
    with Client(running.address, timeout=60) as client:
        stored = store(client, tmp_path, "sequential")
        client.predict(stored.name, stored.inputs)

        def ask(_: int) -> str:
            try:
                client.predict(stored.name, example_inputs("sequential", 1))
            except KerasRpcError as error:
                return error.code.name
            return "OK"

        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(ask, range(4)))

    assert "OK" in codes
    assert "RESOURCE_EXHAUSTED" in codes
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}


def test_deleting_a_version_in_use_lets_running_predictions_finish(
    start_server: Any, tmp_path: Path
) -> None:
    running = start_server(batch_max_delay_ms=400)
    with Client(running.address, timeout=60) as client:
        stored = store(client, tmp_path, "sequential")
        client.predict(stored.name, stored.inputs)
        depth = {"model": stored.name}

        with ThreadPoolExecutor(4) as pool:
            waiting = [
                pool.submit(client.predict, stored.name, stored.inputs)
                for _ in range(4)
            ]
            while sample(running, "kerasrpc_predict_queue_depth", depth) < 4:
                time.sleep(0.01)
            client.delete_version(stored.name, stored.version)
            finished = [future.result() for future in waiting]

        gone = error_of(lambda: client.predict(stored.name, stored.inputs))

    for outputs in finished:
        np.testing.assert_allclose(outputs["scores"], stored.expected()["scores"],
                                   **TOLERANCE)  # fmt: skip
    assert gone.code == grpc.StatusCode.NOT_FOUND


def test_a_restarted_server_predicts_from_a_stored_version(
    start_server: Any, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = start_server(state_dir=state)
    with Client(first.address, timeout=60) as client:
        stored = store(client, tmp_path, "functional")
    first.stop(grace=1.0)

    second = start_server(state_dir=state)
    with Client(second.address, timeout=60) as client:
        outputs = client.predict(stored.name, stored.inputs, version=stored.version)

    for name, value in stored.expected().items():
        np.testing.assert_allclose(outputs[name], value, **TOLERANCE)


def test_messages_over_the_limit_are_refused_both_ways(
    start_server: Any, tmp_path: Path
) -> None:
    running = start_server(max_message_bytes=1 << 20)
    with Client(running.address, timeout=60, max_message_bytes=1 << 26) as client:
        stored = store(client, tmp_path, "sequential")
        big_request = np.zeros((20_000, 2, 8), "float32")  # 1.28 MB in
        big_response = np.zeros((9_000, 2, 8), "float32")  # 0.58 MB in, 0.36 out
        wide = store(client, tmp_path, "sequential", model=_wide())

        incoming = error_of(lambda: client.predict(stored.name, big_request))
        outgoing = error_of(lambda: client.predict(wide.name, big_response))
        fine = client.predict(stored.name, big_response)

    assert incoming.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert outgoing.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "1048576" in outgoing.message
    assert fine["scores"].shape == (9_000, 2, 5)


def _wide() -> Any:
    import keras

    return keras.Sequential([keras.Input((2, 8)), keras.layers.Dense(32)])


def test_requests_are_counted_by_model_version_protocol_and_code(
    server: Any, client: Client, tmp_path: Path
) -> None:
    stored = store(client, tmp_path, "sequential")
    labels = {"model": stored.name, "version": str(stored.version),
              "protocol": "kerasrpc"}  # fmt: skip

    client.predict(stored.name, stored.inputs)
    error_of(lambda: client.predict(stored.name, {"features": np.zeros((1, 3))}))

    assert (
        sample(server, "kerasrpc_predict_requests_total", {**labels, "code": "OK"}) == 1
    )
    invalid = {**labels, "code": "INVALID_ARGUMENT"}
    assert sample(server, "kerasrpc_predict_requests_total", invalid) == 1
    latency = {"model": stored.name, "protocol": "kerasrpc"}
    assert sample(server, "kerasrpc_predict_latency_seconds_count", latency) == 2


def test_predictions_keep_flowing_while_other_threads_fail(
    client: Client, tmp_path: Path
) -> None:
    stored = store(client, tmp_path, "sequential")
    stop = threading.Event()

    def bad() -> None:
        while not stop.is_set():
            error_of(lambda: client.predict(stored.name, {"features": np.zeros(3)}))

    thread = threading.Thread(target=bad)
    thread.start()
    try:
        outputs = [client.predict(stored.name, stored.inputs) for _ in range(5)]
    finally:
        stop.set()
        thread.join()

    for got in outputs:
        np.testing.assert_allclose(
            got["scores"], stored.expected()["scores"], **TOLERANCE
        )


def test_requests_for_unknown_versions_add_no_series(
    server: Any, client: Client, tmp_path: Path
) -> None:
    stored = store(client, tmp_path, "sequential")
    unresolved = {"model": "", "version": "", "protocol": "kerasrpc",
                  "code": "NOT_FOUND"}  # fmt: skip
    before = sample(server, "kerasrpc_predict_requests_total", unresolved)

    for version in range(900, 905):
        error = error_of(
            lambda v=version: client.predict(stored.name, stored.inputs, version=v)
        )
        assert error.code == grpc.StatusCode.NOT_FOUND

    families = server.app.metrics.registry.collect()
    versions = {
        s.labels.get("version")
        for family in families
        if family.name == "kerasrpc_predict_requests"
        for s in family.samples
    }
    assert not versions & {str(v) for v in range(900, 905)}
    after = sample(server, "kerasrpc_predict_requests_total", unresolved)
    assert after == before + 5


def test_inputs_the_model_cannot_compute_say_why_plainly(
    client: Client, tmp_path: Path
) -> None:
    stored = store(client, tmp_path, "embedding")
    ids = np.full((2, 5), 99, dtype="int32")  # the vocabulary has 20 ids

    error = error_of(lambda: client.predict(stored.name, {"tokens": ids}))

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.violations[0].field == "inputs"
    description = error.violations[0].description
    assert "99" in description
    assert "Exception encountered" not in description
    assert "\x1b[" not in description


def test_requests_whose_tensors_do_not_decode_are_counted_unresolved(
    server: Any, client: Client, tmp_path: Path
) -> None:
    from kerasrpc.v1 import inference_service_pb2, tensor_pb2

    stored = store(client, tmp_path, "sequential")
    unresolved = {"model": "", "version": "", "protocol": "kerasrpc",
                  "code": "INVALID_ARGUMENT"}  # fmt: skip
    before = sample(server, "kerasrpc_predict_requests_total", unresolved)
    request = inference_service_pb2.PredictRequest(model_name=stored.name)
    request.inputs["features"].CopyFrom(
        tensor_pb2.Tensor(
            dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[1, 2, 8], content=b"\0" * 12
        )
    )

    with pytest.raises(grpc.RpcError) as raised:
        client.inference.Predict(request, timeout=30)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected 64 bytes" in str(raised.value.details())
    after = sample(server, "kerasrpc_predict_requests_total", unresolved)
    assert after == before + 1


def test_a_version_evicted_from_memory_is_let_go_and_reloaded_on_demand(
    start_server: Any, tmp_path: Path
) -> None:
    import gc
    import weakref

    # Room for one version of the reference model's weights (about 3.6 kB).
    running = start_server(model_cache_bytes=5000)
    name = unique("evicted")
    with Client(running.address, timeout=60) as client:
        first = store(client, tmp_path, "sequential", name=name)
        second = store(client, tmp_path, "sequential", name=name)
        client.predict(name, first.inputs, version=first.version)
        loaded_first = weakref.ref(running.app.registry.load(name, first.version).model)

        client.predict(name, second.inputs, version=second.version)  # evicts it
        deadline = time.monotonic() + 20
        while loaded_first() is not None and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.05)
        again = client.predict(name, first.inputs, version=first.version)

    assert loaded_first() is None
    np.testing.assert_allclose(again["scores"], first.expected()["scores"], **TOLERANCE)


def stream_requests(
    name: str, batches: list[dict[str, np.ndarray]]
) -> list[inference_service_pb2.PredictStreamRequest]:
    """Build a stream's messages, each naming the model."""
    from kerasrpc.client.client import predict_request

    return [
        inference_service_pb2.PredictStreamRequest(
            request=predict_request(name, batch, 0, [])
        )
        for batch in batches
    ]


def test_a_stream_that_waits_for_each_answer_before_sending_on_is_served(
    client: Client, tmp_path: Path
) -> None:
    import queue

    stored = store(client, tmp_path, "sequential")
    batches = [example_inputs("sequential", n) for n in (1, 3, 2, 5)]
    answered: queue.Queue[None] = queue.Queue()

    def one_at_a_time() -> Iterator[inference_service_pb2.PredictStreamRequest]:
        for message in stream_requests(stored.name, batches):
            yield message
            answered.get(timeout=30)  # the server must answer before the next

    outputs = []
    for response in client.inference.PredictStream(one_at_a_time(), timeout=60):
        outputs.append(to_array(response.response.outputs["scores"]))
        answered.put(None)

    for batch, got in zip(batches, outputs, strict=True):
        np.testing.assert_allclose(got, stored.model(batch["features"]), **TOLERANCE)


def test_a_stream_answers_the_messages_before_a_bad_one_then_names_it(
    client: Client, tmp_path: Path
) -> None:
    stored = store(client, tmp_path, "sequential")
    good = example_inputs("sequential", 2)
    bad = {"features": np.zeros((2, 3, 8), "float32")}
    messages = stream_requests(stored.name, [good, good, bad, good])

    received: list[Any] = []
    call = client.inference.PredictStream(iter(messages), timeout=60)
    with pytest.raises(grpc.RpcError) as raised:
        received.extend(call)

    assert len(received) == 2
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "stream message 2" in raised.value.details()


def test_small_batches_of_one_stream_are_merged(
    server: Any, client: Client, tmp_path: Path
) -> None:
    stored = store(client, tmp_path, "sequential")
    messages = stream_requests(
        stored.name, [example_inputs("sequential", 1) for _ in range(40)]
    )
    passes = {"model": stored.name}
    before = sample(server, "kerasrpc_predict_batch_size_count", passes)

    answers = list(client.inference.PredictStream(iter(messages), timeout=60))

    assert len(answers) == 40
    forward_passes = (
        sample(server, "kerasrpc_predict_batch_size_count", passes) - before
    )
    assert forward_passes < 40


def test_a_cancelled_stream_leaves_no_threads_behind(
    client: Client, tmp_path: Path
) -> None:
    stored = store(client, tmp_path, "sequential")
    batch = example_inputs("sequential", 1)

    def endless() -> Iterator[inference_service_pb2.PredictStreamRequest]:
        while True:
            yield from stream_requests(stored.name, [batch])

    call = client.inference.PredictStream(endless(), timeout=60)
    for _ in zip(range(5), call, strict=False):
        pass
    call.cancel()

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and stream_threads():
        time.sleep(0.1)
    assert not stream_threads()


def stream_threads() -> list[str]:
    return [
        t.name for t in threading.enumerate() if t.name.startswith("kerasrpc-stream")
    ]
