"""Writing a stored version out as a .keras file or a zipped SavedModel."""

from __future__ import annotations

import logging
import os
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import keras
from kerasrpc.service.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from kerasrpc.service.registry.registry import (
    SAVED_MODEL_EXPORTS_AT_ONCE,
    ModelRegistry,
)
from kerasrpc.v1 import model_service_pb2, tensor_pb2

logger = logging.getLogger("kerasrpc.service.registry")

CHUNK_BYTES = 1024 * 1024


@dataclass
class ExportedFile:
    """A temporary file holding an export; deleted when closed."""

    path: Path
    file_name: str
    size_bytes: int
    _folder: Path

    def chunks(self, size: int = CHUNK_BYTES) -> Iterator[bytes]:
        """Yield the file's bytes in pieces of `size`."""
        with self.path.open("rb") as file:
            while chunk := file.read(size):
                yield chunk

    def close(self) -> None:
        """Delete the file."""
        shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> ExportedFile:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def export_version(
    registry: ModelRegistry, model_name: str, version: int, export_format: int
) -> ExportedFile:
    """Write a version in `export_format` into a temporary file.

    A .keras export is a snapshot of the stored file. A SavedModel export is
    traced from a fresh copy of the model and zipped with its version number
    as the top folder, the layout TensorFlow Serving reads below a model's
    base path.

    Raises:
        InvalidArgument: the format is unknown.
        NotFound: the model or the version does not exist.
        FailedPrecondition: the version cannot be loaded or exported.
    """
    if export_format not in model_service_pb2.ExportFormat.values():
        raise InvalidArgument.field(
            "format",
            "expected EXPORT_FORMAT_KERAS or EXPORT_FORMAT_SAVED_MODEL, "
            f"received {export_format}",
        )
    number, source = registry.model_file(model_name, version)
    folder = registry.staging_dir("export-")
    try:
        if export_format == model_service_pb2.EXPORT_FORMAT_SAVED_MODEL:
            path = _saved_model_zip(registry, model_name, number, folder)
        else:
            path = _keras_copy(model_name, number, source, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    logger.debug("exported version %s of %r as %s", number, model_name, path.name)
    return ExportedFile(path, path.name, path.stat().st_size, folder)


def _keras_copy(model_name: str, version: int, source: Path, folder: Path) -> Path:
    """Link (or copy) the stored file, so a delete cannot cut the stream."""
    target = folder / f"{model_name}-v{version}.keras"
    try:
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
    except FileNotFoundError:
        raise NotFound(
            f"version {version} of model {model_name!r} was deleted"
        ) from None
    return target


def _saved_model_zip(
    registry: ModelRegistry, model_name: str, version: int, folder: Path
) -> Path:
    # Each SavedModel export traces a private copy of its model: more at once
    # would take memory and CPU away from predictions.
    if not registry.saved_model_exports.acquire(blocking=False):
        raise ResourceExhausted(
            f"{SAVED_MODEL_EXPORTS_AT_ONCE} SavedModel exports are running, the "
            "server's limit; retry later, or export the .keras file, which is "
            "not limited"
        )
    try:
        return _export_saved_model(registry, model_name, version, folder)
    finally:
        registry.saved_model_exports.release()


def _export_saved_model(
    registry: ModelRegistry, model_name: str, version: int, folder: Path
) -> Path:
    model = registry.read_model(model_name, version)
    _, inputs, _ = registry.signature(model_name, version)
    exported = folder / "saved_model"
    try:
        model.export(
            str(exported),
            format="tf_saved_model",
            verbose=False,
            input_signature=_input_signature(model, inputs),
        )
    except Exception as error:
        raise FailedPrecondition(
            f"version {version} of model {model_name!r} cannot be exported as a "
            f"SavedModel: {type(error).__name__}: {str(error)[:300]}"
        ) from None
    target = folder / f"{model_name}-v{version}.saved_model.zip"
    _zip_folder(exported, target, top=str(version))
    shutil.rmtree(exported, ignore_errors=True)
    return target


def _input_signature(
    model: keras.Model, inputs: list[tensor_pb2.TensorSpec]
) -> list[object] | None:
    """Describe the inputs of a subclassed model, which Keras cannot infer."""
    try:
        if model.inputs is not None:
            return None
    except AttributeError:
        pass
    import tensorflow as tf
    from kerasrpc.client.tensors import numpy_dtype

    return [
        tf.TensorSpec(
            shape=[None if d < 0 else d for d in spec.shape],
            dtype=tf.as_dtype(numpy_dtype(spec.dtype)),
            name=spec.name,
        )
        for spec in inputs
    ]


def _zip_folder(folder: Path, target: Path, *, top: str) -> None:
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            name = f"{top}/{path.relative_to(folder).as_posix()}"
            if path.is_dir():
                archive.writestr(name + "/", b"")
            else:
                archive.write(path, name)
