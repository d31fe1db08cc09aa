"""The job manager: accepting, queueing, running, resuming and watching jobs."""

from __future__ import annotations

import collections
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kerasrpc.service.device import Device
from kerasrpc.service.durable import write_atomic
from kerasrpc.service.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from kerasrpc.service.metrics import ServiceMetrics
from kerasrpc.service.registry import ModelRegistry
from kerasrpc.service.settings import Settings
from kerasrpc.service.training.datasets import DatasetStore, StoredDataset
from kerasrpc.service.training.eventlog import EventLog, scan
from kerasrpc.service.training.loop import Position, Trainer, checkpoint_step
from kerasrpc.service.training.plan import Plan, make_plan
from kerasrpc.service.training.records import JobRecord, now
from kerasrpc.service.training.runner import JobRunner, Outcome, RunContext
from kerasrpc.v1 import model_service_pb2, training_service_pb2

logger = logging.getLogger("kerasrpc.service.training")

SPEC_FILE = "spec.pb"
EVENTS_FILE = "events.log"
CHECKPOINTS = "checkpoints"
WATCH_POLL_SECONDS = 0.5
WATCH_BATCH_BYTES = 1024 * 1024

QUEUED = training_service_pb2.JOB_STATE_QUEUED
RUNNING = training_service_pb2.JOB_STATE_RUNNING
SUCCEEDED = training_service_pb2.JOB_STATE_SUCCEEDED
FAILED = training_service_pb2.JOB_STATE_FAILED
CANCELLED = training_service_pb2.JOB_STATE_CANCELLED


def state_label(state: int) -> str:
    """Return a state's short lower-case name, as used in metric labels."""
    return training_service_pb2.JobState.Name(state).removeprefix("JOB_STATE_").lower()  # type: ignore[arg-type]


@dataclass
class _Job:
    """A job the manager knows: its record, folder and, while active, its run."""

    record: JobRecord
    folder: Path
    log: EventLog | None = None
    plan: Plan | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    resumed_from: int | None = None
    metric_names: tuple[str, ...] = ()

    @property
    def events_path(self) -> Path:
        """Return the path of the job's event log."""
        return self.folder / EVENTS_FILE


class JobManager:
    """Run training jobs, at most `max_concurrent_jobs` at once."""

    def __init__(
        self,
        settings: Settings,
        metrics: ServiceMetrics,
        registry: ModelRegistry,
        device: Device,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.registry = registry
        self.device = device
        self.root = settings.state_dir / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.datasets = DatasetStore(settings.state_dir / "datasets")
        self._lock = threading.RLock()
        self._jobs: dict[str, _Job] = {}
        self._queue: collections.deque[_Job] = collections.deque()
        self._running: set[str] = set()
        self._stop = threading.Event()
        self._started = False

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Load the jobs on disk, resume the unfinished ones, take new ones."""
        unfinished = []
        for folder in sorted(self.root.iterdir()):
            job = self._load(folder)
            if job is None or job.record.job_id in self._jobs:
                continue
            self._jobs[job.record.job_id] = job
            if not job.record.finished:
                unfinished.append(job)
        unfinished.sort(key=lambda j: j.record.create_time)
        for job in unfinished:
            self._prepare_resume(job)
        with self._lock:
            self._started = True
            self._queue.extend(unfinished)
            self._dispatch()
            self._publish_counts()
        logger.info(
            "training: %d jobs on disk, %d to resume", len(self._jobs), len(unfinished)
        )

    def _load(self, folder: Path) -> _Job | None:
        if not folder.is_dir() or folder.name.startswith("."):
            return None
        try:
            record = JobRecord.load(folder)
        except (OSError, ValueError, TypeError):
            logger.warning("skipping job folder %s: no readable job record", folder)
            return None
        return _Job(record, folder)

    def _prepare_resume(self, job: _Job) -> None:
        """Cut the job's log back to its last checkpoint and reopen it."""
        step = checkpoint_step(job.folder / CHECKPOINTS)
        job.log = EventLog(job.events_path)
        job.log.truncate_after(step)
        if job.record.state == RUNNING:
            job.record.resume_count += 1
            job.resumed_from = step
        job.record.state = QUEUED
        job.record.step = step
        job.record.save(job.folder)
        logger.info("job %s resumes from step %d", job.record.job_id, step)

    def close(self, timeout: float) -> None:
        """Stop running jobs at a checkpoint so they resume on the next start."""
        self._stop.set()
        with self._lock:
            threads = [j.thread for j in self._jobs.values() if j.thread is not None]
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            for job in self._jobs.values():
                if job.log is not None and (
                    job.thread is None or not job.thread.is_alive()
                ):
                    job.log.close()
        logger.info("training stopped; unfinished jobs resume on the next start")

    # -- submitting ---------------------------------------------------------

    def submit(
        self, spec: training_service_pb2.TrainingSpec
    ) -> training_service_pb2.Job:
        """Check a spec and queue its job; return the job.

        Raises:
            InvalidArgument: the spec is wrong; nothing was queued.
            ResourceExhausted: the queue is full.
            Unavailable: the server is stopping.
        """
        self._check_capacity()
        plan = self._plan(spec)
        job_id = uuid.uuid4().hex[:16]
        folder = self.root / job_id
        folder.mkdir()
        write_atomic(folder / SPEC_FILE, spec.SerializeToString())
        record = JobRecord(
            job_id=job_id,
            model_name=spec.model_name,
            total_steps=plan.total_steps,
            epochs=plan.epochs,
            create_time=now(),
            dataset_ids=plan.dataset_ids,
        )
        job = _Job(record, folder, EventLog(folder / EVENTS_FILE), plan)
        with self._lock:
            try:
                self._check_capacity()
            except (ResourceExhausted, Unavailable):
                self._close_log(job)
                shutil.rmtree(folder, ignore_errors=True)
                raise
            record.save(folder)
            self._jobs[job_id] = job
            self._emit_state(job, QUEUED)
            self._queue.append(job)
            self._dispatch()
            self._publish_counts()
            logger.info("job %s queued for model %s", job_id, spec.model_name)
            return record.to_proto()

    def _check_capacity(self) -> None:
        if self._stop.is_set():
            raise Unavailable("the server is stopping; submit the job again later")
        with self._lock:
            waiting = len(self._queue)
            free = self.settings.max_concurrent_jobs - len(self._running)
        if waiting - max(free, 0) >= self.settings.max_queued_jobs:
            raise ResourceExhausted(
                f"training queue is full: {waiting} jobs wait (the limit is "
                f"{self.settings.max_queued_jobs}); retry once some finish"
            )

    def _plan(self, spec: training_service_pb2.TrainingSpec) -> Plan:
        import tensorflow as tf

        with tf.device(self.device.name):
            return make_plan(
                spec,
                registry=self.registry,
                datasets=self.datasets,
                data_root=self.settings.resolved_data_root,
                max_parameters=self.settings.max_parameters,
                default_checkpoint_every=self.settings.checkpoint_every_steps,
            )

    # -- running ------------------------------------------------------------

    def _dispatch(self) -> None:
        """Start queued jobs while slots are free (call with the lock held)."""
        if not self._started:
            return
        while (
            self._queue
            and len(self._running) < max(self.settings.max_concurrent_jobs, 1)
            and not self._stop.is_set()
        ):
            job = self._queue.popleft()
            self._running.add(job.record.job_id)
            job.thread = threading.Thread(
                target=self._run,
                args=(job,),
                name=f"kerasrpc-train-{job.record.job_id}",
            )
            job.thread.daemon = True
            job.thread.start()

    def _run(self, job: _Job) -> None:
        try:
            outcome = self._train(job)
        except ServiceError as error:
            outcome = Outcome(FAILED, error.message)
        except Exception as error:
            logger.exception("job %s failed", job.record.job_id)
            outcome = Outcome(
                FAILED, f"training failed: {type(error).__name__}: {error}"
            )
        self._finish(job, outcome)

    def _train(self, job: _Job) -> Outcome:
        record = job.record
        plan = job.plan or self._resume_plan(job)
        job.plan = None
        trainer = Trainer(plan, self.device.name)
        job.metric_names = tuple(trainer.metric_names)
        position = trainer.restore(job.folder / CHECKPOINTS) or Position()
        if job.resumed_from is not None and position.step < job.resumed_from:
            # The newest checkpoint did not read back and an older one did:
            # cut the log back to it too, so no step appears twice.
            self._log(job).truncate_after(position.step)
            job.resumed_from = position.step
        if job.cancel.is_set():
            return Outcome(CANCELLED, "cancelled")
        with self._lock:
            record.state = RUNNING
            record.start_time = record.start_time or now()
            record.step = position.step
            record.epoch = position.epoch
            record.save(job.folder)
            message = (
                "" if job.resumed_from is None else f"resumed from step {position.step}"
            )
            self._emit_state(job, RUNNING, message)
            self._publish_counts()
        self.metrics.job_started(record.job_id, record.model_name)
        logger.info("job %s running on %s", record.job_id, self.device.name)

        context = RunContext(
            job_id=record.job_id,
            log=self._log(job),
            metrics=self.metrics,
            checkpoints=job.folder / CHECKPOINTS,
            cancel=job.cancel,
            stop=self._stop,
            started=record.start_time,
            on_step=lambda step, epoch: self._progress(job, step, epoch),
        )
        outcome = JobRunner(plan, trainer, context).run(position)
        if outcome.state == SUCCEEDED:
            return self._store(job, plan)
        return outcome

    def _resume_plan(self, job: _Job) -> Plan:
        spec = training_service_pb2.TrainingSpec.FromString(
            (job.folder / SPEC_FILE).read_bytes()
        )
        return self._plan(spec)

    def _progress(self, job: _Job, step: int, epoch: int) -> None:
        job.record.step = step
        job.record.epoch = epoch

    def _store(self, job: _Job, plan: Plan) -> Outcome:
        version = self.registry.add_version(
            plan.model_name,
            plan.model,
            source=model_service_pb2.VERSION_SOURCE_TRAINED,
            job_id=job.record.job_id,
            description=plan.description,
        )
        job.record.model_version = version.version
        return Outcome(SUCCEEDED, f"stored as version {version.version}")

    def _finish(self, job: _Job, outcome: Outcome) -> None:
        record = job.record
        with self._lock:
            self._running.discard(record.job_id)
            try:
                if outcome.interrupted:
                    record.save(job.folder)
                else:
                    self._end(job, outcome)
            except OSError:
                # The state stays right in memory; the disk catches up on the
                # next restart, which resumes the job from its checkpoint.
                logger.exception("job %s: cannot record its end", record.job_id)
            finally:
                self._close_log(job)
                self._dispatch()
                self._publish_counts()

    def _close_log(self, job: _Job) -> None:
        try:
            self._log(job).close()
        except OSError:
            logger.exception("job %s: cannot flush its event log", job.record.job_id)

    def _end(self, job: _Job, outcome: Outcome) -> None:
        # A job cancelled while queued still holds its plan: its model, and
        # its examples' memory and scratch files.
        job.plan = None
        record = job.record
        record.state = outcome.state
        record.error = outcome.message if outcome.state == FAILED else ""
        record.end_time = now()
        record.save(job.folder)
        self.metrics.job_finished(record.job_id, record.model_name, job.metric_names)
        self.metrics.training_jobs_finished.labels(state_label(outcome.state)).inc()
        self._publish_counts()
        self._emit_state(job, outcome.state, outcome.message, record.model_version)
        shutil.rmtree(job.folder / CHECKPOINTS, ignore_errors=True)
        logger.info(
            "job %s %s at step %d%s",
            record.job_id,
            state_label(outcome.state),
            record.step,
            f": {outcome.message}" if outcome.message else "",
        )

    def _emit_state(
        self, job: _Job, state: int, message: str = "", version: int = 0
    ) -> None:
        event = training_service_pb2.TrainingEvent(
            job_id=job.record.job_id,
            state=training_service_pb2.StateEvent(
                state=state,  # type: ignore[arg-type]
                message=message,
                model_version=version,
                step=job.record.step,
            ),
        )
        event.time.FromNanoseconds(time.time_ns())
        self._log(job).append([event])

    def _log(self, job: _Job) -> EventLog:
        if job.log is None:
            job.log = EventLog(job.events_path)
        return job.log

    def _publish_counts(self) -> None:
        counts: dict[str, int] = collections.Counter(
            state_label(job.record.state) for job in self._jobs.values()
        )
        self.metrics.set_job_counts(counts)

    # -- queries and control ------------------------------------------------

    def get(self, job_id: str) -> training_service_pb2.Job:
        """Return one job.

        Raises:
            InvalidArgument: the job id is empty.
            NotFound: no such job.
        """
        with self._lock:
            return self._job(job_id).record.to_proto()

    def list_jobs(
        self, states: Iterable[int] = (), model_name: str = ""
    ) -> list[training_service_pb2.Job]:
        """Return jobs, newest first, filtered by state and model.

        Raises:
            InvalidArgument: a state is not a JobState value.
        """
        wanted = _check_states(states)
        with self._lock:
            records = [job.record for job in self._jobs.values()]
        chosen = [
            r
            for r in records
            if (not wanted or r.state in wanted)
            and (not model_name or r.model_name == model_name)
        ]
        chosen.sort(key=lambda r: r.create_time, reverse=True)
        return [r.to_proto() for r in chosen]

    def cancel(self, job_id: str) -> training_service_pb2.Job:
        """Cancel a queued or running job; return it."""
        with self._lock:
            job = self._job(job_id)
            if job.record.finished:
                return job.record.to_proto()
            job.cancel.set()
            if job in self._queue:
                self._queue.remove(job)
                try:
                    self._end(job, Outcome(CANCELLED, "cancelled"))
                finally:
                    self._close_log(job)
                self._publish_counts()
            logger.info("job %s cancel requested", job_id)
            return job.record.to_proto()

    def _job(self, job_id: str) -> _Job:
        if not job_id:
            raise InvalidArgument.field(
                "job_id", "expected a job id, received an empty string"
            )
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} not found")
        return job

    def watch(
        self, job_id: str, from_step: int, active: Callable[[], bool]
    ) -> Iterator[list[bytes]]:
        """Yield the job's serialized events from `from_step`, in batches.

        Replays the log, then follows it until the job's last event. Ends
        early when `active` turns false (the watcher went away).

        Raises:
            InvalidArgument: the job id is empty.
            NotFound: no such job.
            Unavailable: the server stopped before the job ended.
        """
        with self._lock:
            job = self._job(job_id)
            log = job.log
        offset = log.start_offset(from_step) if log is not None else 0
        replaying = True
        while active():
            end = self._readable_end(job, log, offset)
            batch, offset, final, replaying = _read_batch(
                job.events_path, offset, end, from_step, replaying
            )
            if batch:
                yield batch
            if final:
                return
            if batch:
                continue
            ended = log is None or log.closed
            if ended and offset >= self._readable_end(job, log, offset):
                raise Unavailable(
                    "the server stopped before the job ended; it resumes "
                    "when the server restarts"
                )

    def _readable_end(self, job: _Job, log: EventLog | None, offset: int) -> int:
        if log is None:
            return job.events_path.stat().st_size
        return log.wait(offset, WATCH_POLL_SECONDS)

    # -- datasets -----------------------------------------------------------

    def upload_dataset(
        self,
        header: training_service_pb2.UploadDatasetHeader,
        chunks: Iterable[training_service_pb2.DatasetChunk],
        still_wanted: Callable[[], bool],
    ) -> training_service_pb2.Dataset:
        """Store an uploaded dataset; return it.

        Raises:
            InvalidArgument: the name is empty, a chunk is malformed, or the
                chunks do not hold the examples the header declares.
            Cancelled: the sender went away first.
            Nothing is stored in any of these cases.
        """
        if not header.name:
            raise InvalidArgument.field(
                "header.name", "expected a dataset name, received an empty string"
            )
        if header.examples < 0:
            raise InvalidArgument.field(
                "header.examples",
                f"expected a number of examples >= 0, received {header.examples}",
            )
        stored = self.datasets.upload(
            header.name,
            chunks,
            declared_examples=header.examples,
            still_wanted=still_wanted,
        )
        return stored.to_proto()

    def list_datasets(self) -> list[training_service_pb2.Dataset]:
        """Return every uploaded dataset."""
        return [stored.to_proto() for stored in self.datasets.all()]

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete a dataset no queued or running job uses.

        Raises:
            NotFound: no such dataset.
            FailedPrecondition: an unfinished job trains on it.
        """
        with self._lock:
            users = [
                job.record.job_id
                for job in self._jobs.values()
                if not job.record.finished and dataset_id in job.record.dataset_ids
            ]
            if users:
                raise FailedPrecondition(
                    f"dataset {dataset_id!r} is used by unfinished jobs "
                    f"{', '.join(users)}; cancel them or wait until they end"
                )
            self.datasets.delete(dataset_id)

    def get_dataset(self, dataset_id: str) -> StoredDataset:
        """Return one uploaded dataset's metadata."""
        return self.datasets.get(dataset_id)


def _check_states(states: Iterable[int]) -> set[int]:
    """Return the states as a set; InvalidArgument names the first unknown one."""
    known = set(training_service_pb2.JobState.values())
    wanted = list(states)
    for i, state in enumerate(wanted):
        if state not in known:
            raise InvalidArgument.field(
                f"states[{i}]", f"expected a JobState value, received {state}"
            )
    return set(wanted)


def _read_batch(
    path: Path, offset: int, end: int, from_step: int, replaying: bool
) -> tuple[list[bytes], int, bool, bool]:
    """Read records [offset, end) up to a size; return them and where it stopped."""
    batch: list[bytes] = []
    size = 0
    final = False
    if end <= offset:
        return batch, offset, final, replaying
    for record in scan(path, offset, end):
        offset = record.end
        if replaying and record.step < from_step and not record.final:
            continue
        replaying = False
        batch.append(record.payload)
        size += len(record.payload)
        if record.final:
            final = True
            break
        if size >= WATCH_BATCH_BYTES:
            break
    return batch, offset, final, replaying
