"""A plain `pip install .` gives the client and the stubs, without TensorFlow."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_plain_install_has_the_client_and_stubs_but_no_tensorflow(
    tmp_path: Path,
) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
         str(ROOT)],
        check=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip

    probe = (
        "import importlib.util, kerasrpc.client, kerasrpc.v1.training_service_pb2; "
        "from kerasrpc.client import Client; "
        "print(importlib.util.find_spec('tensorflow') is None, "
        "importlib.util.find_spec('keras') is None)"
    )
    found = subprocess.run(
        [python, "-c", probe], check=True, capture_output=True, text=True,
        timeout=120, cwd=tmp_path,
    )  # fmt: skip
    helped = subprocess.run(
        [env_dir / "bin" / "kerasrpc", "--help"], check=True, capture_output=True,
        text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip

    assert found.stdout.split() == ["True", "True"]
    assert "usage: kerasrpc" in helped.stdout
    site = next((env_dir / "lib").glob("python3*/site-packages"))
    assert (site / "kerasrpc" / "py.typed").exists()
    assert (site / "kerasrpc" / "v1" / "spec_pb2.pyi").exists()
