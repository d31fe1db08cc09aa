"""Batch predictions: validating inputs, dynamic batching, computing."""

from kerasrpc.service.inference.engine import InferenceEngine, Prediction

__all__ = ["InferenceEngine", "Prediction"]
