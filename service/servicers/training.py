"""TrainingService: jobs, their event streams, datasets and server info."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kerasrpc.v1 import training_service_pb2_grpc

if TYPE_CHECKING:
    from kerasrpc.service.server import Application


class TrainingServicer(training_service_pb2_grpc.TrainingServiceServicer):
    """Serve kerasrpc.v1.TrainingService."""

    def __init__(self, app: Application) -> None:
        self._app = app
