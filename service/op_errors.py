"""Readable summaries of the errors TensorFlow raises while running a model."""

from __future__ import annotations

import re
from typing import Any

# Lines TensorFlow and Keras wrap the reason in: headers, the call site, the
# Python stack of the op's definition (indented), and node references.
_WRAPPING = (
    "Graph execution error",
    "Detected at node",
    "Exception encountered when calling",
    "Arguments received by",
    "•",
    "File ",
    "[[",
)
_ANSI_STYLE = re.compile(r"\x1b\[[0-9;]*m")
_FUNCTION_NODE = re.compile(r"\{\{function_node [^}]*\}\}\s*")
_NODE_SUFFIX = re.compile(r"\s*(\[\[.*\]\])?\s*(\[Op:[^\]]*\])?\s*$")


def summarize_op_error(error: Any) -> str:
    """Return the line of a TensorFlow error that says what failed, plain.

    TensorFlow and Keras wrap the reason in headers, the stack where the op
    was defined and node names; the reason is the first line outside them.
    """
    text = _ANSI_STYLE.sub("", str(getattr(error, "message", error)))
    for line in text.splitlines():
        if not line.strip() or (line[0].isspace() and "[[" not in line):
            continue
        plain = _FUNCTION_NODE.sub("", line.strip())
        if plain.startswith(_WRAPPING):
            continue
        reason = _NODE_SUFFIX.sub("", plain.removesuffix("name:").rstrip()).strip()
        if reason:
            return reason
    return type(error).__name__
