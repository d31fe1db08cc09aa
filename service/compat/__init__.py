"""The inference protocols other clients speak: Open Inference and TF Serving."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from kerasrpc.service.server import Application

OPEN_INFERENCE_SERVICE = "inference.GRPCInferenceService"
TF_SERVING_SERVICE = "tensorflow.serving.PredictionService"
TF_SERVING_MODEL_SERVICE = "tensorflow.serving.ModelService"


def add_compat_services(server: grpc.Server, app: Application) -> list[str]:
    """Add the compatibility servicers to `server`; return their full names."""
    from kerasrpc.service.compat.open_inference import (
        OpenInferenceServicer,
        decode_infer_request,
    )
    from kerasrpc.service.compat.tf_serving import (
        TfServingModelServicer,
        TfServingServicer,
        decode_predict_request,
    )
    from kerasrpc.service.registration import add_servicer
    from tensorflow_serving.apis import model_service_pb2, prediction_service_pb2
    from tritonclient.grpc import service_pb2

    add_servicer(
        server,
        service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
        OpenInferenceServicer(app),
        {"ModelInfer": decode_infer_request, "ModelStreamInfer": decode_infer_request},
    )
    add_servicer(
        server,
        prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"],
        TfServingServicer(app),
        {"Predict": decode_predict_request},
    )
    add_servicer(
        server,
        model_service_pb2.DESCRIPTOR.services_by_name["ModelService"],
        TfServingModelServicer(app),
    )
    return [OPEN_INFERENCE_SERVICE, TF_SERVING_SERVICE, TF_SERVING_MODEL_SERVICE]
