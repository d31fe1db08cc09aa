"""The registry's directory: a folder per model, a folder per version.

Layout under the root::

    <model>/model.json            the model's last version number
    <model>/<version>/model.keras the Keras file
    <model>/<version>/version.json how the version was made, and its signature
    .retired/<model>.json         last version number of a deleted model
    .tmp/                         versions being written or deleted

A version is written into `.tmp`, flushed to disk, then renamed into place, so
a crash leaves either the whole version or nothing of it; `.tmp` is emptied
when the registry opens.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format, timestamp_pb2
from kerasrpc.service.durable import sync_directory, sync_file, write_atomic
from kerasrpc.service.errors import InvalidArgument
from kerasrpc.service.registry.names import check_model_name
from kerasrpc.v1 import model_service_pb2, tensor_pb2

logger = logging.getLogger("kerasrpc.service.registry")

MODEL_FILE = "model.keras"
VERSION_FILE = "version.json"
MODEL_INDEX = "model.json"
TEMP_DIR = ".tmp"
RETIRED_DIR = ".retired"


@dataclass
class VersionRecord:
    """What the registry knows about one stored version."""

    model_name: str
    version: int
    source: int = model_service_pb2.VERSION_SOURCE_UNSPECIFIED
    create_time: float = 0.0
    job_id: str = ""
    description: str = ""
    parameter_count: int = 0
    size_bytes: int = 0
    inputs: list[tensor_pb2.TensorSpec] = field(default_factory=list)
    outputs: list[tensor_pb2.TensorSpec] = field(default_factory=list)
    load_error: str = ""

    def to_proto(self, *, loaded: bool) -> model_service_pb2.ModelVersion:
        """Return the version as the API shows it."""
        created = timestamp_pb2.Timestamp()
        created.FromNanoseconds(int(self.create_time * 1e9))
        return model_service_pb2.ModelVersion(
            model_name=self.model_name,
            version=self.version,
            source=self.source,  # type: ignore[arg-type]
            create_time=created,
            job_id=self.job_id,
            parameter_count=self.parameter_count,
            size_bytes=self.size_bytes,
            loaded=loaded,
            load_error=self.load_error,
            description=self.description,
        )

    def to_json(self) -> dict[str, Any]:
        """Return the contents of version.json."""
        created = timestamp_pb2.Timestamp()
        created.FromNanoseconds(int(self.create_time * 1e9))
        return {
            "model_name": self.model_name,
            "version": self.version,
            "source": model_service_pb2.VersionSource.Name(self.source),  # type: ignore[arg-type]
            "create_time": created.ToJsonString(),
            "job_id": self.job_id,
            "description": self.description,
            "parameter_count": self.parameter_count,
            "size_bytes": self.size_bytes,
            "signature": {
                "inputs": [json_format.MessageToDict(s) for s in self.inputs],
                "outputs": [json_format.MessageToDict(s) for s in self.outputs],
            },
        }

    @classmethod
    def from_json(
        cls, data: dict[str, Any], model_name: str, version: int
    ) -> VersionRecord:
        """Read a version.json document."""
        created = timestamp_pb2.Timestamp()
        created.FromJsonString(data["create_time"])
        signature = data.get("signature", {})
        return cls(
            model_name=model_name,
            version=version,
            source=model_service_pb2.VersionSource.Value(data["source"]),
            create_time=created.ToNanoseconds() / 1e9,
            job_id=str(data.get("job_id", "")),
            description=str(data.get("description", "")),
            parameter_count=int(data.get("parameter_count", 0)),
            size_bytes=int(data.get("size_bytes", 0)),
            inputs=[_input_spec(s) for s in signature.get("inputs", [])],
            outputs=[_tensor_spec(s) for s in signature.get("outputs", [])],
        )


@dataclass
class ModelRecord:
    """A model: its versions and the last number it handed out."""

    name: str
    last_version: int = 0
    versions: dict[int, VersionRecord] = field(default_factory=dict)


class Store:
    """Read and write the registry's directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.temp_root = root / TEMP_DIR
        self.retired_root = root / RETIRED_DIR

    def open(self) -> tuple[dict[str, ModelRecord], dict[str, int]]:
        """Create the directory if needed and drop leftovers.

        Returns:
            The stored models by name, and the last version number of each
            deleted model, so that a model created again under its name does
            not reuse them.
        """
        for folder in (self.root, self.temp_root, self.retired_root):
            folder.mkdir(parents=True, exist_ok=True)
        self._clean_temp()
        retired = self._read_retired()
        models: dict[str, ModelRecord] = {}
        for folder in sorted(self.root.iterdir()):
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            model = self._scan_model(folder)
            if model is not None:
                model.last_version = max(model.last_version, retired.get(model.name, 0))
                models[model.name] = model
        return models, retired

    def model_file(self, model_name: str, version: int) -> Path:
        """Return the path of a version's .keras file."""
        return self.root / model_name / str(version) / MODEL_FILE

    def staging_dir(self, prefix: str) -> Path:
        """Return a new empty folder on the store's filesystem for one write."""
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.temp_root))

    def write_model_index(self, model_name: str, last_version: int) -> None:
        """Record the last version number handed out for a model."""
        folder = self.root / model_name
        if not folder.exists():
            folder.mkdir()
            sync_directory(self.root)
        write_json_atomic(folder / MODEL_INDEX, {"last_version": last_version})

    def flush_staged(self, staged: Path) -> None:
        """Flush a staged model file to disk, before the version is numbered.

        The model file can be large: flushing it here, outside the registry's
        lock, keeps loads and predictions running while it is written.
        """
        sync_file(staged / MODEL_FILE)

    def commit_version(self, staged: Path, record: VersionRecord) -> None:
        """Move a staged folder holding a flushed model.keras into place.

        Writes version.json beside the model file and flushes it, then renames
        the folder, so the version appears whole or not at all.
        """
        (staged / VERSION_FILE).write_text(
            json.dumps(record.to_json(), indent=2), encoding="utf-8"
        )
        sync_file(staged / VERSION_FILE)
        sync_directory(staged)
        folder = self.root / record.model_name
        os.rename(staged, folder / str(record.version))
        sync_directory(folder)

    def discard_version(self, model_name: str, version: int) -> None:
        """Delete a version's folder."""
        self._discard(self.root / model_name / str(version))

    def discard_model(self, model_name: str, last_version: int) -> None:
        """Delete a model's folder, remembering its last version number."""
        write_json_atomic(
            self.retired_root / f"{model_name}.json", {"last_version": last_version}
        )
        self._discard(self.root / model_name)

    def _discard(self, folder: Path) -> None:
        """Rename a folder away at once, then delete it."""
        trash = self.temp_root / f"deleted-{uuid.uuid4().hex}"
        try:
            os.rename(folder, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def _clean_temp(self) -> None:
        leftovers = list(self.temp_root.iterdir())
        for path in leftovers:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if leftovers:
            logger.warning(
                "removed %s unfinished writes left in %s",
                len(leftovers),
                self.temp_root,
            )

    def _read_retired(self) -> dict[str, int]:
        retired: dict[str, int] = {}
        for path in self.retired_root.glob("*.json"):
            try:
                retired[path.stem] = int(read_json(path)["last_version"])
            except (OSError, ValueError, KeyError, TypeError):
                logger.warning("ignoring unreadable %s", path)
        return retired

    def _scan_model(self, folder: Path) -> ModelRecord | None:
        try:
            check_model_name(folder.name)
        except InvalidArgument:
            logger.warning("ignoring %s: not a valid model name", folder)
            return None
        model = ModelRecord(folder.name, _read_last_version(folder))
        for child in folder.iterdir():
            if child.name.startswith(".") and child.is_file():
                child.unlink(missing_ok=True)  # an interrupted model.json write
            elif child.is_dir() and child.name.isdigit() and int(child.name) > 0:
                record = _read_version(model.name, int(child.name), child)
                model.versions[record.version] = record
        model.versions = dict(sorted(model.versions.items()))
        model.last_version = max([model.last_version, *model.versions])
        return model


def _read_last_version(folder: Path) -> int:
    try:
        return int(read_json(folder / MODEL_INDEX)["last_version"])
    except FileNotFoundError:
        return 0
    except (OSError, ValueError, KeyError, TypeError):
        logger.warning("%s is unreadable; numbering from its versions", folder)
        return 0


def _read_version(model_name: str, version: int, folder: Path) -> VersionRecord:
    """Read a version's record; a broken one is kept, with its load error."""
    try:
        data = read_json(folder / VERSION_FILE)
        record = VersionRecord.from_json(data, model_name, version)
    except (OSError, ValueError, KeyError, TypeError) as error:
        record = VersionRecord(model_name, version)
        record.load_error = f"its {VERSION_FILE} cannot be read ({error})"
        logger.warning("version %s of %r: %s", version, model_name, record.load_error)
        return record
    record.load_error = check_model_file(folder / MODEL_FILE)
    if record.load_error:
        logger.warning("version %s of %r: %s", version, model_name, record.load_error)
    return record


def check_model_file(path: Path) -> str:
    """Return why a .keras file cannot be loaded, from a cheap look; "" if fine.

    An operating-system error that may pass (too many open files, say) is
    no reason: the version's first load looks again.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except FileNotFoundError:
        return f"its file {MODEL_FILE} is missing"
    except OSError as error:
        if error.errno is not None:  # may pass: the first load tries again
            logger.warning("%s cannot be read now: %s", path, os.strerror(error.errno))
            return ""
        return f"its file {MODEL_FILE} is not a readable .keras archive ({error})"
    except zipfile.BadZipFile as error:
        return f"its file {MODEL_FILE} is not a readable .keras archive ({error})"
    if "config.json" not in names:
        return f"its file {MODEL_FILE} has no config.json, so it is not a .keras file"
    return ""


def _tensor_spec(data: dict[str, Any]) -> tensor_pb2.TensorSpec:
    return json_format.ParseDict(data, tensor_pb2.TensorSpec())


def _input_spec(data: dict[str, Any]) -> tensor_pb2.TensorSpec:
    """Read an input's spec; its first dimension, the batch, is of any size.

    Versions stored by earlier releases may record the batch size the model
    was built on; every version is fed batches of any size.
    """
    spec = _tensor_spec(data)
    if spec.shape:
        spec.shape[0] = -1
    return spec


def read_json(path: Path) -> Any:
    """Parse a JSON file."""
    return json.loads(path.read_text(encoding="utf-8"))


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace a JSON file so that readers see the old or the new one whole."""
    write_atomic(path, json.dumps(data).encode("utf-8"))


def now() -> float:
    """Return the current time in seconds since the epoch."""
    return time.time()
