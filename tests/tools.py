"""Command-line tools some tests run: skipped without them, required under CI."""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(name: str, install: str) -> str:
    """Return the path of tool `name`; skip the test without it, or fail under CI.

    Args:
        name: the command, e.g. "promtool".
        install: how to install it, shown in the skip or failure message.
    """
    path = shutil.which(name)
    if path is not None:
        return path

    missing = f"{name} is not on PATH (install: {install})"
    if os.environ.get("CI"):
        pytest.fail(f"{missing}; CI is set, so this test must run", pytrace=False)
    pytest.skip(missing)
