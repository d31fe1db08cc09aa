"""Reading a DataSource into feature and label arrays, with checks."""

from __future__ import annotations

import csv
import errno
import logging
import lzma
import math
import os
import shutil
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError
from kerasrpc.client.tensors import TensorFormatError, to_array
from kerasrpc.service.errors import (
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from kerasrpc.service.training.datasets import DatasetStore
from kerasrpc.v1 import spec_pb2

logger = logging.getLogger("kerasrpc.service.training")

Array = npt.NDArray[Any]
Reader = Callable[[Path, spec_pb2.DataFile, str, DatasetStore], tuple[Array, Array]]
FINITE_CHECK_ROWS = 65536
# CSV rows parsed into one float32 block before it goes to the scratch files.
CSV_BLOCK_ROWS = 8192
# Bytes of an .npz member decompressed at a time into its scratch file.
NPZ_COPY_BYTES = 1 << 20
# The errors of a write that found the disk, or the user's quota, full.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}

_EXTENSIONS: dict[str, int] = {
    ".npz": spec_pb2.DATA_FORMAT_NPZ,
    ".csv": spec_pb2.DATA_FORMAT_CSV,
    ".tfrecord": spec_pb2.DATA_FORMAT_TFRECORD,
    ".tfrecords": spec_pb2.DATA_FORMAT_TFRECORD,
}


@dataclass(frozen=True)
class Examples:
    """Features and labels with as many rows, and the field they came from."""

    features: Array
    labels: Array
    path: str

    def __len__(self) -> int:
        return len(self.features)

    def take(self, start: int, stop: int) -> Examples:
        """Return the rows [start, stop) (views, no copy)."""
        return Examples(self.features[start:stop], self.labels[start:stop], self.path)


def read_source(
    source: spec_pb2.DataSource, path: str, data_root: Path, datasets: DatasetStore
) -> Examples:
    """Return the examples a data source names, checked.

    Raises:
        InvalidArgument: the source is unset, cannot be read, leaves the data
            root, or holds mismatched, non-numeric or non-finite values.
    """
    kind = source.WhichOneof("source")
    if kind is None:
        raise InvalidArgument.field(
            path, "expected inline, dataset_id or file, received none"
        )
    if kind == "inline":
        features, labels = _inline(source.inline, f"{path}.inline")
    elif kind == "dataset_id":
        features, labels = _dataset(source.dataset_id, f"{path}.dataset_id", datasets)
    else:
        features, labels = read_file(source.file, f"{path}.file", data_root, datasets)
    examples = Examples(features, labels, f"{path}.{kind}")
    check_examples(examples)
    return examples


def _inline(data: spec_pb2.InlineData, path: str) -> tuple[Array, Array]:
    try:
        return (
            to_array(data.features, f"{path}.features"),
            to_array(data.labels, f"{path}.labels"),
        )
    except TensorFormatError as error:
        raise InvalidArgument.field(error.field, error.description) from None


def _dataset(dataset_id: str, path: str, datasets: DatasetStore) -> tuple[Array, Array]:
    try:
        return datasets.arrays(dataset_id)
    except NotFound:
        raise InvalidArgument.field(
            path, f"expected the id of an uploaded dataset, received {dataset_id!r}"
        ) from None


def check_examples(examples: Examples) -> None:
    """Check rows, dtypes and finiteness of features and labels."""
    for array, name in ((examples.features, "features"), (examples.labels, "labels")):
        field = f"{examples.path}.{name}"
        if array.ndim == 0 or len(array) == 0:
            raise InvalidArgument.field(
                field,
                f"expected (examples, ...) with examples, received shape "
                f"{list(array.shape)}",
            )
        if array.dtype.kind not in "biuf":
            raise InvalidArgument.field(
                field, f"expected a numeric dtype, received {array.dtype.name}"
            )
        _check_finite(array, field)
    if len(examples.features) != len(examples.labels):
        raise InvalidArgument.field(
            f"{examples.path}.labels",
            f"expected {len(examples.features)} examples like the features, "
            f"received {len(examples.labels)}",
        )


def _check_finite(array: Array, field: str) -> None:
    if array.dtype.kind != "f":
        return
    for start in range(0, len(array), FINITE_CHECK_ROWS):
        block = np.asarray(array[start : start + FINITE_CHECK_ROWS])
        finite = np.isfinite(block)
        if not finite.all():
            row = start + int(np.argwhere(~finite)[0][0])
            raise InvalidArgument.field(
                field,
                f"expected finite values, received NaN or infinity at example {row}",
            )


# ---------------------------------------------------------------------------
# Files under the data root
# ---------------------------------------------------------------------------


class ScratchFailure(Exception):
    """A scratch file could not be made, written or mapped: the server's fault."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


@contextmanager
def _servers_fault() -> Iterator[None]:
    """Report the OS errors of the block as the server's (ScratchFailure)."""
    try:
        yield
    except OSError as error:
        raise ScratchFailure(error) from None


class Scratch:
    """An unnamed scratch file beside the datasets, written, then mapped.

    Its OS errors raise ScratchFailure, so that they are not taken for
    errors of the data file being read.
    """

    def __init__(self, datasets: DatasetStore) -> None:
        with _servers_fault():
            self._file = datasets.scratch()

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is None:
            with _servers_fault():
                self._file.close()
            return
        try:  # the error on its way out says more than this one
            self._file.close()
        except OSError as error:
            logger.warning("cannot close a scratch file: %s", error)

    def write(self, data: bytes) -> None:
        """Append bytes."""
        with _servers_fault():
            self._file.write(data)

    def mapped(
        self, dtype: np.dtype[Any], shape: Any, order: Literal["C", "F"] = "C"
    ) -> Array:
        """Map what was written, read-only, as an array of `dtype` and `shape`.

        An array of no values is an empty one: a file of no bytes cannot be
        mapped.
        """
        if math.prod(shape) == 0:
            return np.empty(shape, dtype=dtype)
        with _servers_fault():
            self._file.flush()
            array: Array = np.memmap(
                self._file, dtype=dtype, mode="r", shape=shape, order=order
            )
        return array

    def rows(self, rows: int, columns: int) -> Array:
        """Map what was written as float32 rows."""
        return self.mapped(np.dtype(np.float32), (rows, columns))


def read_file(
    data: spec_pb2.DataFile, path: str, data_root: Path, datasets: DatasetStore
) -> tuple[Array, Array]:
    """Read a data file under the data root into memory-mapped scratch files.

    Raises:
        InvalidArgument: the file cannot be read, or holds no valid examples.
        ResourceExhausted: no disk space is left for the scratch files.
        Internal: the scratch files cannot be written for another reason.
    """
    file = resolve_path(data.path, f"{path}.path", data_root)
    data_format = int(data.format) or _EXTENSIONS.get(file.suffix.lower(), 0)
    readers: dict[int, Reader] = {
        spec_pb2.DATA_FORMAT_NPZ: _read_npz,
        spec_pb2.DATA_FORMAT_CSV: _read_csv,
        spec_pb2.DATA_FORMAT_TFRECORD: _read_tfrecord,
    }
    if data_format not in readers:
        raise InvalidArgument.field(
            f"{path}.format",
            f"expected a format, or a path ending in .npz, .csv or .tfrecord, "
            f"received {data.path!r}",
        )
    try:
        return readers[data_format](file, data, path, datasets)
    except ScratchFailure as failure:
        if failure.error.errno in _NO_SPACE:
            raise ResourceExhausted(
                f"no disk space is left beside the datasets for the values of "
                f"{data.path!r}; free some, or train on fewer examples"
            ) from None
        logger.error("scratch files for %s failed: %s", data.path, failure.error)
        raise Internal(
            f"the server cannot write the scratch files for {data.path!r}: "
            f"{failure.error.strerror or failure.error}"
        ) from None
    except OSError as error:
        raise InvalidArgument.field(
            f"{path}.path",
            f"expected a readable file, received {data.path!r}, which cannot "
            f"be read: {error.strerror or error}",
        ) from None


def resolve_path(relative: str, path: str, data_root: Path) -> Path:
    """Return the file a relative path names, refusing any that leave the root."""
    root = data_root.resolve()
    if not relative:
        raise InvalidArgument.field(path, "expected a path under the data root")
    if os.path.isabs(relative) or ".." in Path(relative).parts:
        raise InvalidArgument.field(
            path,
            f"expected a relative path under the data root, received {relative!r}",
        )
    file = (root / relative).resolve()
    if not file.is_relative_to(root):
        raise InvalidArgument.field(
            path,
            f"expected a path that stays under the data root, received "
            f"{relative!r}, which leads outside it",
        )
    if not file.is_file():
        raise InvalidArgument.field(
            path,
            f"expected a file under the data root, received {relative!r}, "
            "which does not exist",
        )
    return file


def _read_npz(
    file: Path, data: spec_pb2.DataFile, path: str, datasets: DatasetStore
) -> tuple[Array, Array]:
    """Read two arrays of an .npz archive, each memory-mapped from a scratch file.

    Each array's bytes are decompressed a megabyte at a time into an unnamed
    scratch file beside the uploaded datasets, so an archive larger than
    memory trains like an uploaded dataset, and rewriting the archive while
    a job trains cannot change or truncate what it reads.
    """
    keys = (data.features_key or "features", data.labels_key or "labels")
    try:
        with zipfile.ZipFile(file) as archive:
            members = {
                name.removesuffix(".npy"): name
                for name in archive.namelist()
                if name.endswith(".npy")
            }
            for key, field in zip(keys, ("features_key", "labels_key"), strict=True):
                if key not in members:
                    raise InvalidArgument.field(
                        f"{path}.{field}",
                        f"expected an array of {data.path!r} (one of "
                        f"{sorted(members)}), received {key!r}",
                    )
            features, labels = (
                _npz_array(archive, members[key], datasets) for key in keys
            )
            return features, labels
    except (
        OSError,
        ValueError,
        EOFError,
        RuntimeError,  # an encrypted member
        NotImplementedError,  # a compression method zipfile lacks
        zipfile.BadZipFile,
        zlib.error,
        lzma.LZMAError,
    ) as error:
        if isinstance(error, OSError) and error.errno is not None:
            raise  # the disk or the file system, not the archive: see read_file
        raise InvalidArgument.field(
            f"{path}.path", f"expected a readable .npz file, received {error}"
        ) from None


def _npz_array(archive: zipfile.ZipFile, member: str, datasets: DatasetStore) -> Array:
    """Copy one .npy member's values to a scratch file; return them mapped.

    Raises:
        ValueError: the member is no .npy array of plain values.
        ResourceExhausted: its values need more disk than is free.
    """
    with archive.open(member) as stream:
        version = np.lib.format.read_magic(stream)
        try:
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
            else:
                raise ValueError(
                    f"{member} is in .npy format {version}, not 1.0 or 2.0"
                )
        except (SyntaxError, tokenize.TokenError, RecursionError, MemoryError):
            # numpy reads the header as a Python literal
            raise ValueError(f"{member} has a header that does not parse") from None
        if dtype.hasobject:
            raise ValueError(f"{member} holds Python objects, not numbers")
        if any(size < 0 for size in shape):
            raise ValueError(f"{member} declares a negative size in {list(shape)}")
        expected = math.prod(shape) * dtype.itemsize
        # What the archive declares the member's values take, after the header.
        declared = archive.getinfo(member).file_size - stream.tell()
        if declared != expected:
            raise ValueError(
                f"{member} holds {declared} bytes of values, where its shape "
                f"{list(shape)} and dtype {dtype.name} take {expected}"
            )
        with _servers_fault():
            free = shutil.disk_usage(datasets.root).free
        if expected > free:
            raise ResourceExhausted(
                f"{member} takes {expected} bytes unpacked, more disk than is "
                "free beside the datasets"
            )
        with Scratch(datasets) as scratch:
            copied = _copy_at_most(stream, scratch, expected + 1)
            if copied != expected:
                raise ValueError(
                    f"{member} holds {copied} bytes of values, where its shape "
                    f"{list(shape)} and dtype {dtype.name} take {expected}"
                )
            return scratch.mapped(dtype, shape, "F" if fortran else "C")


def _copy_at_most(source: IO[bytes], target: Scratch, limit: int) -> int:
    """Copy up to `limit` bytes, NPZ_COPY_BYTES at a time; return the count."""
    copied = 0
    while copied < limit:
        block = source.read(min(NPZ_COPY_BYTES, limit - copied))
        if not block:
            break
        target.write(block)
        copied += len(block)
    return copied


def _read_csv(
    file: Path, data: spec_pb2.DataFile, path: str, datasets: DatasetStore
) -> tuple[Array, Array]:
    """Read a CSV file's rows into float32 features and labels, memory-mapped.

    Rows are parsed a block at a time and written to unnamed scratch files
    beside the uploaded datasets, so a file larger than memory trains like
    an uploaded dataset; the scratch files vanish with the arrays.
    """
    try:
        with (
            file.open(newline="", encoding="utf-8") as handle,
            Scratch(datasets) as features_file,
            Scratch(datasets) as labels_file,
        ):
            reader = csv.reader(handle)
            try:
                header = _csv_header(reader, path)
                label_columns = _label_columns(header, data, path)
                feature_columns = [
                    i for i in range(len(header)) if i not in label_columns
                ]
                rows = 0
                for block in _csv_blocks(reader, len(header), path):
                    features_file.write(block[:, feature_columns].tobytes())
                    labels_file.write(block[:, label_columns].tobytes())
                    rows += len(block)
            except csv.Error as error:
                raise InvalidArgument.field(
                    f"{path}.path",
                    f"expected a well-formed CSV file, received {error} on line "
                    f"{reader.line_num}",
                ) from None
            return (
                features_file.rows(rows, len(feature_columns)),
                labels_file.rows(rows, len(label_columns)),
            )
    except UnicodeDecodeError:
        raise InvalidArgument.field(
            f"{path}.path",
            f"expected a UTF-8 CSV file, received {data.path!r}, which is not "
            "UTF-8 text",
        ) from None


def _csv_header(reader: Any, path: str) -> list[str]:
    header: list[str] | None = next(reader, None)
    if not header:
        raise InvalidArgument.field(
            f"{path}.path",
            "expected a CSV file with a header row, received an empty file",
        )
    return header


def _csv_blocks(reader: Any, columns: int, path: str) -> Iterator[Array]:
    """Yield the rows after the header as float32 blocks of CSV_BLOCK_ROWS."""
    block: list[list[float]] = []
    for row in reader:
        if not row:
            continue
        if len(row) != columns:
            raise InvalidArgument.field(
                f"{path}.path",
                f"expected {columns} columns in every row, like the header, "
                f"received {len(row)} on line {reader.line_num}",
            )
        try:
            block.append([float(value) for value in row])
        except ValueError as error:
            raise InvalidArgument.field(
                f"{path}.path",
                f"expected numbers in every CSV cell, received {error} on line "
                f"{reader.line_num}",
            ) from None
        if len(block) == CSV_BLOCK_ROWS:
            yield np.array(block, dtype=np.float32)
            block = []
    if block:
        yield np.array(block, dtype=np.float32)


def _label_columns(header: list[str], data: spec_pb2.DataFile, path: str) -> list[int]:
    if not data.label_columns:
        return [len(header) - 1]
    columns = []
    for i, name in enumerate(data.label_columns):
        if name not in header:
            raise InvalidArgument.field(
                f"{path}.label_columns[{i}]",
                f"expected one of the header's columns {header}, received {name!r}",
            )
        columns.append(header.index(name))
    return columns


def _read_tfrecord(
    file: Path, data: spec_pb2.DataFile, path: str, datasets: DatasetStore
) -> tuple[Array, Array]:
    """Read a TFRecord file's float features and labels, memory-mapped.

    Each record's values are written to unnamed scratch files beside the
    uploaded datasets as it is read, so a file larger than memory trains.
    """
    import tensorflow as tf

    keys = (data.features_key or "features", data.labels_key or "labels")
    shapes = (list(data.features_shape), list(data.labels_shape))
    fields = (f"{path}.features_shape", f"{path}.labels_shape")
    sizes: list[int] = []
    rows = 0
    with Scratch(datasets) as features_file, Scratch(datasets) as labels_file:
        files = (features_file, labels_file)
        try:
            records = tf.data.TFRecordDataset(str(file)).as_numpy_iterator()
            for i, raw in enumerate(records):
                example = _parse_example(raw, i, data.path, path)
                values = [_float_feature(example, key, i, path) for key in keys]
                if not sizes:
                    sizes = [len(v) for v in values]
                for value, size, field, scratch in zip(
                    values, sizes, fields, files, strict=True
                ):
                    if len(value) != size:
                        raise InvalidArgument.field(
                            field,
                            f"expected records of equal length, received "
                            f"{size} values in record 0 and {len(value)} in "
                            f"record {i}",
                        )
                    scratch.write(value.tobytes())
                rows += 1
        except tf.errors.OpError as error:
            raise InvalidArgument.field(
                f"{path}.path",
                f"expected a readable TFRecord file, received {error.message}",
            ) from None
        if not rows:
            return np.zeros((0,), np.float32), np.zeros((0,), np.float32)
        features, labels = (
            scratch.rows(rows, size).reshape(
                (rows, *_example_shape(shape, size, field))
            )
            for scratch, shape, size, field in zip(
                files, shapes, sizes, fields, strict=True
            )
        )
        return features, labels


def _example_shape(shape: list[int], size: int, path: str) -> list[int]:
    """Return the per-example shape of `size` values, `shape` if one is given."""
    target = shape or [size]
    if math.prod(target) != size:
        raise InvalidArgument.field(
            path, f"expected a shape of {size} values, received {target}"
        )
    return target


def _parse_example(raw: bytes, index: int, relative: str, path: str) -> Any:
    import tensorflow as tf

    try:
        return tf.train.Example.FromString(raw)
    except DecodeError:
        raise InvalidArgument.field(
            f"{path}.path",
            f"expected a tf.train.Example in every record of {relative!r}, "
            f"received record {index}, which is not one",
        ) from None


def _float_feature(example: Any, key: str, index: int, path: str) -> Array:
    feature = example.features.feature
    if key not in feature or feature[key].WhichOneof("kind") != "float_list":
        raise InvalidArgument.field(
            f"{path}.path",
            f"expected a float feature {key!r} in every record, record {index} "
            "has none",
        )
    return np.asarray(feature[key].float_list.value, dtype=np.float32)
