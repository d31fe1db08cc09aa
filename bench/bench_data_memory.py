"""Peak memory of reading CSV and .npz training files, against in-memory readers.

A file of --rows rows and --columns float columns (the last one the label)
is written once per format; then, each in a fresh child process, it is read:

- by kerasrpc's reader (service/training/data.py), which writes the values
  to unnamed scratch files and maps them, followed by the finiteness check
  training runs, which reads every row back;
- by kerasrpc's reader alone, without the check: what reading itself holds;
- by a reader that holds everything in memory: for CSV, every row parsed
  into Python floats and then one array, and np.loadtxt into float32; for
  .npz (compressed), np.load of both arrays.

Reported: each child's peak resident memory above what it held before
reading. The mapped rows the check reads count as resident while it runs,
though the kernel may drop them and read them again at any time.

    .venv/bin/python -m bench.bench_data_memory [--rows 1000000] [--columns 10]
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _values(rows: int, columns: int) -> np.ndarray:
    return np.round(np.random.default_rng(0).normal(size=(rows, columns)), 6)


def _write_csv(path: Path, values: np.ndarray) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([f"c{i}" for i in range(values.shape[1])])
        writer.writerows(values.tolist())


def _write_npz(path: Path, values: np.ndarray) -> None:
    as_float32 = values.astype(np.float32)
    np.savez_compressed(path, features=as_float32[:, :-1], labels=as_float32[:, -1:])


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(key)


def _start() -> int:
    """Reset the process's peak resident memory; return the resident KiB now."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS")


def _report(out: Any, before: int, features: Any, labels: Any) -> None:
    checksum = float(np.asarray(features[-1]).sum() + np.asarray(labels[-1]).sum())
    out.put((before, _status_kib("VmHWM"), len(features), checksum))


def _kerasrpc(path: Path, out: Any, check: bool = True) -> None:
    from kerasrpc.service.training.data import Examples, check_examples, read_file
    from kerasrpc.service.training.datasets import DatasetStore
    from kerasrpc.v1 import spec_pb2

    datasets = DatasetStore(path.parent / "datasets")
    before = _start()
    source = spec_pb2.DataFile(path=path.name)
    features, labels = read_file(source, "file", path.parent, datasets)
    if check:
        check_examples(Examples(features, labels, "file"))
    _report(out, before, features, labels)


def _kerasrpc_reading_only(path: Path, out: Any) -> None:
    _kerasrpc(path, out, check=False)


def _python_floats(path: Path, out: Any) -> None:
    before = _start()
    with path.open(newline="") as file:
        reader = csv.reader(file)
        next(reader)
        values = np.array([[float(v) for v in row] for row in reader if row])
    values = values.astype(np.float32)
    _report(out, before, values[:, :-1], values[:, -1:])


def _loadtxt(path: Path, out: Any) -> None:
    before = _start()
    values = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32)
    _report(out, before, values[:, :-1], values[:, -1:])


def _np_load(path: Path, out: Any) -> None:
    before = _start()
    with np.load(path) as archive:
        features, labels = archive["features"], archive["labels"]
    _report(out, before, features, labels)


def _measure(target: Any, path: Path) -> tuple[float, int, float]:
    """Run `target` in a fresh process; return its added peak MiB, rows, checksum."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    process = context.Process(target=target, args=(path, out))
    process.start()
    before, after, rows, checksum = out.get(timeout=3600)
    process.join()
    return (after - before) / 1024, rows, checksum


READERS = {
    "train.csv": (
        ("Python floats, then one array", _python_floats),
        ("np.loadtxt (float32)", _loadtxt),
    ),
    "train.npz": (("np.load", _np_load),),
}


def main() -> None:
    """Write each file, read it every way, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--columns", type=int, default=10)
    args = parser.parse_args()
    values = _values(args.rows, args.columns)
    arrays = values.size * 4 / 2**20
    print(f"{args.rows} rows x {args.columns} columns, {arrays:.1f} MiB as float32")
    with tempfile.TemporaryDirectory() as folder:
        for name, baselines in READERS.items():
            path = Path(folder) / name
            (_write_csv if name.endswith(".csv") else _write_npz)(path, values)
            readers = (
                ("kerasrpc reader", _kerasrpc),
                ("kerasrpc reader, rows not read back", _kerasrpc_reading_only),
                *baselines,
            )
            results = {label: _measure(target, path) for label, target in readers}
            size = path.stat().st_size / 2**20
            print(f"{name} ({size:.1f} MiB):")
            ours = results["kerasrpc reader"]
            for label, (peak, rows, checksum) in results.items():
                assert rows == args.rows, (label, rows)
                assert abs(checksum - ours[2]) < 1e-3, (label, checksum, ours[2])
                print(f"  {label}: peak +{peak:.1f} MiB")
            alone = results["kerasrpc reader, rows not read back"]
            for label, _ in baselines:
                theirs = results[label][0]
                print(
                    f"  kerasrpc reader / {label}: {ours[0] / theirs:.2f} with the "
                    f"check, {alone[0] / theirs:.2f} reading only"
                )


if __name__ == "__main__":
    main()
