"""Read request specs from YAML or JSON files through the protobuf JSON mapping."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)


class SpecFileError(ValueError):
    """A spec file that cannot be read or does not match its message."""


def load_document(path: str | Path) -> dict[str, Any]:
    """Parse a .yaml, .yml or .json file into a mapping."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise SpecFileError(f"cannot read {file}: {error.strerror}") from None
    try:
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise SpecFileError(f"{file} is not valid YAML or JSON: {error}") from None
    if not isinstance(data, dict):
        raise SpecFileError(
            f"{file} expected a mapping at the top, received {type(data).__name__}"
        )
    return data


def parse_message(data: dict[str, Any], message: M, source: str = "spec") -> M:
    """Fill `message` from a mapping in the protobuf JSON mapping."""
    try:
        return json_format.ParseDict(data, message)
    except json_format.ParseError as error:
        raise SpecFileError(f"{source}: {error}") from None


def load_message(path: str | Path, message: M) -> M:
    """Read a YAML or JSON file into `message`."""
    return parse_message(load_document(path), message, str(path))
