"""The training loop's TensorFlow side: chunks of steps in one call, checkpoints.

One call into TensorFlow runs a chunk of K steps in a tf.while_loop and returns
each step's own cost, learning rate and metric values stacked, so the Python
side pays one round trip per chunk yet still sees every step.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import tensorflow as tf
from kerasrpc.service.durable import sync_directory, sync_file
from kerasrpc.service.errors import FailedPrecondition
from kerasrpc.service.training.plan import Plan

logger = logging.getLogger("kerasrpc.service.training")

CHECKPOINT_PREFIX = "ckpt-"
PARTIAL_PREFIX = ".partial-"
REPLACED_PREFIX = ".replaced-"
POSITION_FILE = "position.json"

# What reading a damaged or mismatched checkpoint raises.
_UNREADABLE = (tf.errors.OpError, OSError, ValueError, TypeError, AssertionError)


@dataclass
class Position:
    """Where a job stands: the last step done and where the next one starts."""

    step: int = 0
    epoch: int = 1
    batch: int = 0
    epoch_cost_sum: float = 0.0


@dataclass(frozen=True)
class ChunkResult:
    """What a chunk of steps reports, one entry per step."""

    costs: npt.NDArray[np.float64]
    learning_rates: npt.NDArray[np.float64]
    metrics: dict[str, npt.NDArray[np.float64]]


class Trainer:
    """Run a plan's steps on a device, chunk by chunk, and checkpoint it."""

    def __init__(self, plan: Plan, device_name: str) -> None:
        self.plan = plan
        self.device_name = device_name
        self.strategy = tf.distribute.get_strategy()
        self.metric_names = [metric.name for metric in plan.metrics]
        with tf.device(device_name), self.strategy.scope():
            plan.optimizer.build(plan.model.trainable_variables)
        self._checkpoint = tf.train.Checkpoint(
            model=plan.model,
            optimizer=plan.optimizer,
            metrics=_variables(plan.metrics),
        )
        self._run_chunk = self._chunk_function()
        self._evaluate = self._evaluate_function()

    # -- steps --------------------------------------------------------------

    def run_chunk(self, batches: npt.NDArray[np.int64]) -> ChunkResult:
        """Run one step per row of example indices; return every step's values."""
        features, labels = self._gather(self.plan.train, batches)
        with tf.device(self.device_name):
            costs, rates, values = self._run_chunk(features, labels)
        return ChunkResult(
            costs.numpy().astype(np.float64),
            rates.numpy().astype(np.float64),
            {
                name: value.numpy().astype(np.float64)
                for name, value in zip(self.metric_names, values, strict=True)
            },
        )

    def _gather(
        self, examples: Any, batches: npt.NDArray[np.int64]
    ) -> tuple[tf.Tensor, tf.Tensor]:
        rows = batches.reshape(-1)
        shape = batches.shape
        features = np.asarray(examples.features[rows], dtype=self.plan.input_dtype)
        labels = np.asarray(examples.labels[rows])
        if labels.dtype.kind in "fb":
            labels = labels.astype(np.float32)
        return (
            tf.constant(features.reshape(*shape, *features.shape[1:])),
            tf.constant(labels.reshape(*shape, *labels.shape[1:])),
        )

    def _chunk_function(self) -> Any:
        # TODO: batches are not split across replicas yet, so under a
        # multi-replica strategy each replica would train on the whole batch;
        # only the default (one-device) strategy trains correctly today.
        model, loss_fn, optimizer = self.plan.model, self.plan.loss, self.plan.optimizer
        metrics = self.plan.metrics
        strategy = self.strategy

        def step(features: tf.Tensor, labels: tf.Tensor) -> Any:
            with tf.GradientTape() as tape:
                predictions = model(features, training=True)
                cost = loss_fn(labels, predictions)
                if model.losses:
                    cost = cost + tf.add_n(model.losses)
            gradients = tape.gradient(cost, model.trainable_variables)
            rate = tf.cast(optimizer.learning_rate, tf.float32)
            optimizer.apply(gradients, model.trainable_variables)
            for metric in metrics:
                metric.update_state(labels, predictions)
            return tf.cast(cost, tf.float32), rate

        def chunk(features: tf.Tensor, labels: tf.Tensor) -> Any:
            steps = tf.shape(features)[0]
            costs = tf.TensorArray(tf.float32, size=steps)
            rates = tf.TensorArray(tf.float32, size=steps)
            values = [tf.TensorArray(tf.float32, size=steps) for _ in metrics]
            for i in tf.range(steps):
                cost, rate = strategy.run(step, args=(features[i], labels[i]))
                costs = costs.write(i, strategy.reduce("MEAN", cost, axis=None))
                rates = rates.write(i, rate)
                values = [
                    array.write(i, tf.cast(metric.result(), tf.float32))
                    for array, metric in zip(values, metrics, strict=True)
                ]
            return costs.stack(), rates.stack(), [array.stack() for array in values]

        return tf.function(chunk, reduce_retracing=True)

    # -- epochs and validation ---------------------------------------------

    def reset_metrics(self) -> None:
        """Start the metrics afresh, as at the start of an epoch."""
        for metric in self.plan.metrics:
            metric.reset_state()

    def metric_values(self) -> dict[str, float]:
        """Return each training metric's value over the epoch so far."""
        return {
            name: float(metric.result())
            for name, metric in zip(self.metric_names, self.plan.metrics, strict=True)
        }

    def validate(self, batch_size: int) -> tuple[float, dict[str, float]]:
        """Return the validation cost (mean over examples) and metric values."""
        examples = self.plan.validation
        assert examples is not None
        metrics = self.plan.validation_metrics
        for metric in metrics:
            metric.reset_state()
        total, count = 0.0, 0
        for start in range(0, len(examples), batch_size):
            rows = np.arange(start, min(start + batch_size, len(examples)))
            features, labels = self._gather(examples, rows[None, :])
            with tf.device(self.device_name):
                cost = float(self._evaluate(features[0], labels[0]))
            total += cost * len(rows)
            count += len(rows)
        values = {metric.name: float(metric.result()) for metric in metrics}
        return total / count, values

    def _evaluate_function(self) -> Any:
        model, loss_fn = self.plan.model, self.plan.loss
        metrics = self.plan.validation_metrics

        def evaluate(features: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
            predictions = model(features, training=False)
            for metric in metrics:
                metric.update_state(labels, predictions)
            return tf.cast(loss_fn(labels, predictions), tf.float32)

        return tf.function(evaluate, reduce_retracing=True)

    # -- checkpoints --------------------------------------------------------

    def save(self, directory: Path, position: Position) -> None:
        """Write a checkpoint durably, keeping the one before it as a fallback.

        The new checkpoint is flushed to disk whole before it takes its place,
        and no complete checkpoint is deleted before a newer one is in place.
        """
        if not directory.exists():
            directory.mkdir(parents=True)
            sync_directory(directory.parent)
        final = directory / f"{CHECKPOINT_PREFIX}{position.step:012d}"
        partial = directory / f"{PARTIAL_PREFIX}{final.name}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        self._checkpoint.write(str(partial / "state"))
        (partial / POSITION_FILE).write_bytes(json.dumps(position.__dict__).encode())
        _sync_tree(partial)

        _put_in_place(partial, final)
        _drop_all_but_fallback(directory, final)
        logger.debug("checkpointed %s at step %d", directory.parent.name, position.step)

    def restore(self, directory: Path) -> Position | None:
        """Load the newest checkpoint that reads back; return its position, if any.

        Raises:
            FailedPrecondition: there are checkpoints, but none reads back.
        """
        found = complete_checkpoints(directory)
        failures: list[str] = []
        for folder in found:
            try:
                return self._read(folder)
            except _UNREADABLE as error:
                logger.warning("checkpoint %s cannot be restored: %s", folder, error)
                failures.append(f"step {_step_of(folder)} ({type(error).__name__})")
        if not found:
            return None
        raise FailedPrecondition(
            "the job cannot resume: none of its checkpoints reads back: "
            + ", ".join(failures)
        )

    def _read(self, folder: Path) -> Position:
        position = Position(**json.loads((folder / POSITION_FILE).read_bytes()))
        self._checkpoint.read(str(folder / "state")).assert_existing_objects_matched()
        return position


def complete_checkpoints(directory: Path) -> list[Path]:
    """Return the complete checkpoint folders under `directory`, newest first.

    A checkpoint set aside for a new one of the same step counts too, after
    that one: a crash between the two renames leaves it the only copy.
    """
    found = [
        path
        for pattern in (f"{CHECKPOINT_PREFIX}*", f"{REPLACED_PREFIX}*")
        for path in directory.glob(pattern)
        if path.name.rsplit("-", 1)[-1].isdigit() and (path / POSITION_FILE).is_file()
    ]
    return sorted(
        found,
        key=lambda path: (_step_of(path), path.name.startswith(CHECKPOINT_PREFIX)),
        reverse=True,
    )


def latest_checkpoint(directory: Path) -> Path | None:
    """Return the newest complete checkpoint folder under `directory`."""
    found = complete_checkpoints(directory)
    return found[0] if found else None


def checkpoint_step(directory: Path) -> int:
    """Return the step of the newest complete checkpoint, 0 if none."""
    latest = latest_checkpoint(directory)
    if latest is None:
        return 0
    step: int = json.loads((latest / POSITION_FILE).read_bytes())["step"]
    return step


def _step_of(folder: Path) -> int:
    return int(folder.name.rsplit("-", 1)[-1])


def _sync_tree(folder: Path) -> None:
    """Flush every file under `folder` to disk, then the folders themselves."""
    folders = [folder]
    for path in sorted(folder.rglob("*")):
        if path.is_dir():
            folders.append(path)
        else:
            sync_file(path)
    for each in reversed(folders):
        sync_directory(each)


def _put_in_place(partial: Path, final: Path) -> None:
    """Rename a flushed checkpoint into place; one of its step waits aside."""
    aside = final.with_name(f"{REPLACED_PREFIX}{final.name}")
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)
        final.rename(aside)
    partial.rename(final)
    sync_directory(final.parent)
    shutil.rmtree(aside, ignore_errors=True)


def _drop_all_but_fallback(directory: Path, final: Path) -> None:
    """Delete every checkpoint but `final` and the newest one before it.

    Newer ones go too: a job only writes an older step after falling back
    from them because they did not read back.
    """
    older = [
        p for p in complete_checkpoints(directory) if _step_of(p) < _step_of(final)
    ]
    keep = {final.name, *(p.name for p in older[:1])}
    for pattern in (
        f"{CHECKPOINT_PREFIX}*",
        f"{REPLACED_PREFIX}*",
        f"{PARTIAL_PREFIX}*",
    ):
        for path in directory.glob(pattern):
            if path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)


def _variables(metrics: list[Any]) -> dict[str, Any]:
    return {
        f"metric_{i}_{j}": variable
        for i, metric in enumerate(metrics)
        for j, variable in enumerate(metric.variables)
    }
