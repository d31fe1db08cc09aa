"""ModelService: models and their versions."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc
from kerasrpc.service.errors import InvalidArgument
from kerasrpc.service.registry import check_model_name, export_version
from kerasrpc.service.registry.create import create_model
from kerasrpc.v1 import model_service_pb2 as pb
from kerasrpc.v1 import model_service_pb2_grpc

if TYPE_CHECKING:
    from kerasrpc.service.server import Application

logger = logging.getLogger("kerasrpc.service.servicers")

CHUNK_BYTES = 1024 * 1024
IMPORT_LIMIT_FACTOR = 16


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """Serve kerasrpc.v1.ModelService."""

    def __init__(self, app: Application) -> None:
        self._app = app

    @property
    def max_import_bytes(self) -> int:
        """The largest .keras file ImportModel accepts."""
        return self._app.settings.max_message_bytes * IMPORT_LIMIT_FACTOR

    def CreateModel(  # noqa: N802
        self, request: pb.CreateModelRequest, context: grpc.ServicerContext
    ) -> pb.CreateModelResponse:
        """Build a model from a spec and store it as a new version."""
        created = create_model(
            self._app.registry,
            request.model_name,
            request.spec,
            compile_spec=request.compile if request.HasField("compile") else None,
            max_parameters=self._app.settings.max_parameters,
            validate_only=request.validate_only,
            description=request.description,
        )
        return pb.CreateModelResponse(
            model_version=created.version, summary=created.summary
        )

    def ImportModel(  # noqa: N802
        self,
        request_iterator: Iterator[pb.ImportModelRequest],
        context: grpc.ServicerContext,
    ) -> pb.ImportModelResponse:
        """Store an uploaded .keras file as a new version."""
        header = _import_header(request_iterator)
        version = self._app.registry.upload(
            header.model_name,
            _import_chunks(request_iterator),
            max_bytes=self.max_import_bytes,
            declared_bytes=header.size_bytes,
            description=header.description,
        )
        return pb.ImportModelResponse(model_version=version)

    def ListModels(  # noqa: N802
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        """List the stored models."""
        return pb.ListModelsResponse(models=self._app.registry.list_models())

    def GetModel(  # noqa: N802
        self, request: pb.GetModelRequest, context: grpc.ServicerContext
    ) -> pb.GetModelResponse:
        """Get one model and its versions."""
        return pb.GetModelResponse(
            model=self._app.registry.get_model(request.model_name)
        )

    def DeleteModel(  # noqa: N802
        self, request: pb.DeleteModelRequest, context: grpc.ServicerContext
    ) -> pb.DeleteModelResponse:
        """Delete a model and all its versions."""
        self._app.registry.delete_model(request.model_name)
        return pb.DeleteModelResponse()

    def GetModelVersion(  # noqa: N802
        self, request: pb.GetModelVersionRequest, context: grpc.ServicerContext
    ) -> pb.GetModelVersionResponse:
        """Get one version."""
        version = self._app.registry.get_version(request.model_name, request.version)
        return pb.GetModelVersionResponse(model_version=version)

    def DeleteModelVersion(  # noqa: N802
        self, request: pb.DeleteModelVersionRequest, context: grpc.ServicerContext
    ) -> pb.DeleteModelVersionResponse:
        """Delete one version."""
        self._app.registry.delete_version(request.model_name, request.version)
        return pb.DeleteModelVersionResponse()

    def GetModelMetadata(  # noqa: N802
        self, request: pb.GetModelMetadataRequest, context: grpc.ServicerContext
    ) -> pb.GetModelMetadataResponse:
        """Describe a version's inputs and outputs."""
        version, inputs, outputs = self._app.registry.signature(
            request.model_name, request.version
        )
        return pb.GetModelMetadataResponse(
            model_name=request.model_name,
            version=version,
            inputs=inputs,
            outputs=outputs,
        )

    def GetModelSummary(  # noqa: N802
        self, request: pb.GetModelSummaryRequest, context: grpc.ServicerContext
    ) -> pb.GetModelSummaryResponse:
        """Summarise a version as Keras does."""
        from kerasrpc.service.keras import summarize

        loaded = self._app.registry.load(request.model_name, request.version)
        return pb.GetModelSummaryResponse(summary=summarize(loaded.model))

    def ExportModel(  # noqa: N802
        self, request: pb.ExportModelRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ExportModelResponse]:
        """Stream a version out as a .keras file or a zipped SavedModel."""
        check_model_name(request.model_name)
        export_format = request.format or pb.EXPORT_FORMAT_KERAS
        with export_version(
            self._app.registry, request.model_name, request.version, export_format
        ) as exported:
            yield pb.ExportModelResponse(
                size_bytes=exported.size_bytes, file_name=exported.file_name
            )
            for chunk in exported.chunks(CHUNK_BYTES):
                yield pb.ExportModelResponse(chunk=chunk)


def _import_header(
    requests: Iterator[pb.ImportModelRequest],
) -> pb.ImportModelHeader:
    first = next(requests, None)
    if first is None or not first.HasField("header"):
        received = "nothing" if first is None else "a chunk"
        raise InvalidArgument.field(
            "header",
            f"expected the first message to carry the header, received {received}",
        )
    return first.header


def _import_chunks(requests: Iterator[pb.ImportModelRequest]) -> Iterator[bytes]:
    for index, request in enumerate(requests, start=1):
        if request.HasField("header"):
            raise InvalidArgument.field(
                "header",
                f"expected the header in the first message only, received it "
                f"again in message {index}",
            )
        yield request.chunk
