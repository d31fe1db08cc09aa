"""Log output for the server process: readable lines, or one JSON object a line.

Library code only creates loggers; configure_logging() is for the entry point.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
FORMATS = ("text", "json")

# The attributes every LogRecord has; any other attribute came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__
) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Format each record as one JSON object: ts, level, logger, message, extras.

    Fields passed with `extra=` are added as they are when JSON can hold them,
    and as their str() otherwise; an exception adds its traceback as `exception`.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a single line of JSON."""
        entry: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extra_fields(record).items():
            entry.setdefault(key, value)

        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(
    level: str | int = "INFO", fmt: str = "text", stream: TextIO | None = None
) -> logging.Handler:
    """Send all log records at `level` and above to stderr in the given format.

    Replaces the handlers of the root logger, so calling it again reconfigures.

    Args:
        level: A level name such as "INFO" or "debug", or a logging level number.
        fmt: "text" for readable lines, "json" for one JSON object per line.
        stream: Where to write; stderr when None.

    Returns:
        The handler installed on the root logger.

    Raises:
        ValueError: The level or format is not one of the known ones.
    """
    number = _level(level)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(_formatter(fmt))

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(number)
    logging.captureWarnings(True)
    return handler


def _formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(
        f"log format expected one of {', '.join(FORMATS)}, received {fmt!r}"
    )


def _level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    number = logging.getLevelName(level.strip().upper())
    if not isinstance(number, int):
        raise ValueError(
            "log level expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL, "
            f"received {level!r}"
        )
    return number


def _timestamp(created: float) -> str:
    moment = datetime.fromtimestamp(created, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _RECORD_ATTRIBUTES and not key.startswith("_")
    }
