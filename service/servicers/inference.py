"""InferenceService: batch predictions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kerasrpc.v1 import inference_service_pb2_grpc

if TYPE_CHECKING:
    from kerasrpc.service.server import Application


class InferenceServicer(inference_service_pb2_grpc.InferenceServiceServicer):
    """Serve kerasrpc.v1.InferenceService."""

    def __init__(self, app: Application) -> None:
        self._app = app
