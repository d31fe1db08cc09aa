"""A typed Python client for kerasrpc that takes and returns numpy arrays."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import grpc
import numpy as np
import numpy.typing as npt
from kerasrpc.client import codec
from kerasrpc.client.errors import KerasRpcError
from kerasrpc.client.tensors import to_array, to_tensor
from kerasrpc.v1 import (
    inference_service_pb2,
    inference_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
    spec_pb2,
    training_service_pb2,
    training_service_pb2_grpc,
)

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_MESSAGE_BYTES = 64 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024
Arrays = npt.ArrayLike | Mapping[str, npt.ArrayLike]


def _translate_errors(method: Callable[P, R]) -> Callable[P, R]:
    """Raise KerasRpcError, with the server's details, for a failed call."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except grpc.RpcError as error:
            raise KerasRpcError.from_rpc_error(error) from None

    return call


def _translate_stream(
    method: Callable[P, Iterator[R]],
) -> Callable[P, Iterator[R]]:
    """Like _translate_errors, for methods that return an iterator."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> Iterator[R]:
        try:
            yield from method(*args, **kwargs)
        except grpc.RpcError as error:
            raise KerasRpcError.from_rpc_error(error) from None

    return call


class Client:
    """A connection to a kerasrpc server.

    Example:
        >>> with Client("127.0.0.1:50051") as client:
        ...     outputs = client.predict("mnist", images)

    Args:
        target: the server's host:port.
        timeout: default deadline of unary calls, in seconds; None for none.
        max_message_bytes: largest message sent or received.
        channel: an existing channel to use instead of opening one.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        timeout: float | None = None,
        max_message_bytes: int = DEFAULT_MESSAGE_BYTES,
        channel: grpc.Channel | None = None,
    ) -> None:
        self._channel = channel or grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ],
        )
        self.timeout = timeout
        self.models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self.training = training_service_pb2_grpc.TrainingServiceStub(self._channel)
        self.inference = inference_service_pb2_grpc.InferenceServiceStub(self._channel)
        # Predict calls that encode arrays and decode outputs without copies.
        self._predict = self._channel.unary_unary(
            "/kerasrpc.v1.InferenceService/Predict",
            request_serializer=codec.serialize,
            response_deserializer=codec.decode_predict_response,
        )
        self._predict_stream = self._channel.stream_stream(
            "/kerasrpc.v1.InferenceService/PredictStream",
            request_serializer=codec.serialize,
            response_deserializer=codec.decode_predict_stream_response,
        )

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Models ---------------------------------------------------------------

    @_translate_errors
    def create_model(
        self,
        model_name: str,
        spec: spec_pb2.ModelSpec,
        *,
        compile: spec_pb2.CompileSpec | None = None,
        validate_only: bool = False,
        description: str = "",
    ) -> model_service_pb2.CreateModelResponse:
        """Build a model from a spec and store it as a new, untrained version."""
        request = model_service_pb2.CreateModelRequest(
            model_name=model_name,
            spec=spec,
            compile=compile,
            validate_only=validate_only,
            description=description,
        )
        response: model_service_pb2.CreateModelResponse = self.models.CreateModel(
            request, timeout=self.timeout
        )
        return response

    @_translate_errors
    def import_model(
        self, model_name: str, keras_file: str | Path, *, description: str = ""
    ) -> model_service_pb2.ModelVersion:
        """Upload a .keras file as a new version of `model_name`."""
        path = Path(keras_file)
        header = model_service_pb2.ImportModelHeader(
            model_name=model_name,
            description=description,
            size_bytes=path.stat().st_size,
        )

        def messages() -> Iterator[model_service_pb2.ImportModelRequest]:
            yield model_service_pb2.ImportModelRequest(header=header)
            with path.open("rb") as file:
                while chunk := file.read(CHUNK_BYTES):
                    yield model_service_pb2.ImportModelRequest(chunk=chunk)

        response = self.models.ImportModel(messages(), timeout=self.timeout)
        version: model_service_pb2.ModelVersion = response.model_version
        return version

    @_translate_errors
    def list_models(self) -> list[model_service_pb2.Model]:
        """Return every stored model with its versions."""
        response = self.models.ListModels(
            model_service_pb2.ListModelsRequest(), timeout=self.timeout
        )
        return list(response.models)

    @_translate_errors
    def get_model(self, model_name: str) -> model_service_pb2.Model:
        """Return one model with its versions."""
        response = self.models.GetModel(
            model_service_pb2.GetModelRequest(model_name=model_name),
            timeout=self.timeout,
        )
        model: model_service_pb2.Model = response.model
        return model

    @_translate_errors
    def delete_model(self, model_name: str) -> None:
        """Delete a model and all its versions."""
        self.models.DeleteModel(
            model_service_pb2.DeleteModelRequest(model_name=model_name),
            timeout=self.timeout,
        )

    @_translate_errors
    def get_version(
        self, model_name: str, version: int = 0
    ) -> model_service_pb2.ModelVersion:
        """Return one version; 0 means the latest."""
        response = self.models.GetModelVersion(
            model_service_pb2.GetModelVersionRequest(
                model_name=model_name, version=version
            ),
            timeout=self.timeout,
        )
        found: model_service_pb2.ModelVersion = response.model_version
        return found

    @_translate_errors
    def delete_version(self, model_name: str, version: int) -> None:
        """Delete one version."""
        self.models.DeleteModelVersion(
            model_service_pb2.DeleteModelVersionRequest(
                model_name=model_name, version=version
            ),
            timeout=self.timeout,
        )

    @_translate_errors
    def metadata(
        self, model_name: str, version: int = 0
    ) -> model_service_pb2.GetModelMetadataResponse:
        """Return a version's inputs and outputs."""
        response: model_service_pb2.GetModelMetadataResponse = (
            self.models.GetModelMetadata(
                model_service_pb2.GetModelMetadataRequest(
                    model_name=model_name, version=version
                ),
                timeout=self.timeout,
            )
        )
        return response

    @_translate_errors
    def summary(
        self, model_name: str, version: int = 0
    ) -> model_service_pb2.ModelSummary:
        """Return a version's Keras summary."""
        response = self.models.GetModelSummary(
            model_service_pb2.GetModelSummaryRequest(
                model_name=model_name, version=version
            ),
            timeout=self.timeout,
        )
        summary: model_service_pb2.ModelSummary = response.summary
        return summary

    @_translate_errors
    def export_model(
        self,
        model_name: str,
        destination: str | Path,
        *,
        version: int = 0,
        format: int = model_service_pb2.EXPORT_FORMAT_KERAS,
    ) -> Path:
        """Download a version to `destination` (a file path); return the path."""
        request = model_service_pb2.ExportModelRequest(
            model_name=model_name,
            version=version,
            format=format,  # type: ignore[arg-type]
        )
        path = Path(destination)
        partial = path.with_name(path.name + ".part")
        with partial.open("wb") as file:
            for response in self.models.ExportModel(request, timeout=self.timeout):
                file.write(response.chunk)
        partial.replace(path)
        return path

    # Training -------------------------------------------------------------

    @_translate_stream
    def train(
        self, spec: training_service_pb2.TrainingSpec
    ) -> Iterator[training_service_pb2.TrainingEvent]:
        """Start a job and yield its events until it ends."""
        request = training_service_pb2.TrainRequest(spec=spec)
        for response in self.training.Train(request):
            yield from response.events

    @_translate_errors
    def start_training(
        self, spec: training_service_pb2.TrainingSpec
    ) -> training_service_pb2.Job:
        """Start a job; return it at once."""
        response = self.training.StartTraining(
            training_service_pb2.StartTrainingRequest(spec=spec),
            timeout=self.timeout,
        )
        job: training_service_pb2.Job = response.job
        return job

    @_translate_stream
    def watch(
        self, job_id: str, *, from_step: int = 0
    ) -> Iterator[training_service_pb2.TrainingEvent]:
        """Yield a job's events from `from_step`: past ones, then live ones."""
        request = training_service_pb2.WatchTrainingRequest(
            job_id=job_id, from_step=from_step
        )
        for response in self.training.WatchTraining(request):
            yield from response.events

    @_translate_errors
    def cancel(self, job_id: str) -> training_service_pb2.Job:
        """Cancel a job; return it."""
        response = self.training.CancelTraining(
            training_service_pb2.CancelTrainingRequest(job_id=job_id),
            timeout=self.timeout,
        )
        job: training_service_pb2.Job = response.job
        return job

    @_translate_errors
    def get_job(self, job_id: str) -> training_service_pb2.Job:
        """Return one job."""
        response = self.training.GetJob(
            training_service_pb2.GetJobRequest(job_id=job_id), timeout=self.timeout
        )
        job: training_service_pb2.Job = response.job
        return job

    @_translate_errors
    def list_jobs(
        self, *, model_name: str = "", states: Iterable[int] = ()
    ) -> list[training_service_pb2.Job]:
        """Return jobs, newest first, optionally of one model or some states."""
        response = self.training.ListJobs(
            training_service_pb2.ListJobsRequest(
                model_name=model_name,
                states=list(states),  # type: ignore[arg-type]
            ),
            timeout=self.timeout,
        )
        return list(response.jobs)

    @_translate_errors
    def upload_dataset(
        self,
        name: str,
        features: npt.ArrayLike,
        labels: npt.ArrayLike,
        *,
        chunk_bytes: int = 4 * CHUNK_BYTES,
    ) -> training_service_pb2.Dataset:
        """Upload features and labels in chunks; return the stored dataset.

        Raises:
            ValueError: features or labels are scalars, or their numbers of
                rows differ; nothing is sent then.
        """
        x, y = np.asarray(features), np.asarray(labels)
        if x.ndim == 0 or y.ndim == 0:
            raise ValueError(
                "expected features and labels of shape (rows, ...), received "
                f"shapes {list(x.shape)} and {list(y.shape)}"
            )
        if len(x) != len(y):
            raise ValueError(
                f"expected as many labels as features, received {len(x)} rows of "
                f"features and {len(y)} of labels"
            )
        row_bytes = max(1, x[:1].nbytes + y[:1].nbytes)
        rows = max(1, chunk_bytes // row_bytes)

        def messages() -> Iterator[training_service_pb2.UploadDatasetRequest]:
            yield training_service_pb2.UploadDatasetRequest(
                header=training_service_pb2.UploadDatasetHeader(
                    name=name, examples=len(x)
                )
            )
            for start in range(0, len(x), rows):
                chunk = training_service_pb2.DatasetChunk(
                    features=to_tensor(x[start : start + rows]),
                    labels=to_tensor(y[start : start + rows]),
                )
                yield training_service_pb2.UploadDatasetRequest(chunk=chunk)

        response = self.training.UploadDataset(messages(), timeout=self.timeout)
        dataset: training_service_pb2.Dataset = response.dataset
        return dataset

    @_translate_errors
    def list_datasets(self) -> list[training_service_pb2.Dataset]:
        """Return the uploaded datasets."""
        response = self.training.ListDatasets(
            training_service_pb2.ListDatasetsRequest(), timeout=self.timeout
        )
        return list(response.datasets)

    @_translate_errors
    def delete_dataset(self, dataset_id: str) -> None:
        """Delete an uploaded dataset."""
        self.training.DeleteDataset(
            training_service_pb2.DeleteDatasetRequest(dataset_id=dataset_id),
            timeout=self.timeout,
        )

    @_translate_errors
    def server_info(self) -> training_service_pb2.GetServerInfoResponse:
        """Return the server's version, device and limits."""
        info: training_service_pb2.GetServerInfoResponse = self.training.GetServerInfo(
            training_service_pb2.GetServerInfoRequest(), timeout=self.timeout
        )
        return info

    # Inference ------------------------------------------------------------

    @_translate_errors
    def predict(
        self,
        model_name: str,
        inputs: Arrays,
        *,
        version: int = 0,
        outputs: Iterable[str] = (),
        timeout: float | None = None,
    ) -> dict[str, npt.NDArray[Any]]:
        """Predict one batch; return the outputs by name.

        Args:
            model_name: the model.
            inputs: one array for a single-input model, or arrays by input name.
            version: the version; 0 means the latest.
            outputs: the output names to return; all when empty.
            timeout: the call's deadline in seconds (default: the client's).
        """
        request = _predict_message(model_name, inputs, version, outputs)
        response = self._predict(
            request, timeout=timeout if timeout is not None else self.timeout
        )
        return decode_outputs(response)

    @_translate_stream
    def predict_stream(
        self,
        model_name: str,
        batches: Iterable[Arrays],
        *,
        version: int = 0,
        outputs: Iterable[str] = (),
    ) -> Iterator[dict[str, npt.NDArray[Any]]]:
        """Predict a stream of batches; yield each batch's outputs in order."""
        names = list(outputs)
        # PredictStreamRequest holds the PredictRequest as its field 1.
        requests = (
            _stream_message(_predict_message(model_name, batch, version, names))
            for batch in batches
        )
        for response in self._predict_stream(requests):
            yield decode_outputs(response.response)


def predict_request(
    model_name: str, inputs: Arrays, version: int, outputs: Iterable[str]
) -> inference_service_pb2.PredictRequest:
    """Build a PredictRequest message from arrays."""
    return inference_service_pb2.PredictRequest(
        model_name=model_name,
        version=version,
        inputs={name: to_tensor(value) for name, value in _named(inputs).items()},
        output_names=list(outputs),
    )


def _predict_message(
    model_name: str, inputs: Arrays, version: int, outputs: Iterable[str]
) -> inference_service_pb2.PredictRequest | codec.Encoded:
    """Build a PredictRequest: encoded around the arrays when they are large.

    Below codec.DECODE_IN_PLACE_BYTES protobuf's own encoding is quicker.
    """
    named = {name: np.asarray(value) for name, value in _named(inputs).items()}
    if sum(array.nbytes for array in named.values()) < codec.DECODE_IN_PLACE_BYTES:
        return predict_request(model_name, named, version, outputs)
    return codec.predict_request(model_name, version, named, outputs)


def _stream_message(
    request: inference_service_pb2.PredictRequest | codec.Encoded,
) -> inference_service_pb2.PredictStreamRequest | codec.Encoded:
    """Wrap a PredictRequest as a PredictStreamRequest (its field 1)."""
    if isinstance(request, codec.Encoded):
        return request.nested(1)
    return inference_service_pb2.PredictStreamRequest(request=request)


def _named(inputs: Arrays) -> Mapping[str, npt.ArrayLike]:
    """Return inputs by name; a lone array goes by "input"."""
    return inputs if isinstance(inputs, Mapping) else {"input": inputs}


def decode_outputs(
    response: inference_service_pb2.PredictResponse | codec.PredictResponseView,
) -> dict[str, npt.NDArray[Any]]:
    """Decode a PredictResponse's outputs into arrays by name.

    The arrays are read-only; a large response decoded in place shares its
    memory with them.
    """
    return {
        name: to_array(tensor, f"outputs[{name}]")
        for name, tensor in response.outputs.items()
    }
