"""Every command of the README's command-line section works as written."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve_process import ServeProcess

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    """Return the lines of the shell block under 'From the command line'."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### From the command line", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line.strip()]


def _run(line: str, cwd: Path, env: dict[str, str]) -> str:
    words = shlex.split(line, comments=True)
    if words[0] == "kerasrpc":
        words = [sys.executable, "-m", "kerasrpc.client.cli", *words[1:]]
    elif words[0] == "python":
        words[0] = sys.executable
    result = subprocess.run(
        words, cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_the_readme_commands_run_against_a_real_server(tmp_path: Path) -> None:
    state = tmp_path / "state"
    serving = ServeProcess(state)
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    try:
        env = {
            **os.environ,
            "KERASRPC_SERVER": serving.wait_listening(),
            "KERASRPC_STATE_DIR": str(state),
            "PYTHONPATH": str(work),
        }
        job_id = ""
        outputs: dict[str, str] = {}
        for shown in readme_commands():
            line = shown.replace("JOB_ID", job_id)
            outputs[line] = _run(line, work, env)
            if "--detach" in line:
                job_id = outputs[line].strip()

        python = _run_python_example(env["KERASRPC_SERVER"], work, env)

        assert re.fullmatch(r"[0-9a-z-]+", job_id)
        assert python.splitlines()[0].startswith("1 ")
        trained = next(out for line, out in outputs.items() if "train ex" in line)
        assert re.search(r"^step 1 epoch 1 cost ", trained, flags=re.MULTILINE)
        assert "SUCCEEDED: model version" in trained
        assert (work / "sequential.keras").stat().st_size > 0
    except BaseException:
        print(serving.output)
        raise
    finally:
        serving.stop()


def _run_python_example(address: str, cwd: Path, env: dict[str, str]) -> str:
    """Run the README's Python example against the server at `address`."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### From Python", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert block is not None
    code = block.group(1).replace("127.0.0.1:50051", address)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("command", ["--help", "models --help", "train --help"])
def test_the_help_texts_show(command: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kerasrpc.client.cli", *command.split()],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert result.returncode == 0
    assert "usage: kerasrpc" in result.stdout
