"""Batch predictions: loading versions, dynamic batching, computing."""

from __future__ import annotations

from kerasrpc.service.metrics import ServiceMetrics
from kerasrpc.service.registry import ModelRegistry
from kerasrpc.service.settings import Settings


class InferenceEngine:
    """Compute predictions for stored model versions."""

    def __init__(
        self, settings: Settings, metrics: ServiceMetrics, registry: ModelRegistry
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.registry = registry

    def close(self) -> None:
        """Stop the batching threads."""
