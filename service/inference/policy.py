"""How Predict requests for one model are merged into batches."""

from __future__ import annotations

from dataclasses import dataclass

from kerasrpc.service.settings import Settings, parse_batch_overrides


@dataclass(frozen=True)
class BatchPolicy:
    """The merging limits of one model's requests."""

    max_size: int
    max_delay_seconds: float
    queue_limit: int

    @property
    def enabled(self) -> bool:
        """Return whether requests are merged at all."""
        return self.max_size > 1


class BatchPolicies:
    """The global batching settings with their per-model overrides."""

    def __init__(self, settings: Settings) -> None:
        self._default = BatchPolicy(
            max_size=max(1, settings.batch_max_size),
            max_delay_seconds=settings.batch_max_delay_ms / 1000.0,
            queue_limit=settings.batch_queue_limit,
        )
        self._overrides = parse_batch_overrides(settings.batch_overrides)

    def for_model(self, model_name: str) -> BatchPolicy:
        """Return the policy of `model_name`: its override, else the default."""
        override = self._overrides.get(model_name)
        if override is None:
            return self._default
        return BatchPolicy(
            max_size=int(override.get("max_size", self._default.max_size)),
            max_delay_seconds=override.get(
                "max_delay_ms", self._default.max_delay_seconds * 1000.0
            )
            / 1000.0,
            queue_limit=self._default.queue_limit,
        )
