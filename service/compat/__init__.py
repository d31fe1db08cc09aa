"""The inference protocols other clients speak: Open Inference and TF Serving."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from kerasrpc.service.server import Application

OPEN_INFERENCE_SERVICE = "inference.GRPCInferenceService"
TF_SERVING_SERVICE = "tensorflow.serving.PredictionService"


def add_compat_services(server: grpc.Server, app: Application) -> list[str]:
    """Add the compatibility servicers to `server`; return their full names."""
    from kerasrpc.service.compat.open_inference import OpenInferenceServicer
    from kerasrpc.service.compat.tf_serving import TfServingServicer
    from tensorflow_serving.apis import prediction_service_pb2_grpc
    from tritonclient.grpc import service_pb2_grpc

    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        OpenInferenceServicer(app), server
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        TfServingServicer(app), server
    )
    return [OPEN_INFERENCE_SERVICE, TF_SERVING_SERVICE]
