"""The server's settings: one object, read from KERASRPC_* variables and flags."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "KERASRPC_"
MIB = 1024 * 1024


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "kerasrpc"


@dataclass(frozen=True)
class Settings:
    """Everything the server can be configured with.

    Each field can be set by the environment variable KERASRPC_<FIELD> (upper
    case) or by the `kerasrpc serve` flag --<field> (dashes for underscores);
    flags win over the environment.
    """

    listen: str = field(
        default="127.0.0.1:50051",
        metadata={"help": "gRPC listen address, host:port (port 0 picks one)."},
    )
    state_dir: Path = field(
        default_factory=_default_state_dir,
        metadata={"help": "Directory for models, datasets, jobs and checkpoints."},
    )
    data_root: Path | None = field(
        default=None,
        metadata={"help": "Root of server-side data files (default: STATE_DIR/data)."},
    )
    metrics_address: str = field(
        default="127.0.0.1:9464",
        metadata={"help": "Prometheus metrics HTTP address, host:port; empty: off."},
    )
    device: str = field(
        default="auto",
        metadata={
            "help": "GPU index to pin to, 'cpu', or 'auto' (GPU 0 when one exists)."
        },
    )
    intra_op_threads: int = field(
        default=0,
        metadata={
            "help": "CPU threads one TensorFlow op may split its work across; "
            "0: TensorFlow's choice (one per core)."
        },
    )
    inter_op_threads: int = field(
        default=0,
        metadata={
            "help": "CPU threads that run independent TensorFlow ops at once; "
            "0: TensorFlow's choice."
        },
    )
    log_format: str = field(
        default="text", metadata={"help": "Log line format: 'text' or 'json'."}
    )
    log_level: str = field(default="INFO", metadata={"help": "Log level."})
    grace_seconds: float = field(
        default=30.0,
        metadata={"help": "On SIGTERM, how long in-flight calls may take to finish."},
    )
    workers: int = field(
        default=64,
        metadata={
            "help": "Threads that serve gRPC calls; open streams may hold all "
            "but min(8, half) of them."
        },
    )
    max_message_bytes: int = field(
        default=64 * MIB,
        metadata={"help": "Largest gRPC message received or sent, in bytes."},
    )
    max_parameters: int = field(
        default=50_000_000,
        metadata={"help": "Largest model, in parameters, a spec may describe."},
    )
    max_concurrent_jobs: int = field(
        default=1, metadata={"help": "Training jobs that run at once."}
    )
    max_queued_jobs: int = field(
        default=16, metadata={"help": "Training jobs that may wait in the queue."}
    )
    checkpoint_every_steps: int = field(
        default=1000,
        metadata={"help": "Default steps between checkpoints of a training job."},
    )
    batch_max_size: int = field(
        default=64,
        metadata={"help": "Largest merged Predict batch; 1 turns batching off."},
    )
    batch_max_delay_ms: float = field(
        default=2.0,
        metadata={"help": "Longest a Predict request waits for others to merge."},
    )
    batch_queue_limit: int = field(
        default=1024,
        metadata={"help": "Predict requests that may wait per model version."},
    )
    batch_overrides: str = field(
        default="",
        metadata={
            "help": "Per-model batching as JSON, overriding batch_max_size and "
            'batch_max_delay_ms: {"model": {"max_size": 8, "max_delay_ms": 1}}.'
        },
    )
    model_cache_bytes: int = field(
        default=2048 * MIB,
        metadata={"help": "Memory bound of loaded model versions (LRU)."},
    )
    job_series_retention_seconds: float = field(
        default=600.0,
        metadata={"help": "How long a finished job's metric series are kept."},
    )

    @property
    def resolved_data_root(self) -> Path:
        """Return the data root, defaulting to a folder of the state directory."""
        return self.data_root if self.data_root is not None else self.state_dir / "data"

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with the given fields changed and converted."""
        converted = {name: _convert(name, value) for name, value in changes.items()}
        return dataclasses.replace(self, **converted)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from KERASRPC_* variables over the defaults."""
        env = os.environ if environ is None else environ
        found = {
            f.name: env[ENV_PREFIX + f.name.upper()]
            for f in dataclasses.fields(cls)
            if ENV_PREFIX + f.name.upper() in env
        }
        return cls().replace(**found)


class SettingsError(ValueError):
    """A setting has a value that cannot be used."""


_KIND_NAMES = {"Path": "a path", "int": "an integer", "float": "a number"}
_AT_LEAST_ONE = (
    "workers",
    "max_message_bytes",
    "max_concurrent_jobs",
    "batch_max_size",
    "batch_queue_limit",
    "checkpoint_every_steps",
)
_CHOICES = {"log_format": ("text", "json")}


def _convert(name: str, value: Any) -> Any:
    types = {f.name: f.type for f in dataclasses.fields(Settings)}
    if name not in types:
        raise SettingsError(f"unknown setting {name!r}")
    kind = str(types[name])
    try:
        converted = _parse(kind, value)
    except ValueError:
        expected = _KIND_NAMES.get(kind.split(" ", maxsplit=1)[0], kind)
        raise SettingsError(f"{name} expected {expected}, received {value!r}") from None
    _check(name, converted)
    return converted


def _parse(kind: str, value: Any) -> Any:
    if value is None or not isinstance(value, str):
        return value
    if kind.startswith("Path"):
        if not value and not kind.endswith("None"):
            raise ValueError(value)
        return Path(value).expanduser() if value else None
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    return value


def _check(name: str, value: Any) -> None:
    if name == "batch_overrides":
        parse_batch_overrides(value)
    if name in _CHOICES and value not in _CHOICES[name]:
        raise SettingsError(
            f"{name} expected one of {', '.join(_CHOICES[name])}, received {value!r}"
        )
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        raise SettingsError(f"{name} expected a non-negative number, received {value}")
    if name in _AT_LEAST_ONE and value < 1:
        raise SettingsError(f"{name} expected at least 1, received {value}")
    if name in ("listen", "metrics_address") and value and ":" not in value:
        raise SettingsError(f"{name} expected host:port, received {value!r}")
    port = str(value).rpartition(":")[2]
    if name == "metrics_address" and value and not port.isdigit():
        raise SettingsError(f"{name} expected host:port, received {value!r}")


BATCH_OVERRIDE_KEYS = ("max_size", "max_delay_ms")


def parse_batch_overrides(text: str) -> dict[str, dict[str, float]]:
    """Parse batch_overrides: model name -> {"max_size": n, "max_delay_ms": ms}.

    Raises:
        SettingsError: the text is not such a JSON object.
    """
    if not text:
        return {}
    try:
        parsed = json.loads(text)
    except ValueError as error:
        raise SettingsError(f"batch_overrides is not valid JSON: {error}") from None
    if not isinstance(parsed, dict):
        raise SettingsError(
            f"batch_overrides expected a JSON object, received {text!r}"
        )
    return {model: _batch_override(model, value) for model, value in parsed.items()}


def _batch_override(model: str, value: Any) -> dict[str, float]:
    where = f"batch_overrides[{model!r}]"
    if not isinstance(value, dict) or not set(value) <= set(BATCH_OVERRIDE_KEYS):
        raise SettingsError(
            f"{where} expected an object with {' and/or '.join(BATCH_OVERRIDE_KEYS)}"
            f", received {json.dumps(value)}"
        )
    for key, number in value.items():
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise SettingsError(f"{where}.{key} expected a number, received {number!r}")
        if key == "max_size" and (number < 1 or number != int(number)):
            raise SettingsError(
                f"{where}.{key} expected an integer >= 1, received {number!r}"
            )
        if number < 0:
            raise SettingsError(
                f"{where}.{key} expected a number >= 0, received {number!r}"
            )
    return {key: float(number) for key, number in value.items()}
