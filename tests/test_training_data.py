"""Training data sources and bad input, over a real server."""

from __future__ import annotations

import csv
import gc
import io
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from kerasrpc.client import Client
from kerasrpc.client.errors import KerasRpcError
from kerasrpc.service.errors import (
    Cancelled,
    Internal,
    InvalidArgument,
    ResourceExhausted,
)
from kerasrpc.service.training.data import CSV_BLOCK_ROWS, read_file
from kerasrpc.service.training.datasets import DatasetStore
from kerasrpc.v1 import spec_pb2, training_service_pb2

from tests.training_support import (
    compile_spec,
    final_state,
    inline,
    linear_data,
    steps,
    training_spec,
    unique,
)

SUCCEEDED = training_service_pb2.JOB_STATE_SUCCEEDED


def _data_root(server: Any) -> Path:
    root: Path = server.app.settings.resolved_data_root
    root.mkdir(parents=True, exist_ok=True)
    return root


def _file(path: str, **fields: Any) -> spec_pb2.DataSource:
    return spec_pb2.DataSource(file=spec_pb2.DataFile(path=path, **fields))


def _trains(client: Client, source: spec_pb2.DataSource) -> list[Any]:
    events = list(client.train(training_spec(unique("data"), source, epochs=1)))
    assert final_state(events).state == SUCCEEDED, final_state(events).message
    return steps(events)


def test_uploaded_dataset_in_chunks_trains_and_is_deleted(client: Client) -> None:
    x, y = linear_data(rows=100)

    dataset = client.upload_dataset("linear", x, y, chunk_bytes=256)

    assert dataset.examples == 100
    assert list(dataset.features.shape) == [100, 4]
    assert dataset.dataset_id in [d.dataset_id for d in client.list_datasets()]
    assert len(_trains(client, _dataset(dataset.dataset_id))) == 13
    client.delete_dataset(dataset.dataset_id)
    assert dataset.dataset_id not in [d.dataset_id for d in client.list_datasets()]
    with pytest.raises(KerasRpcError) as error:
        client.delete_dataset(dataset.dataset_id)
    assert error.value.code == grpc.StatusCode.NOT_FOUND


def test_a_dataset_in_use_cannot_be_deleted(client: Client) -> None:
    dataset = client.upload_dataset("busy", *linear_data())
    spec = training_spec(
        unique("busy"),
        spec_pb2.DataSource(dataset_id=dataset.dataset_id),
        epochs=100_000,
    )
    job = client.start_training(spec)

    with pytest.raises(KerasRpcError) as error:
        client.delete_dataset(dataset.dataset_id)

    assert error.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert job.job_id in error.value.message
    client.cancel(job.job_id)
    list(client.watch(job.job_id))
    client.delete_dataset(dataset.dataset_id)


def test_upload_with_mismatched_chunks_is_refused(client: Client) -> None:
    before = len(client.list_datasets())
    rows = np.zeros((4, 3), np.float32)

    def requests() -> Any:
        yield training_service_pb2.UploadDatasetRequest(
            header=training_service_pb2.UploadDatasetHeader(name="bad")
        )
        for width in (3, 2):
            chunk = training_service_pb2.DatasetChunk(
                features=_tensor(np.zeros((4, width), np.float32)),
                labels=_tensor(rows[:, :1]),
            )
            yield training_service_pb2.UploadDatasetRequest(chunk=chunk)

    with pytest.raises(grpc.RpcError) as error:
        client.training.UploadDataset(requests())

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "chunk[1].features" in error.value.details()
    assert len(client.list_datasets()) == before


def _chunks_of(rows: int) -> list[training_service_pb2.DatasetChunk]:
    x, y = linear_data(rows=rows)
    return [training_service_pb2.DatasetChunk(features=_tensor(x), labels=_tensor(y))]


@pytest.mark.parametrize(
    ("declared", "still_wanted", "refusal"),
    [(5, True, InvalidArgument), (0, False, Cancelled)],
    ids=["count", "cancelled"],
)
def test_a_refused_upload_leaves_nothing_in_the_datasets_folder(
    tmp_path: Path, declared: int, still_wanted: bool, refusal: Any
) -> None:
    datasets = DatasetStore(tmp_path / "datasets")

    with pytest.raises(refusal):
        datasets.upload(
            "refused",
            _chunks_of(4),
            declared_examples=declared,
            still_wanted=lambda: still_wanted,
        )

    assert list(datasets.root.iterdir()) == []  # hidden folders included


@pytest.mark.parametrize(
    ("features", "labels", "expected"),
    [
        (np.zeros((5, 2)), np.zeros((10, 1)), "5 rows of features and 10 of labels"),
        (np.float32(1), np.zeros((1, 1)), "received shapes [] and [1, 1]"),
    ],
    ids=["rows", "scalar"],
)
def test_the_client_refuses_to_upload_unmatched_features_and_labels(
    client: Client, features: Any, labels: Any, expected: str
) -> None:
    before = len(client.list_datasets())

    with pytest.raises(ValueError, match=re.escape(expected)):
        client.upload_dataset("unmatched", features, labels)

    assert len(client.list_datasets()) == before


@pytest.mark.parametrize(
    ("first", "field", "message"),
    [
        (
            training_service_pb2.UploadDatasetRequest(
                header=training_service_pb2.UploadDatasetHeader(name="")
            ),
            "header.name",
            "header.name: expected a dataset name, received an empty string",
        ),
        (
            None,
            "header",
            "header: expected a header as the first message, received a chunk",
        ),
        (
            training_service_pb2.UploadDatasetRequest(
                header=training_service_pb2.UploadDatasetHeader(
                    name="cut-short", examples=10
                )
            ),
            "header.examples",
            "header.examples: expected the 10 examples the header declares, received 4",
        ),
        (
            training_service_pb2.UploadDatasetRequest(
                header=training_service_pb2.UploadDatasetHeader(
                    name="negative", examples=-1
                )
            ),
            "header.examples",
            "header.examples: expected a number of examples >= 0, received -1",
        ),
        (
            training_service_pb2.UploadDatasetRequest(
                header=training_service_pb2.UploadDatasetHeader(
                    name="overlong", examples=2
                )
            ),
            "header.examples",
            "header.examples: expected the 2 examples the header declares, "
            "received at least 4",
        ),
    ],
    ids=[
        "empty name", "no header", "fewer than declared", "negative count",
        "more than declared",
    ],
)  # fmt: skip
def test_upload_without_a_named_header_blames_the_header(
    client: Client, first: Any, field: str, message: str
) -> None:
    before = len(client.list_datasets())
    x, y = linear_data()
    chunk = training_service_pb2.DatasetChunk(
        features=_tensor(x[:4]), labels=_tensor(y[:4])
    )
    requests = [training_service_pb2.UploadDatasetRequest(chunk=chunk)]

    with pytest.raises(grpc.RpcError) as raised:
        client.training.UploadDataset(iter([first, *requests] if first else requests))

    error = KerasRpcError.from_rpc_error(raised.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.violations] == [field]
    assert error.message == message
    assert len(client.list_datasets()) == before


def _tensor(array: Any) -> Any:
    from kerasrpc.client.tensors import to_tensor

    return to_tensor(array)


def test_npz_csv_and_tfrecord_files_train(client: Client, server: Any) -> None:
    root = _data_root(server)
    x, y = linear_data(rows=24)
    np.savez(root / "train.npz", inputs=x, targets=y)
    with (root / "train.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["a", "b", "target", "c", "d"])
        for row, label in zip(x, y, strict=True):
            writer.writerow([row[0], row[1], label[0], row[2], row[3]])
    with tf.io.TFRecordWriter(str(root / "train.tfrecord")) as writer:
        for row, label in zip(x, y, strict=True):
            writer.write(_example(row, label))

    npz = _file("train.npz", features_key="inputs", labels_key="targets")
    csv_source = _file("train.csv", label_columns=["target"])
    tfrecord = _file("train.tfrecord", features_shape=[4], labels_shape=[1])
    costs = [[s.cost for s in _trains(client, s)] for s in (npz, csv_source, tfrecord)]

    assert costs[0] == pytest.approx(costs[1], rel=1e-5)
    assert costs[0] == pytest.approx(costs[2], rel=1e-5)


def _example(features: Any, label: Any) -> bytes:
    def floats(values: Any) -> tf.train.Feature:
        return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))

    example = tf.train.Example(
        features=tf.train.Features(
            feature={"features": floats(features), "labels": floats(label)}
        )
    )
    serialized: bytes = example.SerializeToString()
    return serialized


def test_validation_split_reports_validation_results(client: Client) -> None:
    mae = spec_pb2.MetricSpec(mean_absolute_error=spec_pb2.ErrorMetric())
    spec = training_spec(
        unique("split"), compile=compile_spec(0.05, [mae]), validation_split=0.25
    )

    events = list(client.train(spec))

    ends = [e.epoch_end for e in events if e.WhichOneof("event") == "epoch_end"]
    assert len(steps(events)) == 2 * 6
    assert all(e.HasField("validation_cost") for e in ends)
    assert set(ends[0].validation_metrics) == {"mean_absolute_error"}


def _bad_specs(root: Path) -> list[tuple[str, Any, str]]:
    x, y = linear_data()
    nan = x.copy()
    nan[5, 1] = np.nan
    (root / "outside").mkdir(exist_ok=True)
    link = root / "escape.npz"
    if not link.exists():
        link.symlink_to("/etc/hostname")
    no_loss = compile_spec()
    no_loss.ClearField("loss")
    name = unique("bad")
    no_data = training_spec(name)
    no_data.ClearField("train_data")
    unknown_base = training_spec(unique("none"))
    unknown_base.base_version = 3
    path = "spec.train_data.file.path"
    return [
        (
            "feature shape",
            training_spec(name, inline(x[:, :3], y)),
            _INLINE + "features",
        ),
        ("label shape", training_spec(name, inline(x, x[:, :3])), _INLINE + "labels"),
        (
            "unknown dataset",
            training_spec(name, _dataset("no")),
            "spec.train_data.dataset_id",
        ),
        ("NaN in data", training_spec(name, inline(nan, y)), _INLINE + "features"),
        ("no loss", training_spec(name, compile=no_loss), "spec.compile.loss"),
        ("parent path", training_spec(name, _file("../x.npz")), path),
        ("absolute path", training_spec(name, _file("/etc/x.npz")), path),
        ("symlink escape", training_spec(name, _file("escape.npz")), path),
        ("missing file", training_spec(name, _file("nope.npz")), path),
        ("batch size", training_spec(name, batch_size=-1), "spec.config.batch_size"),
        ("epochs", training_spec(name, epochs=-2), "spec.config.epochs"),
        ("no data", no_data, "spec.train_data"),
        ("model name", training_spec("bad name!"), "spec.model_name"),
        ("unknown base", unknown_base, "spec.base_version"),
    ]


_INLINE = "spec.train_data.inline."


def _dataset(dataset_id: str) -> spec_pb2.DataSource:
    return spec_pb2.DataSource(dataset_id=dataset_id)


def test_each_bad_input_names_its_field(client: Client, server: Any) -> None:
    for label, spec, field in _bad_specs(_data_root(server)):
        with pytest.raises(KerasRpcError) as error:
            client.start_training(spec)

        assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT, label
        assert [v.field for v in error.value.violations][:1] == [field], (
            label,
            error.value.message,
        )
        assert "expected" in error.value.message, label
    assert client.server_info().device


def test_nan_cost_fails_the_job_and_the_server_goes_on(client: Client) -> None:
    x, y = linear_data()
    exploding = training_spec(
        unique("nan"), inline(x * 1e3, y), compile=compile_spec(1e30), epochs=3
    )

    events = list(client.train(exploding))
    state = final_state(events)

    assert state.state == training_service_pb2.JOB_STATE_FAILED
    assert state.message.startswith("cost became")
    failed_at = int(state.message.rsplit(" ", 1)[1])
    assert [s.step for s in steps(events)] == list(range(1, failed_at))
    assert client.get_job(events[0].job_id).error == state.message
    assert final_state(list(client.train(training_spec(unique("after"))))).state == (
        SUCCEEDED
    )


@pytest.mark.parametrize(
    ("role", "text"),
    [
        ("train_data", "caf\N{LATIN SMALL LETTER E WITH ACUTE},target\n1,2\n"),
        ("validation_data", "x,target\n1,2\n3,\N{MICRO SIGN}\n"),
    ],
    ids=["header", "row"],
)
def test_a_csv_file_that_is_not_utf8_names_its_path(
    client: Client, server: Any, role: str, text: str
) -> None:
    (_data_root(server) / "latin1.csv").write_bytes(text.encode("latin-1"))
    spec = training_spec(unique("latin1"))
    getattr(spec, role).CopyFrom(_file("latin1.csv"))

    with pytest.raises(KerasRpcError) as error:
        client.start_training(spec)

    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.value.violations] == [f"spec.{role}.file.path"]
    assert "not UTF-8 text" in error.value.message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a,b,target\n1,2,3\n4,5\n", "expected 3 columns in every row, like the "
         "header, received 2 on line 3"),
        ("a,b,target\n1,2,3\n\n4,x,6\n", "could not convert string to float: "
         "'x' on line 4"),
        ("a,b,target\n1,2,3\n" + "9" * 200_000 + ",2,3\n",
         "expected a well-formed CSV file, received field larger than field "
         "limit (131072) on line 3"),
    ],
    ids=["ragged", "not-a-number", "huge-field"],
)  # fmt: skip
def test_a_bad_csv_row_names_its_line(
    client: Client, server: Any, text: str, expected: str
) -> None:
    name = f"{unique('bad')}.csv"
    (_data_root(server) / name).write_text(text)

    with pytest.raises(KerasRpcError) as error:
        client.start_training(training_spec(unique("bad-csv"), _file(name)))

    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.value.violations] == ["spec.train_data.file.path"]
    assert expected in error.value.message


def test_csv_rows_are_read_in_blocks_into_memory_maps_that_leave_no_files(
    tmp_path: Path,
) -> None:
    datasets = DatasetStore(tmp_path / "datasets")
    rows = np.random.default_rng(0).normal(size=(2 * CSV_BLOCK_ROWS + 5, 4))
    with (tmp_path / "big.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["a", "y", "b", "c"])
        writer.writerows(rows.tolist())
    source = spec_pb2.DataFile(path="big.csv", label_columns=["y"])

    features, labels = read_file(source, "file", tmp_path, datasets)

    assert isinstance(features, np.memmap)
    assert isinstance(labels, np.memmap)
    expected = rows.astype(np.float32)
    np.testing.assert_array_equal(features, expected[:, [0, 2, 3]])
    np.testing.assert_array_equal(labels, expected[:, [1]])
    assert len(set(_held_under(datasets.root))) == 2  # held open and mapped
    del features, labels
    gc.collect()
    assert _held_under(datasets.root) == []


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_arrays_are_copied_to_memory_maps_the_archive_cannot_change(
    tmp_path: Path, save: Any
) -> None:
    datasets = DatasetStore(tmp_path / "datasets")
    x = np.asfortranarray(np.random.default_rng(0).normal(size=(300, 7, 3)))
    y = np.arange(300, dtype=np.int16).reshape(300, 1)
    save(tmp_path / "train.npz", inputs=x, targets=y)
    source = spec_pb2.DataFile(
        path="train.npz", features_key="inputs", labels_key="targets"
    )

    features, labels = read_file(source, "file", tmp_path, datasets)
    save(tmp_path / "train.npz", inputs=x + 1, targets=y + 1)

    assert isinstance(features, np.memmap)
    assert isinstance(labels, np.memmap)
    np.testing.assert_array_equal(features, x)
    np.testing.assert_array_equal(labels, y)
    assert labels.dtype == np.int16
    del features, labels
    gc.collect()
    assert _held_under(datasets.root) == []


def _refused(
    source: spec_pb2.DataFile, folder: Path, datasets: DatasetStore
) -> InvalidArgument:
    """Read a data file under `folder` that must be refused; return why."""
    with pytest.raises(InvalidArgument) as error:
        read_file(source, "file", folder, datasets)
    return error.value


def _npz_with(
    tmp_path: Path, member: str, content: bytes, compression: int = zipfile.ZIP_STORED
) -> Path:
    with zipfile.ZipFile(tmp_path / "bad.npz", "w", compression) as archive:
        archive.writestr(member, content)
        archive.writestr("labels.npy", _npy(np.zeros((2, 1))))
    return tmp_path / "bad.npz"


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """Return a .npy header for float64 values of `shape`, without the values."""
    buffer = io.BytesIO()
    header = {"descr": "<f8", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def _raw_npy(header: bytes) -> bytes:
    """Return a version 1.0 .npy file with this header text and 64 bytes of values."""
    padded = header.ljust(118) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(padded).to_bytes(2, "little") + padded + bytes(64)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (_npy(np.array([{"a": 1}, None], dtype=object)),
         "features.npy holds Python objects, not numbers"),
        (_npy(np.zeros((4, 2)))[:-16],
         "features.npy holds 48 bytes of values, where its shape [4, 2] and dtype "
         "float64 take 64"),
        (_npy(np.zeros((4, 2))) + b"\0" * 8,
         "features.npy holds 72 bytes of values, where its shape [4, 2] and "
         "dtype float64 take 64"),
        (_npy_header((10**15, 2)) + b"\0" * 64,
         "features.npy holds 64 bytes of values, where its shape "
         "[1000000000000000, 2] and dtype float64 take 16000000000000000"),
        (_npy_header((-1, 2)) + b"\0" * 64,
         "features.npy declares a negative size in [-1, 2]"),
        (b"not an array", "the magic string is not correct"),
        (_raw_npy(b"{'descr': '<f8', 'fortran_order': False, 'shape': (4, }"),
         "features.npy has a header that does not parse"),
        # Python's parser runs out of memory on so many unary minuses.
        (_raw_npy(b"{'descr': '<f8', 'fortran_order': False, 'shape': ("
                  + b"-" * 9000 + b"4,), }"),
         "features.npy has a header that does not parse"),
    ],
    ids=["objects", "short", "long", "huge-shape", "negative-shape", "not-npy",
         "bad-header", "deep-header"],
)  # fmt: skip
def test_a_bad_npz_member_is_refused_naming_it(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    _npz_with(tmp_path, "features.npy", content)
    datasets = DatasetStore(tmp_path / "datasets")

    error = _refused(spec_pb2.DataFile(path="bad.npz"), tmp_path, datasets)

    assert [v.field for v in error.violations] == ["file.path"]
    assert "expected a readable .npz file" in error.message
    assert expected in error.message
    assert _held_under(datasets.root) == []


def _valid_file(suffix: str) -> bytes:
    """Return the bytes of a small valid data file of this format."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"valid{suffix}"
        x, y = linear_data(rows=3)
        if suffix == ".npz":
            np.savez_compressed(path, features=x, labels=y)
        elif suffix == ".csv":
            path.write_text("a,b,c,d,y\n" + "\n".join(
                ",".join(str(v) for v in row) for row in np.hstack([x, y])
            ))  # fmt: skip
        else:
            _tfrecord(path, [(row, label) for row, label in zip(x, y, strict=True)])
        return path.read_bytes()


@pytest.mark.parametrize("suffix", [".csv", ".npz", ".tfrecord"])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_damaged_data_files_are_read_or_refused_never_failing_otherwise(
    tmp_path_factory: pytest.TempPathFactory, suffix: str, data: st.DataObject
) -> None:
    valid = _valid_file(suffix)
    damaged = bytearray(valid)
    for _ in range(data.draw(st.integers(1, 8))):
        damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(
            st.integers(0, 255)
        )
    cut = data.draw(st.integers(1, len(damaged)))
    folder = tmp_path_factory.mktemp("damaged")
    (folder / f"file{suffix}").write_bytes(bytes(damaged[:cut]))
    datasets = DatasetStore(folder / "datasets")
    source = spec_pb2.DataFile(path=f"file{suffix}")

    try:
        features, labels = read_file(source, "file", folder, datasets)
    except InvalidArgument as error:
        refused = [v.field.split(".")[0] for v in error.violations]
    else:
        refused = []
        assert len(features) == len(labels)

    assert refused in ([], ["file"])


class FullDisk(DatasetStore):
    """A dataset store whose scratch files are /dev/full: every write fails."""

    def scratch(self) -> Any:
        return open("/dev/full", "w+b")


class GoneScratch(DatasetStore):
    """A dataset store whose scratch folder has vanished."""

    def scratch(self) -> Any:
        return tempfile.TemporaryFile(dir=self.root / "gone")


@pytest.mark.parametrize(
    ("store", "refusal", "expected"),
    [
        (FullDisk, ResourceExhausted, "no disk space is left beside the datasets"),
        (GoneScratch, Internal, "the server cannot write the scratch files for "),
    ],
    ids=["full-disk", "no-scratch-folder"],
)
@pytest.mark.parametrize("suffix", [".csv", ".npz", ".tfrecord"])
def test_scratch_files_that_fail_are_the_servers_fault_not_the_files(
    tmp_path: Path, suffix: str, store: Any, refusal: Any, expected: str
) -> None:
    (tmp_path / f"train{suffix}").write_bytes(_valid_file(suffix))
    source = spec_pb2.DataFile(path=f"train{suffix}")

    with pytest.raises(refusal) as error:
        read_file(source, "file", tmp_path, store(tmp_path / "datasets"))

    assert expected in error.value.message
    assert f"'train{suffix}'" in error.value.message
    assert str(tmp_path) not in error.value.message


def test_a_bad_file_is_named_even_when_its_scratch_files_fail_too(
    tmp_path: Path,
) -> None:
    _tfrecord(tmp_path / "t.tfrecord", [([1, 2], [0]), ([1, 2, 3], [0])])
    source = spec_pb2.DataFile(path="t.tfrecord")

    # The scratch files fail as they close, while the refusal is on its way.
    error = _refused(source, tmp_path, FullDisk(tmp_path / "datasets"))

    assert "received 2 values in record 0 and 3 in record 1" in error.message


@pytest.mark.parametrize(
    "compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]
)
def test_a_corrupt_compressed_npz_member_is_refused(
    tmp_path: Path, compression: int
) -> None:
    values = _npy(np.random.default_rng(0).normal(size=(200, 3)))
    archive = _npz_with(tmp_path, "features.npy", values, compression)
    data = bytearray(archive.read_bytes())
    start = 30 + len("features.npy") + 40  # inside the first member's data
    for i in range(start, start + 30):
        data[i] ^= 0x5A
    archive.write_bytes(data)
    datasets = DatasetStore(tmp_path / "datasets")

    error = _refused(spec_pb2.DataFile(path="bad.npz"), tmp_path, datasets)

    assert [v.field for v in error.violations] == ["file.path"]
    assert "expected a readable .npz file" in error.message


def test_an_encrypted_npz_member_is_refused(tmp_path: Path) -> None:
    locked = _npz_with(tmp_path, "features.npy", _npy(np.zeros((2, 1))))
    # Mark the first member encrypted, in its local and central headers:
    # zipfile then wants a password to read it.
    data = bytearray(locked.read_bytes())
    data[6] |= 0x1
    data[data.index(b"PK\x01\x02") + 8] |= 0x1
    (tmp_path / "locked.npz").write_bytes(data)
    datasets = DatasetStore(tmp_path / "datasets")

    error = _refused(spec_pb2.DataFile(path="locked.npz"), tmp_path, datasets)

    assert [v.field for v in error.violations] == ["file.path"]
    assert "encrypted" in error.message


def test_an_npz_key_that_is_absent_names_the_keys_there(tmp_path: Path) -> None:
    np.savez(tmp_path / "train.npz", inputs=np.zeros((2, 1)), labels=np.zeros((2, 1)))
    datasets = DatasetStore(tmp_path / "datasets")

    error = _refused(spec_pb2.DataFile(path="train.npz"), tmp_path, datasets)

    assert [v.field for v in error.violations] == ["file.features_key"]
    assert "(one of ['inputs', 'labels']), received 'features'" in error.message


def _held_under(folder: Path) -> list[str]:
    """Return the files under `folder` this process holds open or mapped."""
    prefix = str(folder.resolve())
    fds = Path("/proc/self/fd")
    held = []
    for fd in fds.iterdir():
        try:
            held.append(os.readlink(fd))
        except OSError:
            continue  # closed since listed
    # A mapping's path is its sixth field, followed by " (deleted)" if unlinked.
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6:
            held.append(fields[5])
    return [name for name in held if name.startswith(prefix)]


def test_a_finished_csv_job_leaves_no_scratch_files(
    client: Client, server: Any
) -> None:
    x, y = linear_data(rows=24)
    name = f"{unique('scratch')}.csv"
    with (_data_root(server) / name).open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["a", "b", "c", "d", "y"])
        writer.writerows(np.hstack([x, y]).tolist())

    _trains(client, _file(name))
    gc.collect()

    assert _held_under(server.app.jobs.datasets.root) == []


def _tfrecord(path: Path, rows: list[tuple[list[float], list[float]]]) -> None:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for features, label in rows:
            writer.write(_example(features, label))


def test_tfrecord_values_are_reshaped_into_memory_maps(tmp_path: Path) -> None:
    values = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    _tfrecord(tmp_path / "t.tfrecord", [(row[:4], row[4:]) for row in values])
    source = spec_pb2.DataFile(
        path="t.tfrecord", features_shape=[2, 2], labels_shape=[2]
    )
    datasets = DatasetStore(tmp_path / "datasets")

    features, labels = read_file(source, "file", tmp_path, datasets)

    assert isinstance(features, np.memmap)
    assert isinstance(labels, np.memmap)
    np.testing.assert_array_equal(features, values[:, :4].reshape(50, 2, 2))
    np.testing.assert_array_equal(labels, values[:, 4:])


@pytest.mark.parametrize(
    ("rows", "shape", "field", "expected"),
    [
        ([([1, 2], [0]), ([1, 2, 3], [0])], [], "file.features_shape",
         "received 2 values in record 0 and 3 in record 1"),
        ([([1, 2], [0]), ([1, 2], [0, 1])], [], "file.labels_shape",
         "received 1 values in record 0 and 2 in record 1"),
        ([([1, 2, 3], [0])], [2, 2], "file.features_shape",
         "expected a shape of 3 values, received [2, 2]"),
    ],
    ids=["features", "labels", "shape"],
)  # fmt: skip
def test_tfrecord_lengths_that_do_not_fit_are_refused(
    tmp_path: Path, rows: Any, shape: list[int], field: str, expected: str
) -> None:
    _tfrecord(tmp_path / "t.tfrecord", rows)
    source = spec_pb2.DataFile(path="t.tfrecord", features_shape=shape)
    datasets = DatasetStore(tmp_path / "datasets")

    error = _refused(source, tmp_path, datasets)

    assert [v.field for v in error.violations] == [field]
    assert expected in error.message


def test_a_job_cancelled_while_queued_lets_go_of_its_files(
    start_server: Any,
) -> None:
    running = start_server(max_concurrent_jobs=1)
    name = f"{unique('queued')}.csv"
    x, y = linear_data(rows=24)
    with (_data_root(running) / name).open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["a", "b", "c", "d", "y"])
        writer.writerows(np.hstack([x, y]).tolist())
    long = training_spec(unique("long"), epochs=100_000, checkpoint_every_steps=100_000)
    with Client(running.address, timeout=60) as client:
        first = client.start_training(long)
        queued = client.start_training(training_spec(unique("csv"), _file(name)))
        assert client.get_job(queued.job_id).state == (
            training_service_pb2.JOB_STATE_QUEUED
        )
        scratch = running.app.jobs.datasets.root
        job_folder = running.app.jobs.root / queued.job_id
        held_while_queued = _held_under(scratch), _held_under(job_folder)

        client.cancel(queued.job_id)
        gc.collect()
        held_after = _held_under(scratch), _held_under(job_folder)
        watched = final_state(list(client.watch(queued.job_id)))
        client.cancel(first.job_id)

    # The scratch files of its CSV file, and its event log.
    assert len(held_while_queued[0]) >= 2
    assert held_while_queued[1]
    assert held_after == ([], [])
    assert watched.state == training_service_pb2.JOB_STATE_CANCELLED


def test_a_tfrecord_record_that_is_not_an_example_names_the_record(
    client: Client, server: Any
) -> None:
    with tf.io.TFRecordWriter(str(_data_root(server) / "mixed.tfrecord")) as writer:
        writer.write(_example([1.0, 2.0, 3.0, 4.0], [1.0]))
        writer.write(b"\xff\xff\xff")
    spec = training_spec(unique("mixed"), _file("mixed.tfrecord"))

    with pytest.raises(KerasRpcError) as error:
        client.start_training(spec)

    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.value.violations] == ["spec.train_data.file.path"]
    assert "'mixed.tfrecord'" in error.value.message
    assert "record 1" in error.value.message


@pytest.mark.parametrize("field", ["features", "labels"])
def test_upload_with_a_zero_width_example_dimension_is_refused(
    client: Client, field: str
) -> None:
    before = len(client.list_datasets())
    arrays = {"features": np.zeros((8, 4), np.float32), "labels": np.zeros((8, 1))}
    arrays[field] = np.zeros((8, 0), np.float32)

    with pytest.raises(KerasRpcError) as error:
        client.upload_dataset("empty columns", arrays["features"], arrays["labels"])

    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.value.violations] == [f"chunk[0].{field}.shape"]
    assert "expected non-zero example dimensions, received [8, 0]" in (
        error.value.message
    )
    assert len(client.list_datasets()) == before


def _node(name: str, inputs: list[str], **layer: Any) -> spec_pb2.FunctionalNode:
    return spec_pb2.FunctionalNode(
        layer=spec_pb2.LayerSpec(name=name, **layer), inputs=inputs
    )


def test_features_the_model_cannot_compute_name_the_features(client: Client) -> None:
    # Adding a sequence to its pooled half only fails once real lengths flow.
    model = spec_pb2.ModelSpec(
        functional=spec_pb2.FunctionalSpec(
            inputs=[spec_pb2.InputSpec(name="steps", shape=[-1, 2])],
            nodes=[
                _node("half", ["steps"], pooling1d=spec_pb2.PoolingLayer()),
                _node("sum", ["steps", "half"], add=spec_pb2.AddLayer()),
                _node("pool", ["sum"], global_pooling=spec_pb2.GlobalPoolingLayer()),
                _node("out", ["pool"], dense=spec_pb2.DenseLayer(units=1)),
            ],
            outputs=["out"],
        )
    )
    data = inline(np.zeros((2, 4, 2), np.float32), np.zeros((2, 1), np.float32))
    spec = training_spec(unique("mismatch"), data, model=model)

    with pytest.raises(KerasRpcError) as error:
        client.start_training(spec)

    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.value.violations] == [
        "spec.train_data.inline.features"
    ]
    assert "Incompatible shapes: [1,4,2] vs. [1,2,2]" in error.value.message
    assert "\n" not in error.value.message
