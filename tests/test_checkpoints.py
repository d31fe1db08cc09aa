"""Training checkpoints: rewritten at one step, set aside by a crash, unreadable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kerasrpc.service.errors import FailedPrecondition
from kerasrpc.service.metrics import ServiceMetrics
from kerasrpc.service.registry import ModelRegistry
from kerasrpc.service.training.datasets import DatasetStore
from kerasrpc.service.training.loop import Position, Trainer, checkpoint_step
from kerasrpc.service.training.plan import make_plan
from prometheus_client import CollectorRegistry

from tests.training_support import training_spec

AT_STEP_2 = Position(step=2, epoch=1, batch=2)


def new_trainer(state: Path) -> Trainer:
    """Return a trainer of a small dense model, freshly initialised."""
    registry = ModelRegistry(
        state / "models",
        cache_bytes=1 << 20,
        metrics=ServiceMetrics(CollectorRegistry()),
    )
    plan = make_plan(
        training_spec("checkpointed"),
        registry=registry,
        datasets=DatasetStore(state / "datasets"),
        data_root=state,
        max_parameters=10**6,
        default_checkpoint_every=10,
    )
    return Trainer(plan, "/CPU:0")


def train(trainer: Trainer, steps: int) -> None:
    """Run `steps` steps over the first examples."""
    batches = np.arange(steps * 8, dtype=np.int64).reshape(steps, 8)
    trainer.run_chunk(batches % len(trainer.plan.train))


def weights(trainer: Trainer) -> list[Any]:
    """Return the model's weights."""
    return list(trainer.plan.model.get_weights())


def trained_to_step_2(state: Path, directory: Path) -> Trainer:
    """Return a trainer that took two steps and checkpointed them."""
    trainer = new_trainer(state)
    train(trainer, 2)
    trainer.save(directory, AT_STEP_2)
    return trainer


def assert_same_weights(restored: Trainer, trained: list[Any]) -> None:
    """Check a restored trainer holds the weights it was checkpointed with."""
    for got, expected in zip(weights(restored), trained, strict=True):
        np.testing.assert_array_equal(got, expected)


def damage(checkpoint: Path) -> None:
    """Overwrite a checkpoint's TensorFlow state with garbage."""
    for path in checkpoint.glob("state*"):
        path.write_bytes(b"\x00garbage" * 8)


def test_a_checkpoint_written_again_at_its_step_still_resumes_from_it(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "checkpoints"
    first = trained_to_step_2(tmp_path, directory)

    # Restarted, then stopped again before any step: the same step once more.
    second = new_trainer(tmp_path)
    assert second.restore(directory) == AT_STEP_2
    second.save(directory, AT_STEP_2)

    third = new_trainer(tmp_path)
    assert third.restore(directory) == AT_STEP_2
    assert_same_weights(third, weights(first))
    assert sorted(p.name for p in directory.iterdir()) == ["ckpt-000000000002"]


def test_a_crash_between_the_renames_leaves_the_copy_set_aside(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "checkpoints"
    first = trained_to_step_2(tmp_path, directory)
    # The state after the old copy went aside and before the new one came in.
    (directory / "ckpt-000000000002").rename(directory / ".replaced-ckpt-000000000002")
    (directory / ".partial-ckpt-000000000002").mkdir()

    second = new_trainer(tmp_path)

    assert checkpoint_step(directory) == 2
    assert second.restore(directory) == AT_STEP_2
    assert_same_weights(second, weights(first))
    second.save(directory, AT_STEP_2)
    assert sorted(p.name for p in directory.iterdir()) == ["ckpt-000000000002"]


def test_an_unreadable_newest_checkpoint_falls_back_to_the_one_before(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "checkpoints"
    trainer = trained_to_step_2(tmp_path, directory)
    train(trainer, 2)
    trainer.save(directory, Position(step=4, epoch=1, batch=4))
    at_step_4 = weights(trainer)
    train(trainer, 2)
    trainer.save(directory, Position(step=6, epoch=1, batch=6))
    assert sorted(p.name for p in directory.iterdir()) == [
        "ckpt-000000000004",
        "ckpt-000000000006",
    ]
    damage(directory / "ckpt-000000000006")

    resumed = new_trainer(tmp_path)

    assert resumed.restore(directory) == Position(step=4, epoch=1, batch=4)
    assert_same_weights(resumed, at_step_4)


def test_a_job_with_no_readable_checkpoint_fails_naming_the_steps(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "checkpoints"
    trainer = trained_to_step_2(tmp_path, directory)
    trainer.save(directory, Position(step=4, epoch=1, batch=4))
    damage(directory / "ckpt-000000000002")
    damage(directory / "ckpt-000000000004")

    with pytest.raises(FailedPrecondition) as raised:
        new_trainer(tmp_path).restore(directory)

    assert raised.value.message.startswith(
        "the job cannot resume: none of its checkpoints reads back: step 4 ("
    )
    assert ", step 2 (" in raised.value.message
    assert str(tmp_path) not in raised.value.message
