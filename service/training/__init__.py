"""Training jobs: the queue, the training loop, event logs and datasets."""

from kerasrpc.service.training.jobs import JobManager, state_label

__all__ = ["JobManager", "state_label"]
