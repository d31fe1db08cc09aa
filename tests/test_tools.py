"""Missing test tools skip the test on a workstation and fail it under CI."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.tools import require_tool

ABSENT = "kerasrpc-no-such-tool"


def test_a_present_tool_is_found() -> None:
    python = require_tool(Path(sys.executable).name, "python")

    assert Path(python).is_file()


@pytest.mark.parametrize("ci", [None, ""])
def test_a_missing_tool_skips_outside_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str | None
) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)

    with pytest.raises(pytest.skip.Exception, match=f"{ABSENT} is not on PATH"):
        require_tool(ABSENT, "apt: nothing")


def test_a_missing_tool_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")

    with pytest.raises(pytest.fail.Exception, match="CI is set") as raised:
        require_tool(ABSENT, "apt: nothing")

    assert "install: apt: nothing" in str(raised.value)
