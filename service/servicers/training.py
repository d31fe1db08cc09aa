"""TrainingService: jobs, their event streams, datasets and server info."""

# ruff: noqa: N802  (method names are the RPC names the generated base declares)

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from typing import TYPE_CHECKING, TypeVar

import grpc
from google.protobuf.message import Message
from kerasrpc.client.codec import length_prefix
from kerasrpc.service.errors import InvalidArgument
from kerasrpc.v1 import training_service_pb2, training_service_pb2_grpc

if TYPE_CHECKING:
    from kerasrpc.service.server import Application

M = TypeVar("M", bound=Message)
EVENTS_FIELD = 1  # the responses' repeated events field


class TrainingServicer(training_service_pb2_grpc.TrainingServiceServicer):
    """Serve kerasrpc.v1.TrainingService."""

    def __init__(self, app: Application) -> None:
        self._app = app

    def Train(
        self, request: training_service_pb2.TrainRequest, context: grpc.ServicerContext
    ) -> Iterator[training_service_pb2.TrainResponse]:
        """Start a job and stream its events until it ends."""
        job = self._app.jobs.submit(request.spec)
        for batch in self._app.jobs.watch(job.job_id, 0, context.is_active):
            yield _events(training_service_pb2.TrainResponse, batch)

    def StartTraining(
        self,
        request: training_service_pb2.StartTrainingRequest,
        context: grpc.ServicerContext,
    ) -> training_service_pb2.StartTrainingResponse:
        """Start a job and return it at once."""
        job = self._app.jobs.submit(request.spec)
        return training_service_pb2.StartTrainingResponse(job=job)

    def WatchTraining(
        self,
        request: training_service_pb2.WatchTrainingRequest,
        context: grpc.ServicerContext,
    ) -> Iterator[training_service_pb2.WatchTrainingResponse]:
        """Stream a job's events from a step, past then live."""
        if request.from_step < 0:
            raise InvalidArgument.field(
                "from_step", f"expected a step >= 0, received {request.from_step}"
            )
        batches = self._app.jobs.watch(
            request.job_id, request.from_step, context.is_active
        )
        for batch in batches:
            yield _events(training_service_pb2.WatchTrainingResponse, batch)

    def CancelTraining(
        self,
        request: training_service_pb2.CancelTrainingRequest,
        context: grpc.ServicerContext,
    ) -> training_service_pb2.CancelTrainingResponse:
        """Cancel a queued or running job."""
        job = self._app.jobs.cancel(request.job_id)
        return training_service_pb2.CancelTrainingResponse(job=job)

    def GetJob(
        self, request: training_service_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> training_service_pb2.GetJobResponse:
        """Return one job."""
        return training_service_pb2.GetJobResponse(
            job=self._app.jobs.get(request.job_id)
        )

    def ListJobs(
        self,
        request: training_service_pb2.ListJobsRequest,
        context: grpc.ServicerContext,
    ) -> training_service_pb2.ListJobsResponse:
        """Return jobs, newest first."""
        jobs = self._app.jobs.list_jobs(request.states, request.model_name)
        return training_service_pb2.ListJobsResponse(jobs=jobs)

    def UploadDataset(
        self,
        request_iterator: Iterator[training_service_pb2.UploadDatasetRequest],
        context: grpc.ServicerContext,
    ) -> training_service_pb2.UploadDatasetResponse:
        """Store a client-streamed dataset."""
        header = _dataset_header(next(request_iterator, None))
        # gRPC may end the requests of a cancelled call as if they were all
        # sent: the declared count and the call's state tell the two apart.
        dataset = self._app.jobs.upload_dataset(
            header, _chunks(request_iterator), context.is_active
        )
        return training_service_pb2.UploadDatasetResponse(dataset=dataset)

    def ListDatasets(
        self,
        request: training_service_pb2.ListDatasetsRequest,
        context: grpc.ServicerContext,
    ) -> training_service_pb2.ListDatasetsResponse:
        """Return the uploaded datasets."""
        datasets = self._app.jobs.list_datasets()
        return training_service_pb2.ListDatasetsResponse(datasets=datasets)

    def DeleteDataset(
        self,
        request: training_service_pb2.DeleteDatasetRequest,
        context: grpc.ServicerContext,
    ) -> training_service_pb2.DeleteDatasetResponse:
        """Delete an uploaded dataset."""
        self._app.jobs.delete_dataset(request.dataset_id)
        return training_service_pb2.DeleteDatasetResponse()

    def GetServerInfo(
        self,
        request: training_service_pb2.GetServerInfoRequest,
        context: grpc.ServicerContext,
    ) -> training_service_pb2.GetServerInfoResponse:
        """Return the server's versions, device and limits."""
        import keras
        import tensorflow as tf

        settings = self._app.settings
        return training_service_pb2.GetServerInfoResponse(
            version=_version(),
            tensorflow_version=tf.__version__,
            keras_version=keras.__version__,
            device=self._app.device.name,
            device_description=self._app.device.description,
            max_concurrent_jobs=settings.max_concurrent_jobs,
            max_queued_jobs=settings.max_queued_jobs,
            max_receive_message_bytes=settings.max_message_bytes,
            max_send_message_bytes=settings.max_message_bytes,
        )


def _events(response_type: type[M], payloads: list[bytes]) -> M:
    """Build a response of serialized events without decoding them one by one."""
    encoded = b"".join(
        length_prefix(EVENTS_FIELD, len(payload)) + payload for payload in payloads
    )
    return response_type.FromString(encoded)


def _dataset_header(
    first: training_service_pb2.UploadDatasetRequest | None,
) -> training_service_pb2.UploadDatasetHeader:
    """Return the header an upload starts with; InvalidArgument if it does not."""
    if first is not None and first.WhichOneof("part") == "header":
        return first.header

    if first is None:
        received = "no message"
    elif first.WhichOneof("part") == "chunk":
        received = "a chunk"
    else:
        received = "an empty message"
    raise InvalidArgument.field(
        "header", f"expected a header as the first message, received {received}"
    )


def _chunks(
    requests: Iterator[training_service_pb2.UploadDatasetRequest],
) -> Iterator[training_service_pb2.DatasetChunk]:
    for i, request in enumerate(requests):
        if request.WhichOneof("part") != "chunk":
            raise InvalidArgument.field(
                f"chunk[{i}]",
                "expected a chunk after the header, received another header",
            )
        yield request.chunk


def _version() -> str:
    try:
        return importlib.metadata.version("kerasrpc")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
