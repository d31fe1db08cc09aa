"""ModelRegistry: named models with numbered versions, loaded on demand."""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import threading
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import keras
import kerasrpc.service.keras  # noqa: F401  (registers the custom Keras classes)
import tensorflow as tf
from kerasrpc.service.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from kerasrpc.service.metrics import ServiceMetrics
from kerasrpc.service.registry.cache import ByteBoundedLru, Pending
from kerasrpc.service.registry.names import check_model_name, check_version
from kerasrpc.service.registry.signature import (
    SignatureError,
    model_signature,
    weights_bytes,
)
from kerasrpc.service.registry.store import (
    MODEL_FILE,
    ModelRecord,
    Store,
    VersionRecord,
    now,
)
from kerasrpc.v1 import model_service_pb2, tensor_pb2

logger = logging.getLogger("kerasrpc.service.registry")

# An absolute path (with an optional "filepath=" before it) in an error text.
_PATH = re.compile(r"(?:filepath=)?(?<![\w.~])/[^\s'\"`,;)]*[^\s'\"`,;).]")
# A Python exception class name, e.g. "ValueError: ", in an error text.
_EXCEPTION_CLASS = re.compile(r"\b[A-Z]\w*(?:Error|Exception)\b:?\s*")
# Keras reports a failure to assign loaded weights as a ValueError holding only
# the original error's text; these words mark an out-of-memory one.
_OUT_OF_MEMORY = re.compile(r"OOM when allocating|out of memory", re.IGNORECASE)

Key = tuple[str, int]


@dataclass(frozen=True)
class LoadedVersion:
    """A version loaded in memory, ready to predict.

    The model is shared by every caller: use it for inference only, never
    train or recompile it (read_model gives a private copy for that). It stays
    usable by whoever holds it after the version is deleted or evicted.
    """

    model_name: str
    version: int
    model: keras.Model
    inputs: list[tensor_pb2.TensorSpec]
    outputs: list[tensor_pb2.TensorSpec]


# SavedModel exports that may run at once; more are refused as RESOURCE_EXHAUSTED.
SAVED_MODEL_EXPORTS_AT_ONCE = 2


class ModelRegistry:
    """Store model versions under `root` and load them for serving.

    Args:
        root: the directory holding the models; created when missing.
        cache_bytes: how many bytes of weights loaded versions may hold; the
            least recently used are unloaded beyond it.
        metrics: where the loaded model and version counts are shown.
    """

    def __init__(
        self, root: Path, *, cache_bytes: int, metrics: ServiceMetrics
    ) -> None:
        self.root = root
        self.cache_bytes = cache_bytes
        self.metrics = metrics
        self._store = Store(root)
        self._lock = threading.Lock()
        self._unload_listeners: list[Callable[[str, int], None]] = []
        # Taken by each SavedModel export while it runs (see export.py).
        self.saved_model_exports = threading.BoundedSemaphore(
            SAVED_MODEL_EXPORTS_AT_ONCE
        )
        self._models, self._retired = self._store.open()
        self._cache: ByteBoundedLru[Key, LoadedVersion] = ByteBoundedLru(cache_bytes)
        self._loading: dict[Key, Pending[LoadedVersion]] = {}
        self._update_gauges()
        logger.info(
            "model registry at %s: %s models, %s versions",
            root,
            len(self._models),
            sum(len(m.versions) for m in self._models.values()),
        )

    # Storing ---------------------------------------------------------------

    def add_version(
        self,
        model_name: str,
        model: keras.Model,
        *,
        source: int,
        job_id: str = "",
        description: str = "",
    ) -> model_service_pb2.ModelVersion:
        """Save a Keras model as the next version of `model_name`.

        The model is created when it does not exist yet. The write is atomic:
        a crash leaves the earlier versions as they were.

        Raises:
            InvalidArgument: the name is invalid or the model was never built.
        """
        check_model_name(model_name)
        record = _new_record(model_name, model, source, job_id, description)
        staged = self._store.staging_dir("save-")
        try:
            model.save(staged / MODEL_FILE)
            return self._commit(staged, record)
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def import_file(
        self,
        model_name: str,
        path: Path,
        *,
        description: str = "",
        max_unpacked_bytes: int | None = None,
    ) -> model_service_pb2.ModelVersion:
        """Store a .keras file as the next version, once it loads safely.

        Raises:
            InvalidArgument: the name is invalid, or the file is not a .keras
                file that loads with safe_mode and whose inputs are known;
                nothing is stored then.
            ResourceExhausted: the archive's members would unpack to more
                than `max_unpacked_bytes`.
        """
        check_model_name(model_name)
        model = _load_upload(path, max_unpacked_bytes)
        record = _new_record(
            model_name,
            model,
            model_service_pb2.VERSION_SOURCE_IMPORTED,
            "",
            description,
        )
        staged = self._store.staging_dir("import-")
        try:
            _place(path, staged / MODEL_FILE, self._store.temp_root)
            return self._commit(staged, record)
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def upload(
        self,
        model_name: str,
        chunks: Iterable[bytes],
        *,
        max_bytes: int,
        declared_bytes: int = 0,
        description: str = "",
    ) -> model_service_pb2.ModelVersion:
        """Receive a .keras file in chunks and store it as the next version.

        Raises:
            InvalidArgument: as import_file.
            ResourceExhausted: the file is, or is declared, over `max_bytes`,
                or would unpack to more.
        """
        check_model_name(model_name)
        _check_upload_size(declared_bytes, max_bytes, declared=True)
        spool = self._store.staging_dir("upload-")
        try:
            path = spool / "upload.keras"
            _receive(chunks, path, max_bytes)
            return self.import_file(
                model_name, path, description=description, max_unpacked_bytes=max_bytes
            )
        finally:
            shutil.rmtree(spool, ignore_errors=True)

    def _commit(
        self, staged: Path, record: VersionRecord
    ) -> model_service_pb2.ModelVersion:
        """Number a staged version and move it into place."""
        record.size_bytes = (staged / MODEL_FILE).stat().st_size
        self._store.flush_staged(staged)
        with self._lock:
            model = self._models.get(record.model_name) or self._create(
                record.model_name
            )
            record.version = model.last_version + 1
            self._store.write_model_index(record.model_name, record.version)
            model.last_version = record.version
            self._store.commit_version(staged, record)
            model.versions[record.version] = record
        logger.info(
            "stored version %s of %r (%s, %s bytes)",
            record.version,
            record.model_name,
            model_service_pb2.VersionSource.Name(record.source),  # type: ignore[arg-type]
            record.size_bytes,
        )
        return record.to_proto(loaded=False)

    def _create(self, model_name: str) -> ModelRecord:
        model = ModelRecord(model_name, self._retired.get(model_name, 0))
        self._models[model_name] = model
        logger.info("created model %r", model_name)
        return model

    # Reading ---------------------------------------------------------------

    def list_models(self) -> list[model_service_pb2.Model]:
        """Return every model with its versions, by name."""
        with self._lock:
            return [self._model_proto(m) for _, m in sorted(self._models.items())]

    def get_model(self, model_name: str) -> model_service_pb2.Model:
        """Return one model with its versions.

        Raises:
            NotFound: no model has this name.
        """
        with self._lock:
            return self._model_proto(self._model(model_name))

    def get_version(
        self, model_name: str, version: int = 0
    ) -> model_service_pb2.ModelVersion:
        """Return one version; 0 means the latest.

        Raises:
            NotFound: the model or the version does not exist.
        """
        with self._lock:
            record = self._version(model_name, version)
            return record.to_proto(loaded=(model_name, record.version) in self._cache)

    def signature(
        self, model_name: str, version: int = 0
    ) -> tuple[int, list[tensor_pb2.TensorSpec], list[tensor_pb2.TensorSpec]]:
        """Return a version's number, inputs and outputs, without loading it.

        Raises:
            NotFound: the model or the version does not exist.
            FailedPrecondition: the version's files are unreadable.
        """
        with self._lock:
            record = self._version(model_name, version)
            if record.load_error:
                raise _unloadable(record)
            return record.version, list(record.inputs), list(record.outputs)

    def model_file(self, model_name: str, version: int = 0) -> tuple[int, Path]:
        """Return a version's number and the path of its .keras file.

        The file may vanish once the version is deleted: open it promptly.

        Raises:
            NotFound: the model or the version does not exist.
            FailedPrecondition: the version is known to be unloadable.
        """
        with self._lock:
            record = self._version(model_name, version)
            if record.load_error:
                raise _unloadable(record)
            return record.version, self._store.model_file(model_name, record.version)

    def read_model(self, model_name: str, version: int = 0) -> keras.Model:
        """Load a private copy of a version, compiled as it was saved.

        Unlike load(), the copy is neither cached nor shared, so the caller
        may train it.

        Raises:
            NotFound: the model or the version does not exist.
            FailedPrecondition: the version's file cannot be loaded.
        """
        with self._lock:
            record = self._version(model_name, version)
        return self._read(record, compile=True)

    def staging_dir(self, prefix: str) -> Path:
        """Return a new empty private folder on the registry's filesystem."""
        return self._store.staging_dir(prefix)

    def _model(self, model_name: str) -> ModelRecord:
        model = self._models.get(model_name)
        if model is None:
            check_model_name(model_name)
            raise NotFound(f"model {model_name!r} does not exist")
        return model

    def _version(self, model_name: str, version: int) -> VersionRecord:
        check_version(version, latest=True)
        model = self._model(model_name)
        number = version or max(model.versions, default=0)
        record = model.versions.get(number)
        if record is None:
            raise NotFound(_missing_version(model, version))
        return record

    def _model_proto(self, model: ModelRecord) -> model_service_pb2.Model:
        versions = [
            record.to_proto(loaded=(model.name, number) in self._cache)
            for number, record in sorted(model.versions.items())
        ]
        return model_service_pb2.Model(
            name=model.name,
            versions=versions,
            latest_version=max(model.versions, default=0),
        )

    # Loading ---------------------------------------------------------------

    def load(self, model_name: str, version: int = 0) -> LoadedVersion:
        """Return a version loaded in memory, loading it on first use.

        Concurrent calls for the same version wait for a single load. Loaded
        versions stay cached, least recently used first out beyond cache_bytes.

        Raises:
            NotFound: the model or the version does not exist.
            FailedPrecondition: the version's file cannot be loaded; the
                message names the cause.
            ResourceExhausted: the version does not fit in memory now.
            Unavailable: the version's file cannot be read now (too many open
                files, an I/O error); a later call may succeed.
        """
        with self._lock:
            record = self._version(model_name, version)
            key = (model_name, record.version)
            cached = self._cache.get(key)
            if cached is not None:
                return cached
            if record.load_error:
                raise _unloadable(record)
            pending = self._loading.get(key)
            leader = pending is None
            if pending is None:
                pending = self._loading[key] = Pending()
        if not leader:
            return pending.wait()
        return self._load_as_leader(record, pending)

    def _load_as_leader(
        self, record: VersionRecord, pending: Pending[LoadedVersion]
    ) -> LoadedVersion:
        key = (record.model_name, record.version)
        try:
            model = self._read(record, compile=False)
            loaded = LoadedVersion(
                record.model_name, record.version, model, record.inputs, record.outputs
            )
            self._cache_loaded(record, loaded, weights_bytes(model))
        except BaseException as error:
            pending.set_error(error)
            raise
        finally:
            with self._lock:
                self._loading.pop(key, None)
        pending.set_result(loaded)
        return loaded

    def _read(self, record: VersionRecord, *, compile: bool) -> keras.Model:
        """Load a version's file, recording why when it fails for good."""
        path = self._store.model_file(record.model_name, record.version)
        try:
            _check_openable(path)
            return keras.saving.load_model(path, compile=compile, safe_mode=True)
        except Exception as error:
            raise self._load_failed(record, error) from None

    def _load_failed(self, record: VersionRecord, error: Exception) -> Exception:
        what = f"version {record.version} of model {record.model_name!r}"
        transient = transient_load_failure(error, what)
        if transient is not None:
            logger.warning("load failed for now: %s", transient.message)
            return transient

        with self._lock:
            model = self._models.get(record.model_name)
            if model is None or model.versions.get(record.version) is not record:
                return NotFound(
                    f"version {record.version} of model {record.model_name!r} "
                    "was deleted"
                )
            record.load_error = f"{type(error).__name__}: {str(error)[:500]}"
        logger.warning(
            "version %s of %r cannot be loaded: %s",
            record.version,
            record.model_name,
            record.load_error,
        )
        return _unloadable(record)

    def add_unload_listener(self, listener: Callable[[str, int], None]) -> None:
        """Call `listener(model_name, version)` whenever a version leaves memory.

        That is when it is evicted to make room, or deleted; holders of its
        loaded copy should then let it go.
        """
        self._unload_listeners.append(listener)

    def _unloaded(self, keys: list[Key]) -> None:
        for model_name, version in keys:
            for listener in self._unload_listeners:
                listener(model_name, version)

    def _cache_loaded(
        self, record: VersionRecord, loaded: LoadedVersion, size: int
    ) -> None:
        key = (record.model_name, record.version)
        with self._lock:
            model = self._models.get(record.model_name)
            if model is None or model.versions.get(record.version) is not record:
                return  # deleted while loading: serve this caller, cache nothing
            evicted = self._cache.put(key, loaded, size)
            self._update_gauges()
        logger.info(
            "loaded version %s of %r (%s bytes of weights)",
            record.version,
            record.model_name,
            size,
        )
        if size > self.cache_bytes:
            logger.warning(
                "version %s of %r alone exceeds the model cache of %s bytes",
                record.version,
                record.model_name,
                self.cache_bytes,
            )
        for name, number in evicted:
            logger.info("unloaded version %s of %r to make room", number, name)
        self._unloaded(evicted)

    def _update_gauges(self) -> None:
        keys = self._cache.keys()
        self.metrics.model_versions_loaded.set(len(keys))
        self.metrics.models_loaded.set(len({name for name, _ in keys}))

    # Deleting ---------------------------------------------------------------

    def delete_model(self, model_name: str) -> None:
        """Delete a model and all its versions. Loaded copies in use keep working.

        Raises:
            NotFound: no model has this name.
        """
        with self._lock:
            model = self._model(model_name)
            del self._models[model_name]
            self._retired[model_name] = model.last_version
            for number in model.versions:
                self._cache.pop((model_name, number))
            self._update_gauges()
            self._store.discard_model(model_name, model.last_version)
        logger.info("deleted model %r", model_name)
        self._unloaded([(model_name, number) for number in model.versions])

    def delete_version(self, model_name: str, version: int) -> None:
        """Delete one version. Loaded copies in use keep working.

        Raises:
            InvalidArgument: the version is 0 or negative.
            NotFound: the model or the version does not exist.
        """
        check_version(version, latest=False)
        with self._lock:
            record = self._version(model_name, version)
            del self._models[model_name].versions[record.version]
            self._cache.pop((model_name, record.version))
            self._update_gauges()
            self._store.discard_version(model_name, record.version)
        logger.info("deleted version %s of %r", version, model_name)
        self._unloaded([(model_name, record.version)])

    def close(self) -> None:
        """Unload every version."""
        with self._lock:
            self._cache.clear()
            self._update_gauges()


def _new_record(
    model_name: str, model: keras.Model, source: int, job_id: str, description: str
) -> VersionRecord:
    """Describe a model about to be stored; the version number comes later."""
    try:
        inputs, outputs = model_signature(model)
    except SignatureError as error:
        raise InvalidArgument.field("model", str(error)) from None
    return VersionRecord(
        model_name=model_name,
        version=0,
        source=source,
        create_time=now(),
        job_id=job_id,
        description=description,
        parameter_count=int(model.count_params()),
        inputs=inputs,
        outputs=outputs,
    )


def transient_load_failure(error: BaseException, what: str) -> ServiceError | None:
    """Return the error to answer for a load failure that may pass on retry.

    Running out of memory and operating-system errors (too many open files,
    an I/O error, a file being replaced) may pass; anything else, such as an
    archive Keras cannot deserialise, recurs on every try: None then.
    """
    if isinstance(error, (MemoryError, tf.errors.ResourceExhaustedError)) or (
        isinstance(error, ValueError) and _OUT_OF_MEMORY.search(str(error))
    ):
        return ResourceExhausted(
            f"{what} does not fit in memory now; unload other versions or retry later"
        )

    # A library's own OSError without an errno (h5py's "file signature not
    # found") describes the file's contents, and those do not change; nor
    # does a missing file come back by itself.
    if isinstance(error, OSError) and error.errno not in (None, errno.ENOENT):
        return Unavailable(
            f"{what} cannot be read now ({os.strerror(error.errno)}); retry later"
        )
    return None


def _check_openable(path: Path) -> None:
    """Open a model file once, so that an OS error surfaces as itself.

    Keras tests the archive with zipfile.is_zipfile, which turns every OS error
    (too many open files, say) into a plain "file not found".
    """
    with path.open("rb"):
        pass


def _load_upload(path: Path, max_unpacked_bytes: int | None) -> keras.Model:
    """Load an uploaded .keras file with safe_mode, or explain why it fails.

    Keras saves its archives uncompressed, so a model's members unpack to
    its file's size; an archive that would unpack to more than the limit is
    refused before Keras reads it, which stops decompression bombs.
    """
    # TODO: uploads are loaded inside the server process; safe_mode refuses
    # code and the unpacked size is bounded, but a crafted config (a layer
    # of billions of units) still makes Keras allocate its weights while
    # building it, which can exhaust the server's memory. Loading in a child
    # process with a memory limit would contain it.
    if not zipfile.is_zipfile(path):
        raise InvalidArgument.field(
            "chunk",
            "expected a .keras (zip) archive, received "
            f"{path.stat().st_size} bytes that are not one",
        )
    if max_unpacked_bytes is not None:
        _check_unpacked_size(path, max_unpacked_bytes)

    try:
        return keras.saving.load_model(path, safe_mode=True)
    except Exception as error:
        logger.debug("an uploaded model failed to load", exc_info=True)
        raise InvalidArgument.field(
            "chunk",
            "expected the bytes of a .keras file that loads with safe_mode, "
            f"received one that fails: {_load_failure(error)}",
        ) from None


def _check_unpacked_size(path: Path, max_bytes: int) -> None:
    """Refuse an archive whose members declare more than `max_bytes` in all.

    zipfile never unpacks a member past its declared size, so the sum bounds
    what loading can unpack.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(member.file_size for member in archive.infolist())
    except (
        zipfile.BadZipFile,
        NotImplementedError,  # a zip version or feature zipfile lacks
        ValueError,  # a member name flagged UTF-8 that is not
    ) as error:
        raise InvalidArgument.field(
            "chunk", f"expected a .keras (zip) archive, received a damaged one: {error}"
        ) from None
    if unpacked > max_bytes:
        raise ResourceExhausted(
            f"the model file unpacks to {unpacked} bytes; the largest accepted "
            f"is {max_bytes} bytes"
        )


def _load_failure(error: Exception) -> str:
    """Say why a load failed without the server's paths or exception classes."""
    reason = str(error.args[0]) if isinstance(error, KeyError) else str(error)
    reason = _PATH.sub("<file>", reason)
    reason = _EXCEPTION_CLASS.sub("", reason).strip()
    return reason[:300] or "the archive is not a Keras model"


def _check_upload_size(size: int, max_bytes: int, *, declared: bool) -> None:
    if size <= max_bytes:
        return
    what = "declared as" if declared else "at least"
    raise ResourceExhausted(
        f"the model file is {what} {size} bytes; the largest accepted is "
        f"{max_bytes} bytes"
    )


def _receive(chunks: Iterable[bytes], path: Path, max_bytes: int) -> None:
    """Write chunks to a file, stopping as soon as they exceed `max_bytes`."""
    received = 0
    with path.open("wb") as file:
        for chunk in chunks:
            received += len(chunk)
            _check_upload_size(received, max_bytes, declared=False)
            file.write(chunk)
    if received == 0:
        raise InvalidArgument.field(
            "chunk", "expected the bytes of a .keras file, received none"
        )


def _place(source: Path, target: Path, temp_root: Path) -> None:
    """Move a file the registry spooled itself; copy any other file."""
    if source.resolve().is_relative_to(temp_root.resolve()):
        os.rename(source, target)
    else:
        shutil.copyfile(source, target)


def _missing_version(model: ModelRecord, version: int) -> str:
    if not model.versions:
        return f"model {model.name!r} has no versions"
    numbers = ", ".join(str(n) for n in sorted(model.versions))
    return f"model {model.name!r} has no version {version}; its versions are {numbers}"


def _unloadable(record: VersionRecord) -> FailedPrecondition:
    return FailedPrecondition(
        f"version {record.version} of model {record.model_name!r} cannot be "
        f"loaded: {record.load_error}"
    )
