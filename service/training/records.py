"""Job records on disk: one JSON file per job, replaced atomically."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from google.protobuf import timestamp_pb2
from kerasrpc.service.durable import write_atomic
from kerasrpc.v1 import training_service_pb2

RECORD_FILE = "job.json"


@dataclass
class JobRecord:
    """What the service remembers about a job across restarts."""

    job_id: str
    model_name: str
    state: int = training_service_pb2.JOB_STATE_QUEUED
    error: str = ""
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    epochs: int = 0
    model_version: int = 0
    create_time: float = 0.0
    start_time: float = 0.0
    end_time: float = 0.0
    resume_count: int = 0
    dataset_ids: tuple[str, ...] = ()

    @property
    def finished(self) -> bool:
        """Return whether the job ended."""
        return self.state not in (
            training_service_pb2.JOB_STATE_QUEUED,
            training_service_pb2.JOB_STATE_RUNNING,
        )

    def to_proto(self) -> training_service_pb2.Job:
        """Return the job as the API describes it."""
        return training_service_pb2.Job(
            job_id=self.job_id,
            model_name=self.model_name,
            state=self.state,  # type: ignore[arg-type]
            error=self.error,
            step=self.step,
            total_steps=self.total_steps,
            epoch=self.epoch,
            epochs=self.epochs,
            model_version=self.model_version,
            create_time=_timestamp(self.create_time),
            start_time=_timestamp(self.start_time),
            end_time=_timestamp(self.end_time),
            resume_count=self.resume_count,
        )

    def save(self, directory: Path) -> None:
        """Write the record into `directory` atomically."""
        values = asdict(self)
        values["dataset_ids"] = list(self.dataset_ids)
        write_atomic(directory / RECORD_FILE, json.dumps(values).encode())

    @classmethod
    def load(cls, directory: Path) -> JobRecord:
        """Read the record of the job stored in `directory`.

        Raises:
            OSError, ValueError: the record is missing or unreadable.
        """
        values: dict[str, Any] = json.loads((directory / RECORD_FILE).read_bytes())
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in values.items() if key in known}
        values["dataset_ids"] = tuple(values.get("dataset_ids", ()))
        return cls(**values)


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp | None:
    if not seconds:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def now() -> float:
    """Return the wall-clock time in seconds."""
    return time.time()
