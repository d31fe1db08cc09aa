"""`kerasrpc serve`: check the settings, pin the device, then run the server."""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from kerasrpc.service.device import DeviceError, pin_device
from kerasrpc.service.settings import Settings, SettingsError

logger = logging.getLogger("kerasrpc.service")


def run_server(flags: dict[str, Any]) -> int:
    """Start the server with flags over KERASRPC_* settings; return the exit code."""
    try:
        settings = Settings.from_env().replace(
            **{name: value for name, value in flags.items() if _is_setting(name, value)}
        )
        pin_device(settings.device)
        _check_writable(settings.state_dir)
    except (SettingsError, DeviceError) as error:
        print(f"kerasrpc serve: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"kerasrpc serve: error: {error}", file=sys.stderr)
        return 1

    from kerasrpc.service.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)

    try:
        from kerasrpc.service.server import serve
    except ImportError as error:
        print(
            f"kerasrpc serve: error: the server needs the 'server' extra "
            f"(pip install 'kerasrpc[server]'); missing: {error.name}",
            file=sys.stderr,
        )
        return 2

    try:
        return serve(settings)
    except OSError as error:
        logger.error("cannot start: %s", error)
        return 1


def _is_setting(name: str, value: Any) -> bool:
    return value is not None and name in Settings.__dataclass_fields__


def _check_writable(state_dir: Path) -> None:
    """Raise OSError, naming the directory, when it cannot hold the state."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=state_dir, prefix=".write-check-"):
            pass
    except OSError as error:
        raise OSError(
            f"state_dir {state_dir} is not writable: {error.strerror or error}"
        ) from None
