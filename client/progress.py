"""Show training events: a progress bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

from typing import Never, TextIO

from kerasrpc.v1 import training_service_pb2
from tqdm import tqdm

_FINAL = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED")


def describe_step(step: training_service_pb2.StepEvent) -> str:
    """Return one readable line for a step event."""
    metrics = " ".join(f"{k}={v:.4g}" for k, v in sorted(step.metrics.items()))
    return (
        f"step {step.step} epoch {step.epoch} cost {step.cost:.6g} "
        f"lr {step.learning_rate:.4g} {metrics}".rstrip()
    )


def describe_epoch(epoch: training_service_pb2.EpochEndEvent) -> str:
    """Return one readable line for an epoch-end event."""
    parts = [f"epoch {epoch.epoch} done: cost {epoch.cost:.6g}"]
    parts += [f"{k}={v:.4g}" for k, v in sorted(epoch.metrics.items())]
    if epoch.HasField("validation_cost"):
        parts.append(f"val_cost {epoch.validation_cost:.6g}")
    parts += [f"val_{k}={v:.4g}" for k, v in sorted(epoch.validation_metrics.items())]
    return " ".join(parts)


class EventPrinter:
    """Print a job's events to `out`."""

    def __init__(self, out: TextIO, total: int = 0) -> None:
        self._out = out
        self._bar: tqdm[Never] | None = None
        self._interactive = out.isatty()
        self._total = total
        self.final_state = ""

    def show(self, event: training_service_pb2.TrainingEvent) -> None:
        """Show one event."""
        kind = event.WhichOneof("event")
        if kind == "step":
            self._step(event.step)
        elif kind == "epoch_end":
            self._line(describe_epoch(event.epoch_end))
        elif kind == "state":
            self._state(event)

    def close(self) -> None:
        """Close the progress bar, if any."""
        if self._bar is not None:
            self._bar.close()

    def _step(self, step: training_service_pb2.StepEvent) -> None:
        if not self._interactive:
            self._line(describe_step(step))
            return
        bar = self._bar
        if bar is None:
            bar = self._bar = tqdm(
                total=self._total or None, file=self._out, unit="step"
            )
        bar.n = step.step
        bar.set_postfix_str(f"cost={step.cost:.4g} epoch={step.epoch}", refresh=False)
        bar.update(0)

    def _state(self, event: training_service_pb2.TrainingEvent) -> None:
        state = training_service_pb2.JobState.Name(event.state.state)
        if state in _FINAL:
            self.final_state = state
        line = f"job {event.job_id} {state.removeprefix('JOB_STATE_')}"
        if event.state.model_version:
            line += f": model version {event.state.model_version}"
        if event.state.message:
            line += f": {event.state.message}"
        self._line(line)

    def _line(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self._out)
        else:
            print(text, file=self._out, flush=True)
