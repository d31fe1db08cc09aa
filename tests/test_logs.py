"""The server's log output: readable lines by default, JSON lines on request."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from kerasrpc.service.logs import configure_logging


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


@pytest.mark.usefixtures("restore_root_logger")
def test_text_lines_show_time_level_logger_and_message() -> None:
    out = io.StringIO()
    configure_logging("INFO", "text", stream=out)

    logging.getLogger("kerasrpc.service.training").info("job %s started", "j-1")
    logging.getLogger("kerasrpc.service.training").debug("hidden detail")

    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO    "
        r"kerasrpc\.service\.training: job j-1 started",
        lines[0],
    )


@pytest.mark.usefixtures("restore_root_logger")
def test_json_lines_hold_the_fields_and_the_extras() -> None:
    out = io.StringIO()
    configure_logging("debug", "json", stream=out)
    log = logging.getLogger("kerasrpc.service.inference")

    log.debug("batch of %d", 8, extra={"model": "mnist", "version": 3})
    log.warning("queue full", extra={"shape": (2, 3), "path": object()})

    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["level"] == "DEBUG"
    assert first["logger"] == "kerasrpc.service.inference"
    assert first["message"] == "batch of 8"
    assert (first["model"], first["version"]) == ("mnist", 3)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    assert second["shape"] == [2, 3]
    assert second["path"].startswith("<object object at")


@pytest.mark.usefixtures("restore_root_logger")
def test_json_records_an_exception_as_one_line() -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)

    try:
        raise RuntimeError("device lost")
    except RuntimeError:
        logging.getLogger("kerasrpc.service").exception("step failed")

    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["message"] == "step failed"
    assert entry["level"] == "ERROR"
    assert "RuntimeError: device lost" in entry["exception"]


@pytest.mark.usefixtures("restore_root_logger")
def test_an_extra_field_cannot_replace_a_core_field() -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)

    logging.getLogger("kerasrpc.service").info("hello", extra={"level": "fake"})

    assert json.loads(out.getvalue())["level"] == "INFO"


@pytest.mark.usefixtures("restore_root_logger")
def test_configuring_again_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", "text", stream=first)
    configure_logging("INFO", "json", stream=second)

    logging.getLogger("kerasrpc.service").info("once")

    assert first.getvalue() == ""
    assert json.loads(second.getvalue())["message"] == "once"


@pytest.mark.parametrize(
    ("level", "fmt", "message"),
    [
        ("INFO", "xml", "log format expected one of text, json, received 'xml'"),
        ("LOUD", "text", "log level expected one of DEBUG, INFO, WARNING, ERROR"),
    ],
)
@pytest.mark.usefixtures("restore_root_logger")
def test_unknown_level_or_format_is_refused(level: str, fmt: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        configure_logging(level, fmt, stream=io.StringIO())
