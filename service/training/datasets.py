"""Uploaded datasets: raw row bytes appended to files, read back memory-mapped."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
from kerasrpc.client.tensors import TensorFormatError, data_type, to_array
from kerasrpc.service.durable import sync_directory, sync_file, write_atomic
from kerasrpc.service.errors import Cancelled, InvalidArgument, NotFound
from kerasrpc.service.training.records import now
from kerasrpc.v1 import tensor_pb2, training_service_pb2

logger = logging.getLogger("kerasrpc.service.training")

META_FILE = "dataset.json"
FEATURES_FILE = "features.bin"
LABELS_FILE = "labels.bin"


@dataclass(frozen=True)
class Column:
    """The dtype and per-example shape of the features or the labels."""

    dtype: str
    shape: tuple[int, ...]

    @classmethod
    def of(cls, array: npt.NDArray[Any]) -> Column:
        """Describe the rows of an array."""
        return cls(array.dtype.str, tuple(int(d) for d in array.shape[1:]))

    def spec(self, name: str, rows: int) -> tensor_pb2.TensorSpec:
        """Return the column's signature with `rows` as its first dimension."""
        return tensor_pb2.TensorSpec(
            name=name,
            dtype=data_type(np.dtype(self.dtype)),  # type: ignore[arg-type]
            shape=[rows, *self.shape],
        )

    def describe(self) -> str:
        """Return the dtype and per-example shape in words."""
        return f"dtype {np.dtype(self.dtype).name} and example shape {list(self.shape)}"


@dataclass(frozen=True)
class StoredDataset:
    """An uploaded dataset's metadata."""

    dataset_id: str
    name: str
    examples: int
    features: Column
    labels: Column
    size_bytes: int
    create_time: float

    def to_proto(self) -> training_service_pb2.Dataset:
        """Return the dataset as the API describes it."""
        dataset = training_service_pb2.Dataset(
            dataset_id=self.dataset_id,
            name=self.name,
            examples=self.examples,
            features=self.features.spec("features", self.examples),
            labels=self.labels.spec("labels", self.examples),
            size_bytes=self.size_bytes,
        )
        dataset.create_time.FromNanoseconds(int(self.create_time * 1e9))
        return dataset


class DatasetStore:
    """Store uploaded datasets under `root`, one folder each."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        for partial in self.root.glob(".upload-*"):
            shutil.rmtree(partial, ignore_errors=True)

    def upload(
        self,
        name: str,
        chunks: Iterable[training_service_pb2.DatasetChunk],
        *,
        declared_examples: int = 0,
        still_wanted: Callable[[], bool] = lambda: True,
    ) -> StoredDataset:
        """Append the chunks' rows to new files and store them as one dataset.

        Args:
            name: the dataset's name.
            chunks: its rows, in order.
            declared_examples: how many examples the chunks hold, or 0 if
                the sender did not say.
            still_wanted: False once the sender has gone; the chunks may then
                have ended early.

        Raises:
            InvalidArgument: a chunk is malformed or unlike the first one,
                there were no rows at all, or not the declared number.
            Cancelled: the sender went away before the upload was stored.
            Nothing is stored in either case.
        """
        dataset_id = uuid.uuid4().hex[:16]
        partial = self.root / f".upload-{dataset_id}"
        partial.mkdir()
        try:
            stored = self._write(dataset_id, name, chunks, partial, declared_examples)
            if not still_wanted():
                raise Cancelled("the upload was cancelled; nothing was stored")
            sync_directory(partial)
            partial.rename(self.root / dataset_id)
            sync_directory(self.root)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        logger.info(
            "stored dataset %s (%r): %d examples", dataset_id, name, stored.examples
        )
        return stored

    def _write(
        self,
        dataset_id: str,
        name: str,
        chunks: Iterable[training_service_pb2.DatasetChunk],
        folder: Path,
        declared_examples: int,
    ) -> StoredDataset:
        columns: tuple[Column, Column] | None = None
        rows = 0
        with (
            (folder / FEATURES_FILE).open("wb") as features_file,
            (folder / LABELS_FILE).open("wb") as labels_file,
        ):
            for i, chunk in enumerate(chunks):
                x, y = _decode_chunk(chunk, f"chunk[{i}]")
                columns = columns or (Column.of(x), Column.of(y))
                _check_like(columns, x, y, f"chunk[{i}]")
                features_file.write(np.ascontiguousarray(x).tobytes())
                labels_file.write(np.ascontiguousarray(y).tobytes())
                rows += len(x)
                if declared_examples and rows > declared_examples:
                    raise _not_declared(declared_examples, rows, so_far=True)
        if columns is None or rows == 0:
            raise InvalidArgument.field(
                "chunk", "expected at least one chunk with rows, received none"
            )
        if declared_examples and rows != declared_examples:
            raise _not_declared(declared_examples, rows)

        sync_file(folder / FEATURES_FILE)
        sync_file(folder / LABELS_FILE)

        size = sum(f.stat().st_size for f in folder.iterdir())
        stored = StoredDataset(
            dataset_id, name, rows, columns[0], columns[1], size, now()
        )
        write_atomic(folder / META_FILE, json.dumps(_to_json(stored)).encode())
        return stored

    def get(self, dataset_id: str) -> StoredDataset:
        """Return one dataset's metadata; NotFound if there is none."""
        folder = self._folder(dataset_id)
        try:
            values = json.loads((folder / META_FILE).read_bytes())
        except (OSError, ValueError):
            raise NotFound(f"dataset {dataset_id!r} not found") from None
        return _from_json(values)

    def all(self) -> list[StoredDataset]:
        """Return every stored dataset, oldest first."""
        found = []
        for folder in self.root.iterdir():
            if folder.name.startswith("."):
                continue
            try:
                found.append(self.get(folder.name))
            except NotFound:
                logger.warning("skipping unreadable dataset folder %s", folder)
        return sorted(found, key=lambda d: d.create_time)

    def arrays(self, dataset_id: str) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        """Return the features and labels, memory-mapped read-only."""
        stored = self.get(dataset_id)
        folder = self._folder(dataset_id)
        return (
            _memmap(folder / FEATURES_FILE, stored.features, stored.examples),
            _memmap(folder / LABELS_FILE, stored.labels, stored.examples),
        )

    def scratch(self) -> BinaryIO:
        """Open an unnamed file beside the datasets, for rows too many for memory.

        It has no name in the folder: it is gone once it is closed and no
        memory map of it is left, even if the server is killed.
        """
        return tempfile.TemporaryFile(dir=self.root, prefix=".scratch-")

    def delete(self, dataset_id: str) -> None:
        """Delete a dataset's files; NotFound if there is none."""
        self.get(dataset_id)
        folder = self._folder(dataset_id)
        doomed = self.root / f".deleted-{dataset_id}"
        folder.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        logger.info("deleted dataset %s", dataset_id)

    def _folder(self, dataset_id: str) -> Path:
        if not dataset_id or not dataset_id.isalnum():
            raise NotFound(f"dataset {dataset_id!r} not found")
        return self.root / dataset_id


def _not_declared(
    declared: int, received: int, *, so_far: bool = False
) -> InvalidArgument:
    at_least = "at least " if so_far else ""
    return InvalidArgument.field(
        "header.examples",
        f"expected the {declared} examples the header declares, received "
        f"{at_least}{received}",
    )


def _decode_chunk(
    chunk: training_service_pb2.DatasetChunk, path: str
) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    try:
        x = to_array(chunk.features, f"{path}.features")
        y = to_array(chunk.labels, f"{path}.labels")
    except TensorFormatError as error:
        raise InvalidArgument.field(error.field, error.description) from None
    for array, field in ((x, "features"), (y, "labels")):
        if array.ndim == 0:
            raise InvalidArgument.field(
                f"{path}.{field}.shape",
                "expected (rows, ...), received a scalar",
            )
        if 0 in array.shape[1:]:
            raise InvalidArgument.field(
                f"{path}.{field}.shape",
                f"expected non-zero example dimensions, received {list(array.shape)}",
            )
    if len(x) != len(y):
        raise InvalidArgument.field(
            f"{path}.labels.shape",
            f"expected {len(x)} rows like the features, received {len(y)}",
        )
    return x, y


def _check_like(
    columns: tuple[Column, Column],
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    path: str,
) -> None:
    for column, array, field in (
        (columns[0], x, "features"),
        (columns[1], y, "labels"),
    ):
        if Column.of(array) != column:
            raise InvalidArgument.field(
                f"{path}.{field}",
                f"expected {column.describe()} like the first chunk, received "
                f"{Column.of(array).describe()}",
            )


def _memmap(path: Path, column: Column, rows: int) -> npt.NDArray[Any]:
    array: npt.NDArray[Any] = np.memmap(
        path, dtype=np.dtype(column.dtype), mode="r", shape=(rows, *column.shape)
    )
    return array


def _to_json(stored: StoredDataset) -> dict[str, Any]:
    return {
        "dataset_id": stored.dataset_id,
        "name": stored.name,
        "examples": stored.examples,
        "features": {"dtype": stored.features.dtype, "shape": stored.features.shape},
        "labels": {"dtype": stored.labels.dtype, "shape": stored.labels.shape},
        "size_bytes": stored.size_bytes,
        "create_time": stored.create_time,
    }


def _from_json(values: dict[str, Any]) -> StoredDataset:
    def column(entry: dict[str, Any]) -> Column:
        return Column(entry["dtype"], tuple(entry["shape"]))

    return StoredDataset(
        values["dataset_id"],
        values["name"],
        values["examples"],
        column(values["features"]),
        column(values["labels"]),
        values["size_bytes"],
        values["create_time"],
    )
