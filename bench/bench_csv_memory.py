"""Peak memory of reading a CSV training file, against two in-memory readers.

A CSV file of --rows rows and --columns numeric columns (the last one the
label) is written once; then, each in a fresh child process, it is read:

- by kerasrpc's reader (service/training/data.py), which parses blocks of
  rows into memory-mapped scratch files, followed by the finiteness check
  training runs, which reads every row back;
- by kerasrpc's reader alone, without the check: the memory parsing takes;
- by parsing every row into Python floats, then one array: the reader
  without blocks;
- by np.loadtxt into float32, NumPy's own reader.

Reported: each child's peak resident memory above what it held before
reading, and the ratios. The memory-mapped rows the check reads count as
resident while it runs, though the kernel may drop them at any time.

    .venv/bin/python -m bench.bench_csv_memory [--rows 1000000] [--columns 10]
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


def _write(path: Path, rows: int, columns: int) -> None:
    rng = np.random.default_rng(0)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([f"c{i}" for i in range(columns)])
        for start in range(0, rows, 65536):
            block = rng.normal(size=(min(65536, rows - start), columns))
            writer.writerows(np.round(block, 6).tolist())


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(key)


def _start() -> int:
    """Reset the process's peak resident memory; return the resident KiB now."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS")


def _peak_kib() -> int:
    return _status_kib("VmHWM")


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
    checksum = float(np.asarray(features[-1]).sum() + np.asarray(labels[-1]).sum())
    out.put((before, _peak_kib(), len(features), checksum))


def _kerasrpc_parse_only(path: Path, out: Any) -> None:
    _kerasrpc(path, out, check=False)


def _lists(path: Path, out: Any) -> None:
    before = _start()
    with path.open(newline="") as file:
        reader = csv.reader(file)
        next(reader)
        values = np.array([[float(v) for v in row] for row in reader if row])
    values = values.astype(np.float32)
    features, labels = values[:, :-1], values[:, -1:]
    checksum = float(features[-1].sum() + labels[-1].sum())
    out.put((before, _peak_kib(), len(features), checksum))


def _loadtxt(path: Path, out: Any) -> None:
    before = _start()
    values = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32)
    features, labels = values[:, :-1], values[:, -1:]
    checksum = float(features[-1].sum() + labels[-1].sum())
    out.put((before, _peak_kib(), len(features), checksum))


def _measure(target: Any, path: Path) -> tuple[float, int, float]:
    """Run `target` in a fresh process; return its added peak MiB, rows, checksum."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    process = context.Process(target=target, args=(path, out))
    process.start()
    before, after, rows, checksum = out.get(timeout=3600)
    process.join()
    return (after - before) / 1024, rows, checksum


def main() -> None:
    """Write the CSV file, read it both ways, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--columns", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train.csv"
        _write(path, args.rows, args.columns)
        size = path.stat().st_size / 2**20
        arrays = args.rows * args.columns * 4 / 2**20
        results = {
            name: _measure(target, path)
            for name, target in (
                ("kerasrpc reader", _kerasrpc),
                ("kerasrpc reader, rows not read back", _kerasrpc_parse_only),
                ("Python floats, then one array", _lists),
                ("np.loadtxt (float32)", _loadtxt),
            )
        }
    print(
        f"CSV {size:.1f} MiB, {args.rows} rows x {args.columns} columns, "
        f"{arrays:.1f} MiB as float32"
    )
    ours = results["kerasrpc reader"]
    for name, (peak, rows, checksum) in results.items():
        assert rows == args.rows, (name, rows)
        assert abs(checksum - ours[2]) < 1e-3, (name, checksum, ours[2])
        print(f"{name}: peak +{peak:.1f} MiB")
    for name in ("Python floats, then one array", "np.loadtxt (float32)"):
        print(f"kerasrpc reader / {name}: {ours[0] / results[name][0]:.2f}")


if __name__ == "__main__":
    main()
