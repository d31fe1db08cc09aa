"""Predict throughput, latency and memory on the reference model.

The reference model: Sequential, Input (2, 8) -> Dense 64 ReLU -> Dense 5.
The server runs as a `kerasrpc serve` child process; clients run here.

  (a) batch-4096 Predict over loopback: the time the service adds to the
      in-process compiled forward pass, against the raw gRPC round trip of
      the same request and response bytes through a trivial echo service
      (target: ratio <= 1.3). Both round trips send the request's bytes,
      encoded beforehand, and keep the response's bytes as they arrive, so
      that neither counts the client's protobuf work. An echo service that
      runs the same forward pass before answering gives the floor: what a
      service with no request handling at all would add;
  (b) 16 concurrent client processes sending batch-1 requests, batching on
      (the defaults) against off (batch_max_size=1): requests/s, p50, p99
      (target: >= 4x the requests/s). The same clients against the echo
      service, answering every request with a real response's bytes, give
      the ceiling: what a server that computes nothing serves on the same
      gRPC stack and cores;
  (c) the server's resident memory over many Predict calls (flat);
  (d) large batches (4 and 32 MiB of inputs) through Client.predict, which
      encodes arrays once and decodes large responses in place, against
      protobuf messages built and parsed by the generated stub (no target).
  (e) 500 batch-1 messages in one PredictStream against unary calls made
      one after another by the same caller (no target).

Part (a) is reported twice: calls interleaved one by one, and in blocks of
ten back-to-back calls of each kind.

    .venv/bin/python -m bench.bench_inference [--calls 100000] [--seconds 10]
        [--rounds 3] [--intra-op-threads N]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MODEL = "reference"
LISTENING = re.compile(r"listening on (\S+:\d+)")
PREDICT_METHOD = "/kerasrpc.v1.InferenceService/Predict"
BIG = 1 << 30


def reference_file(folder: Path) -> Path:
    """Save the reference model as a .keras file and return its path."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((2, 8)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(5),
        ]
    )
    path = folder / "reference.keras"
    model.save(path)
    return path


@contextmanager
def serve(state: Path, device: str, *flags: str) -> Iterator[tuple[str, int]]:
    """Run `kerasrpc serve`; yield its address and process id."""
    command = [
        sys.executable, "-m", "kerasrpc.client.cli", "serve",
        "--listen", "127.0.0.1:0", "--metrics-address", "",
        "--state-dir", str(state), "--device", device,
        "--max-message-bytes", str(256 << 20), *flags,
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        yield _wait_listening(process), process.pid
    finally:
        process.terminate()
        process.wait(timeout=60)


def _wait_listening(process: subprocess.Popen[str]) -> str:
    assert process.stderr is not None
    seen = []
    for line in process.stderr:
        seen.append(line)
        match = LISTENING.search(line)
        if match:
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return match.group(1)
    raise RuntimeError("the server did not start:\n" + "".join(seen))


def client(address: str) -> Any:
    from kerasrpc.client import Client

    return Client(address, timeout=120, max_message_bytes=256 << 20)


def _echo_server(
    response: bytes, ready: Any, model_path: str | None, x: Any = None
) -> None:
    """Serve PREDICT_METHOD by answering every request with `response`.

    With a model, the handler first runs its compiled forward pass on `x`,
    as the real service would on the request's inputs.
    """
    import grpc

    def answer(request: bytes, context: Any) -> bytes:
        return response

    if model_path is not None:
        forward, name = _compiled(Path(model_path))

        def answer(request: bytes, context: Any) -> bytes:
            forward({name: x})
            return response

    handler = grpc.method_handlers_generic_handler(
        "kerasrpc.v1.InferenceService",
        {"Predict": grpc.unary_unary_rpc_method_handler(answer)},
    )
    options = [
        ("grpc.max_receive_message_length", BIG),
        ("grpc.max_send_message_length", BIG),
    ]
    # As many threads as `kerasrpc serve` has by default.
    server = grpc.server(futures.ThreadPoolExecutor(64), options=options)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ready.put(port)
    server.wait_for_termination()


@contextmanager
def echo_server(
    response: bytes, model_path: Path | None = None, x: Any = None
) -> Iterator[str]:
    """Run a raw gRPC echo service in a child process; yield its address.

    It answers Predict, so that kerasrpc clients can call it unchanged, with
    the bytes of a response the real service gave; given a model, it runs
    the model's forward pass on `x` before each answer.
    """
    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    model = None if model_path is None else str(model_path)
    process = context.Process(
        target=_echo_server, args=(response, ready, model, x), daemon=True
    )
    process.start()
    try:
        yield f"127.0.0.1:{ready.get(timeout=120)}"
    finally:
        process.terminate()
        process.join(10)


def _compiled(path: Path) -> tuple[Callable[[Any], Any], str]:
    """Return the compiled forward pass of a saved model and its input's name."""
    import keras
    from kerasrpc.service.inference.forward import Forward
    from kerasrpc.service.registry.signature import model_signature

    model = keras.saving.load_model(path)
    inputs, outputs = model_signature(model)
    return Forward(model, inputs, outputs), inputs[0].name


def raw_predict(channel: Any) -> Callable[..., bytes]:
    """Return Predict on `channel` as a call that sends and returns bytes."""
    call: Callable[..., bytes] = channel.unary_unary(PREDICT_METHOD)
    return call


def batch1_response(address: str) -> bytes:
    """Return the bytes of the service's response to a batch-1 Predict."""
    import grpc
    from kerasrpc.client.client import predict_request

    x = np.zeros((1, 2, 8), "float32")
    with grpc.insecure_channel(address) as channel:
        return raw_predict(channel)(
            predict_request(MODEL, x, 0, []).SerializeToString(), timeout=60
        )


def interleaved_medians(
    calls: dict[str, Callable[[], Any]], repeats: int, block: int = 1
) -> dict[str, float]:
    """Time the calls in turn, round after round; return each one's median seconds.

    Interleaving spreads the machine's drift over all of them alike, and the
    order rotates each round so that each call follows each other one equally
    often (a call can leave threads busy that slow the next one). With
    `block` > 1 each turn makes that many calls back to back and times all
    but the first, which measures each call in its own steady state instead.
    """
    for call in calls.values():
        call()
        call()
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            for turn in range(block):
                start = time.perf_counter()
                calls[name]()
                if turn or block == 1:
                    times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def added_time(
    address: str, path: Path, repeats: int, block: int = 1
) -> dict[str, float]:
    """Part (a): the service's added time over the forward pass, against echo.

    Four calls are timed in turn, round after round: Predict through the
    service, the same compiled forward pass in this process, a raw gRPC
    round trip of the same request and response bytes, and that round trip
    through an echo service that runs the forward pass before answering.
    All round trips send the request's bytes, encoded beforehand, and keep
    the response's bytes as they arrive: the client's protobuf work counts
    in none. The last one is the floor of any service written this way: the
    gRPC round trip and the forward pass sharing one process and the cores.
    """
    import grpc
    from kerasrpc.client.client import predict_request

    x = np.random.default_rng(0).normal(size=(4096, 2, 8)).astype("float32")
    raw = predict_request(MODEL, x, 0, []).SerializeToString()
    forward, name = _compiled(path)
    options = [
        ("grpc.max_receive_message_length", BIG),
        ("grpc.max_send_message_length", BIG),
    ]
    with grpc.insecure_channel(address, options=options) as channel:
        predict = raw_predict(channel)
        response = predict(raw, timeout=60)
        _check_outputs(response, forward({name: x}))
        with (
            echo_server(response) as echo_address,
            echo_server(response, path, x) as floor_address,
            grpc.insecure_channel(echo_address, options=options) as echo_channel,
            grpc.insecure_channel(floor_address, options=options) as floor_channel,
        ):
            echo = raw_predict(echo_channel)
            floor = raw_predict(floor_channel)
            medians = interleaved_medians(
                {
                    "predict": lambda: predict(raw, timeout=60),
                    "forward": lambda: forward({name: x}),
                    "echo": lambda: echo(raw, timeout=60),
                    "echo_forward": lambda: floor(raw, timeout=60),
                },
                repeats,
                block,
            )
    added = medians["predict"] - medians["forward"]
    floor_added = medians["echo_forward"] - medians["forward"]
    return {
        "predict_ms": medians["predict"] * 1e3,
        "forward_ms": medians["forward"] * 1e3,
        "added_ms": added * 1e3,
        "echo_ms": medians["echo"] * 1e3,
        "ratio": added / medians["echo"],
        "echo_forward_ms": medians["echo_forward"] * 1e3,
        "floor_ratio": floor_added / medians["echo"],
    }


def _check_outputs(response: bytes, expected: dict[str, Any]) -> None:
    """Fail unless a Predict response holds the outputs computed in process."""
    from kerasrpc.client.client import decode_outputs
    from kerasrpc.v1 import inference_service_pb2

    served = decode_outputs(inference_service_pb2.PredictResponse.FromString(response))
    for name, array in expected.items():
        np.testing.assert_allclose(served[name], array, rtol=1e-5, atol=1e-6)


def large_batches(address: str, rows: int, repeats: int) -> dict[str, float]:
    """Part (d): a large batch through Client.predict against protobuf messages.

    Both send the same arrays to the same server and return the outputs as
    arrays. Client.predict encodes each array once and decodes a large
    response in place; the baseline builds and parses protobuf messages, as
    a client using the generated stub alone would.
    """
    from kerasrpc.client.client import decode_outputs, predict_request

    x = np.random.default_rng(0).normal(size=(rows, 2, 8)).astype("float32")
    with client(address) as connected:
        medians = interleaved_medians(
            {
                "client": lambda: connected.predict(MODEL, x),
                "messages": lambda: decode_outputs(
                    connected.inference.Predict(
                        predict_request(MODEL, x, 0, []), timeout=120
                    )
                ),
            },
            repeats,
        )
    return {
        "rows": float(rows),
        "request_mib": x.nbytes / 2**20,
        "client_ms": medians["client"] * 1e3,
        "messages_ms": medians["messages"] * 1e3,
        "speedup": medians["messages"] / medians["client"],
    }


def stream_of_small_batches(address: str, messages: int) -> dict[str, float]:
    """Part (e): batch-1 messages in one PredictStream against unary calls in turn.

    The same caller sends `messages` batch-1 requests, once as one stream and
    once as unary Predict calls made one after another.
    """
    x = np.random.default_rng(0).normal(size=(1, 2, 8)).astype("float32")
    with client(address) as connected:
        medians = interleaved_medians(
            {
                "stream": lambda: sum(
                    1
                    for _ in connected.predict_stream(
                        MODEL, (x for _ in range(messages))
                    )
                ),
                "unary": lambda: [connected.predict(MODEL, x) for _ in range(messages)],
            },
            5,
        )
    return {
        "messages": float(messages),
        "stream_ms_per_message": medians["stream"] / messages * 1e3,
        "unary_ms_per_call": medians["unary"] / messages * 1e3,
    }


# (b) ---------------------------------------------------------------------------


def _client_loop(address: str, seconds: float, results: Any) -> None:
    x = np.random.default_rng(os.getpid()).normal(size=(1, 2, 8)).astype("float32")
    latencies = []
    with client(address) as connected:
        connected.predict(MODEL, x)
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            start = time.perf_counter()
            connected.predict(MODEL, x)
            latencies.append(time.perf_counter() - start)
    results.put(latencies)


def concurrent_clients(address: str, clients: int, seconds: float) -> list[float]:
    """Part (b): run batch-1 requests from many processes; return the latencies."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [
        context.Process(target=_client_loop, args=(address, seconds, results))
        for _ in range(clients)
    ]
    for process in processes:
        process.start()
    latencies = [t for _ in processes for t in results.get(timeout=seconds + 300)]
    for process in processes:
        process.join(30)
    return latencies


def batching_rounds(
    addresses: dict[str, str], clients: int, seconds: float, rounds: int
) -> dict[str, dict[str, float]]:
    """Part (b): load each server in turn, round after round; summarise each.

    The order rotates each round, like interleaved_medians, so that the
    machine's drift weighs on every server alike. Requests/s is the median
    of the rounds; the latency percentiles pool every request.
    """
    names = list(addresses)
    rates: dict[str, list[float]] = {name: [] for name in names}
    latencies: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            measured = concurrent_clients(addresses[name], clients, seconds)
            rates[name].append(len(measured) / seconds)
            latencies[name].extend(measured)
    summary = {}
    for name in names:
        ordered = np.sort(np.asarray(latencies[name]))
        summary[name] = {
            "requests_per_second": statistics.median(rates[name]),
            "slowest_round": min(rates[name]),
            "fastest_round": max(rates[name]),
            "p50_ms": float(np.percentile(ordered, 50)) * 1e3,
            "p99_ms": float(np.percentile(ordered, 99)) * 1e3,
        }
    return summary


# (c) ---------------------------------------------------------------------------


def resident_memory(address: str, pid: int, calls: int) -> dict[str, float]:
    """Part (c): the server's RSS, sampled while `calls` Predicts run."""
    import psutil

    server = psutil.Process(pid)
    x = np.zeros((8, 2, 8), "float32")
    samples: list[float] = []
    done = 0
    lock = threading.Lock()

    def work(count: int) -> None:
        nonlocal done
        with client(address) as connected:
            for _ in range(count):
                connected.predict(MODEL, x)
                with lock:
                    done += 1

    threads = 4
    pool = [
        threading.Thread(target=work, args=(calls // threads,)) for _ in range(threads)
    ]
    for thread in pool:
        thread.start()
    while any(thread.is_alive() for thread in pool):
        samples.append(server.memory_info().rss / 2**20)
        time.sleep(0.5)
    samples.append(server.memory_info().rss / 2**20)
    return {
        "calls": float(done),
        "start_mib": samples[0],
        "end_mib": samples[-1],
        "max_mib": max(samples),
        "samples": float(len(samples)),
    }


def main() -> None:
    """Run every part and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--intra-op-threads",
        type=int,
        default=0,
        help="TensorFlow's threads per op, in the server and in the in-process "
        "forward pass alike (0: TensorFlow's choice)",
    )
    args = parser.parse_args()
    # Read by TensorFlow when it starts in this process, for the in-process
    # forward pass, and by `kerasrpc serve` in the server.
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(args.intra_op_threads)
    threads = ("--intra-op-threads", str(args.intra_op_threads))

    with tempfile.TemporaryDirectory() as folder:
        path = reference_file(Path(folder))
        with serve(Path(folder) / "state", args.device, *threads) as (address, pid):
            with client(address) as connected:
                connected.import_model(MODEL, path)
            report("(a) batch-4096 Predict", added_time(address, path, args.repeats))
            report(
                "(a) in blocks of 10 calls",
                added_time(address, path, args.repeats // 10, block=10),
            )
            report("(c) server memory", resident_memory(address, pid, args.calls))
            for rows in (65_536, 524_288):
                report(f"(d) batch-{rows}", large_batches(address, rows, 10))
            report("(e) stream of batch-1", stream_of_small_batches(address, 500))
        batching(Path(folder), path, args, threads)


def batching(folder: Path, path: Path, args: Any, threads: tuple[str, ...]) -> None:
    """Part (b): batching on, batching off and the echo ceiling, interleaved."""
    off_flags = (*threads, "--batch-max-size", "1")
    with (
        serve(folder / "on", args.device, *threads) as (on_address, _),
        serve(folder / "off", args.device, *off_flags) as (off_address, _),
    ):
        for address in (on_address, off_address):
            with client(address) as connected:
                connected.import_model(MODEL, path)
        with echo_server(batch1_response(off_address)) as echo_address:
            addresses = {"on": on_address, "off": off_address, "echo": echo_address}
            summary = batching_rounds(
                addresses, args.clients, args.seconds, args.rounds
            )
    report("(b) batching on", summary["on"])
    report("(b) batching off", summary["off"])
    report("(b) echo service (ceiling)", summary["echo"])
    off = summary["off"]["requests_per_second"]
    speedup = summary["on"]["requests_per_second"] / off
    bound = summary["echo"]["requests_per_second"] / off
    print(f"(b) requests/s with batching / without: {speedup:.2f}x")
    print(f"(b) requests/s of the echo service / without batching: {bound:.2f}x")


def report(title: str, figures: dict[str, float]) -> None:
    """Print one part's figures on a line."""
    text = ", ".join(f"{key}={value:.3f}" for key, value in figures.items())
    print(f"{title}: {text}", flush=True)


if __name__ == "__main__":
    main()
