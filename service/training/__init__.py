"""Training jobs: the queue, the training loop, event logs and datasets."""

from __future__ import annotations

from kerasrpc.service.device import Device
from kerasrpc.service.metrics import ServiceMetrics
from kerasrpc.service.registry import ModelRegistry
from kerasrpc.service.settings import Settings


class JobManager:
    """Run training jobs, at most `max_concurrent_jobs` at once."""

    def __init__(
        self,
        settings: Settings,
        metrics: ServiceMetrics,
        registry: ModelRegistry,
        device: Device,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.registry = registry
        self.device = device

    def start(self) -> None:
        """Resume unfinished jobs and start taking new ones."""

    def close(self, timeout: float) -> None:
        """Stop running jobs at a checkpoint so they resume on the next start."""
