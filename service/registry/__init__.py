"""The model registry: named models, numbered versions, on local disk."""

from __future__ import annotations

from pathlib import Path

from kerasrpc.service.metrics import ServiceMetrics


class ModelRegistry:
    """Store model versions under `root` and load them for serving."""

    def __init__(
        self, root: Path, *, cache_bytes: int, metrics: ServiceMetrics
    ) -> None:
        self.root = root
        self.cache_bytes = cache_bytes
        self.metrics = metrics

    def close(self) -> None:
        """Release loaded models."""
