"""Training throughput with every step streamed, and the server's memory.

The reference model: Sequential, Input (2, 8) -> Dense 64 ReLU -> Dense 5,
mean squared error, SGD, batch 32, synthetic data. One run measures:

  (a) in-process Model.fit with steps_per_execution=32 and no callbacks;
  (b) in-process Model.fit with steps_per_execution=1 and a callback that
      reads every step's logs (the usual way to see each step);
  (c) the same training through a `kerasrpc serve` child process over
      loopback, the client receiving every step's event.

It reports steps/s and the ratios c/a (target >= 0.9) and c/b (target >= 3),
and the server's resident memory sampled over the (c) job (start, end, max).

    .venv/bin/python -m bench.bench_training [--steps 100000] [--fit-steps 20000]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_inference import reference_file

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BATCH = 32
STEPS_PER_EPOCH = 1000
LISTENING = re.compile(r"listening on (\S+:\d+)")


def synthetic() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Return STEPS_PER_EPOCH batches of random (2, 8) -> (2, 5) examples."""
    rng = np.random.default_rng(0)
    rows = BATCH * STEPS_PER_EPOCH
    x = rng.random((rows, 2, 8), dtype=np.float32)
    y = rng.random((rows, 2, 5), dtype=np.float32)
    return x, y


def _keras_model(steps_per_execution: int) -> Any:
    import keras

    with tempfile.TemporaryDirectory() as folder:
        model = keras.saving.load_model(reference_file(Path(folder)))
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss="mse",
        steps_per_execution=steps_per_execution,
    )
    return model


def fit_rate(steps: int, steps_per_execution: int, read_logs: bool) -> float:
    """Return Model.fit's steps/s over `steps`, after a warm-up epoch."""
    import keras

    x, y = synthetic()
    model = _keras_model(steps_per_execution)
    seen: list[float] = []

    class ReadEveryStep(keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            seen.append(float(logs["loss"]))

    callbacks = [ReadEveryStep()] if read_logs else []
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=callbacks)
    epochs = max(1, steps // STEPS_PER_EPOCH)
    started = time.perf_counter()
    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=callbacks)
    return epochs * STEPS_PER_EPOCH / (time.perf_counter() - started)


class Server:
    """A `kerasrpc serve` child process on loopback."""

    def __init__(self, state_dir: Path) -> None:
        command = [
            sys.executable, "-m", "kerasrpc.client.cli", "serve",
            "--listen", "127.0.0.1:0", "--metrics-address", "",
            "--state-dir", str(state_dir), "--device",
            os.environ.get("KERASRPC_DEVICE", "cpu"),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        self.address = self._wait_listening()

    def _wait_listening(self) -> str:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            match = LISTENING.search(line)
            if match:
                threading.Thread(target=self._drain, daemon=True).start()
                return match.group(1)
        raise RuntimeError("the server exited before listening")

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for _ in self.process.stderr:
            pass

    def stop(self) -> None:
        """Stop the server with SIGTERM."""
        self.process.terminate()
        self.process.wait(timeout=60)


class RssSampler(threading.Thread):
    """Sample a process's resident memory every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process(pid)
        self.interval = interval
        self.samples: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.samples.append(self.process.memory_info().rss)


def service_rate(steps: int) -> tuple[float, int, list[int]]:
    """Train through the service; return steps/s, steps received, RSS samples."""
    from kerasrpc.client import Client

    with tempfile.TemporaryDirectory() as folder:
        server = Server(Path(folder))
        try:
            with Client(server.address, timeout=600) as client:
                dataset = client.upload_dataset("bench", *synthetic())
                list(client.train(_spec("warmup", dataset.dataset_id, 2000)))
                sampler = RssSampler(server.process.pid)
                sampler.start()
                received, seconds = _receive_every_step(
                    client, _spec("bench", dataset.dataset_id, steps)
                )
                sampler.done.set()
        finally:
            server.stop()
    return received / seconds, received, sampler.samples


def _receive_every_step(client: Any, spec: Any) -> tuple[int, float]:
    received = 0
    started = 0.0
    for event in client.train(spec):
        if event.WhichOneof("event") != "step":
            continue
        if received == 0:
            started = time.perf_counter()
        received += 1
        assert event.step.step == received, "a step is missing"
    return received - 1, time.perf_counter() - started


def _spec(name: str, dataset_id: str, steps: int) -> Any:
    from kerasrpc.v1 import spec_pb2, training_service_pb2

    dense = spec_pb2.LayerSpec
    return training_service_pb2.TrainingSpec(
        model_name=name,
        spec=spec_pb2.ModelSpec(
            sequential=spec_pb2.SequentialSpec(
                input=spec_pb2.InputSpec(shape=[2, 8]),
                layers=[
                    dense(dense=spec_pb2.DenseLayer(units=64, activation="relu")),
                    dense(dense=spec_pb2.DenseLayer(units=5)),
                ],
            )
        ),
        compile=spec_pb2.CompileSpec(
            loss=spec_pb2.LossSpec(mean_squared_error=spec_pb2.MeanSquaredErrorLoss()),
            optimizer=spec_pb2.OptimizerSpec(
                sgd=spec_pb2.SgdOptimizer(),
                learning_rate=spec_pb2.LearningRateSpec(constant=0.01),
            ),
        ),
        config=spec_pb2.TrainingConfig(
            batch_size=BATCH,
            epochs=-(-steps // STEPS_PER_EPOCH),
            max_steps=steps,
            seed=0,
        ),
        train_data=spec_pb2.DataSource(dataset_id=dataset_id),
    )


def main() -> None:
    """Run the three measurements and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--fit-steps", type=int, default=20_000)
    parser.add_argument("--callback-steps", type=int, default=5_000)
    args = parser.parse_args()

    a = fit_rate(args.fit_steps, 32, read_logs=False)
    b = fit_rate(args.callback_steps, 1, read_logs=True)
    c, received, rss = service_rate(args.steps)
    mib = [sample / 2**20 for sample in rss] or [0.0]
    print(f"(a) Model.fit, steps_per_execution=32:      {a:10.0f} steps/s")
    print(f"(b) Model.fit, per-step callback:           {b:10.0f} steps/s")
    print(f"(c) service, every step streamed ({received} steps): {c:10.0f} steps/s")
    print(f"c/a = {c / a:.2f} (target >= 0.9)   c/b = {c / b:.2f} (target >= 3)")
    print(
        f"server RSS over the job: start {mib[0]:.0f} MiB, end {mib[-1]:.0f} MiB, "
        f"max {max(mib):.0f} MiB ({len(rss)} samples)"
    )


if __name__ == "__main__":
    main()
