"""Checking model names and version numbers from requests."""

from __future__ import annotations

import re

from kerasrpc.service.errors import InvalidArgument

MAX_NAME_LENGTH = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_model_name(name: str, field: str = "model_name") -> None:
    """Raise InvalidArgument unless `name` is a valid model name.

    A valid name has 1-64 characters of letters, digits, '-', '_' and '.', and
    starts with a letter or digit, so it is also a safe directory name.
    """
    if _NAME.fullmatch(name) is None:
        raise InvalidArgument.field(
            field,
            f"expected 1-{MAX_NAME_LENGTH} letters, digits, '-', '_' or '.', "
            f"starting with a letter or digit, received {name!r}",
        )


def check_version(version: int, field: str = "version", *, latest: bool) -> None:
    """Raise InvalidArgument for a negative version, or 0 where it is refused."""
    if version > 0 or (latest and version == 0):
        return
    expected = "0 (the latest) or a version number" if latest else "a version number"
    raise InvalidArgument.field(
        field, f"expected {expected} (1 or more), received {version}"
    )
