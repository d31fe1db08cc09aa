"""Run every benchmark, one process each, and stop at the first that fails.

Usage: python -m bench.run_all

Each benchmark prints its figures and the ratios against its baseline; the
results and the commands that reproduce them are kept in docs/.
"""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = (
    "bench.bench_training",
    "bench.bench_inference",
    "bench.metrics_overhead",
    "bench.bench_data_memory",
)


def main() -> int:
    """Run the benchmarks in turn; return the first non-zero exit status."""
    for module in BENCHMARKS:
        print(f"== {module}", flush=True)
        status = subprocess.run([sys.executable, "-m", module], check=False).returncode
        if status:
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
