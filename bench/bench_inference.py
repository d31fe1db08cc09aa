"""Predict throughput, latency and memory on the reference model.

The reference model: Sequential, Input (2, 8) -> Dense 64 ReLU -> Dense 5.
The server runs as a `kerasrpc serve` child process; clients run here.

  (a) batch-4096 Predict over loopback: the time the service adds to the
      in-process compiled forward pass, against the raw gRPC round trip of
      the same request and response bytes through a trivial echo service
      (target: ratio <= 1.3);
  (b) 16 concurrent client processes sending batch-1 requests, batching on
      (the defaults) against off (batch_max_size=1): requests/s, p50, p99
      (target: >= 4x the requests/s);
  (c) the server's resident memory over many Predict calls (flat).

    .venv/bin/python -m bench.bench_inference [--calls 100000] [--seconds 10]
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
ECHO_METHOD = "/bench.Echo/Echo"
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


def median_seconds(call: Callable[[], Any], repeats: int) -> float:
    """Return the median seconds of `call` after two warm-up calls."""
    call()
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# (a) ---------------------------------------------------------------------------


def in_process_forward(path: Path, x: np.ndarray, repeats: int) -> float:
    """Time the compiled forward pass the service uses, in this process."""
    import keras
    from kerasrpc.service.inference.forward import Forward
    from kerasrpc.service.registry.signature import model_signature

    model = keras.saving.load_model(path)
    inputs, outputs = model_signature(model)
    forward = Forward(model, inputs, outputs)
    name = inputs[0].name
    return median_seconds(lambda: forward({name: x}), repeats)


def _echo_server(sizes: Any, ready: Any) -> None:
    """Serve ECHO_METHOD: answer any request with `sizes["response"]` bytes."""
    import grpc

    response = b"\x01" * sizes["response"]
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {"Echo": grpc.unary_unary_rpc_method_handler(lambda request, _: response)},
    )
    options = [
        ("grpc.max_receive_message_length", BIG),
        ("grpc.max_send_message_length", BIG),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(8), options=options)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ready.put(port)
    server.wait_for_termination()


def echo_round_trip(request: bytes, response_bytes: int, repeats: int) -> float:
    """Time a raw gRPC round trip of the same request and response sizes."""
    import grpc

    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    sizes = {"response": response_bytes}
    process = context.Process(target=_echo_server, args=(sizes, ready), daemon=True)
    process.start()
    try:
        port = ready.get(timeout=60)
        options = [
            ("grpc.max_receive_message_length", BIG),
            ("grpc.max_send_message_length", BIG),
        ]
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            echo = channel.unary_unary(ECHO_METHOD)
            return median_seconds(lambda: echo(request, timeout=60), repeats)
    finally:
        process.terminate()
        process.join(10)


def added_time(address: str, path: Path, repeats: int) -> dict[str, float]:
    """Part (a): the service's added time over the forward pass, against echo.

    Both round trips send a request built beforehand, so encoding the array
    on the client side counts in neither.
    """
    from kerasrpc.client.client import predict_request

    x = np.random.default_rng(0).normal(size=(4096, 2, 8)).astype("float32")
    request = predict_request(MODEL, x, 0, [])
    with client(address) as connected:
        stub = connected.inference
        predict = median_seconds(lambda: stub.Predict(request, timeout=60), repeats)
        response = stub.Predict(request, timeout=60)
    forward = in_process_forward(path, x, repeats)
    echo = echo_round_trip(request.SerializeToString(), response.ByteSize(), repeats)
    return {
        "predict_ms": predict * 1e3,
        "forward_ms": forward * 1e3,
        "added_ms": (predict - forward) * 1e3,
        "echo_ms": echo * 1e3,
        "ratio": (predict - forward) / echo,
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


def concurrent_clients(address: str, clients: int, seconds: float) -> dict[str, float]:
    """Part (b): requests/s and latency of batch-1 requests from many processes."""
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
    ordered = np.sort(np.asarray(latencies))
    return {
        "requests_per_second": len(ordered) / seconds,
        "p50_ms": float(np.percentile(ordered, 50)) * 1e3,
        "p99_ms": float(np.percentile(ordered, 99)) * 1e3,
    }


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
    """Run (a), (b) and (c) and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        state = Path(folder) / "state"
        path = reference_file(Path(folder))
        with serve(state, args.device) as (address, pid):
            with client(address) as connected:
                connected.import_model(MODEL, path)
            report("(a) batch-4096 Predict", added_time(address, path, args.repeats))
            on = concurrent_clients(address, args.clients, args.seconds)
            report("(b) batching on", on)
            report("(c) server memory", resident_memory(address, pid, args.calls))
        with serve(state, args.device, "--batch-max-size", "1") as (address, _):
            off = concurrent_clients(address, args.clients, args.seconds)
            report("(b) batching off", off)
        speedup = on["requests_per_second"] / off["requests_per_second"]
        print(f"(b) requests/s with batching / without: {speedup:.2f}x")


def report(title: str, figures: dict[str, float]) -> None:
    """Print one part's figures on a line."""
    text = ", ".join(f"{key}={value:.3f}" for key, value in figures.items())
    print(f"{title}: {text}", flush=True)


if __name__ == "__main__":
    main()
