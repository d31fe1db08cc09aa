"""ModelService: models and their versions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kerasrpc.v1 import model_service_pb2_grpc

if TYPE_CHECKING:
    from kerasrpc.service.server import Application


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """Serve kerasrpc.v1.ModelService."""

    def __init__(self, app: Application) -> None:
        self._app = app
