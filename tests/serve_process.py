"""Run `kerasrpc serve` as a child process and find the port it listens on."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

LISTENING = re.compile(r"listening on (\S+):(\d+)")


class ServeProcess:
    """A `kerasrpc serve` child process whose stderr is collected."""

    def __init__(self, state_dir: Path, *flags: str, env: dict[str, str] | None = None):
        command = [
            sys.executable, "-m", "kerasrpc.client.cli", "serve",
            "--listen", "127.0.0.1:0", "--metrics-address", "127.0.0.1:0",
            "--state-dir", str(state_dir),
            "--device", os.environ.get("KERASRPC_DEVICE", "cpu"), *flags,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_listening(self, timeout: float = 90.0) -> str:
        """Return host:port once the server logs it is listening."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                match = LISTENING.search(line)
                if match:
                    return f"{match.group(1)}:{match.group(2)}"
            if self.process.poll() is not None:
                raise RuntimeError("server exited:\n" + "".join(self.lines))
            time.sleep(0.1)
        raise TimeoutError("server did not start:\n" + "".join(self.lines))

    @property
    def output(self) -> str:
        """Return what the server wrote to stderr so far."""
        return "".join(self.lines)

    def stop(self) -> None:
        """Kill the process if it still runs."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
