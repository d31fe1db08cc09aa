"""Collecting field violations of a spec, and the checks every builder shares."""

from __future__ import annotations

import math
from collections.abc import Iterable

import keras
from google.protobuf.message import Message
from kerasrpc.service.errors import FieldViolation, InvalidArgument


class Violations:
    """The bad fields found so far in one spec, raised together at the end."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, path: str, description: str) -> None:
        """Record that the field at `path` is wrong."""
        self.items.append(FieldViolation(path, description))

    def extend(self, violations: Iterable[FieldViolation]) -> None:
        """Record violations found elsewhere."""
        self.items.extend(violations)

    def raise_if_any(self) -> None:
        """Raise InvalidArgument listing every violation, if there is one."""
        if self.items:
            raise InvalidArgument.fields(self.items)

    def positive(self, path: str, field: str, value: int) -> bool:
        """Check that an integer field is positive."""
        if value > 0:
            return True
        self.add(
            f"{path}.{field}", f"expected a positive integer, received {field}={value}"
        )
        return False

    def fraction(
        self, path: str, field: str, value: float, *, closed: bool = False
    ) -> bool:
        """Check that a float lies in [0, 1), or [0, 1] when `closed`."""
        upper_ok = value <= 1.0 if closed else value < 1.0
        if math.isfinite(value) and value >= 0.0 and upper_ok:
            return True
        bound = "[0, 1]" if closed else "[0, 1)"
        self.add(
            f"{path}.{field}", f"expected a number in {bound}, received {field}={value}"
        )
        return False

    def positive_float(self, path: str, field: str, value: float) -> bool:
        """Check that a float field is finite and positive."""
        if math.isfinite(value) and value > 0.0:
            return True
        self.add(
            f"{path}.{field}",
            f"expected a positive finite number, received {field}={value}",
        )
        return False

    def non_negative_float(self, path: str, field: str, value: float) -> bool:
        """Check that a float field is finite and not negative."""
        if math.isfinite(value) and value >= 0.0:
            return True
        self.add(
            f"{path}.{field}",
            f"expected a non-negative finite number, received {field}={value}",
        )
        return False

    def activation(self, path: str, field: str, name: str) -> bool:
        """Check that an activation name is one keras.activations knows."""
        if not name or is_activation(name):
            return True
        self.add(
            f"{path}.{field}",
            "expected an activation name keras.activations knows (such as "
            f"'relu', 'sigmoid', 'softmax', 'tanh'), received {field}={name!r}",
        )
        return False

    def oneof(self, message: Message, oneof: str, path: str) -> str | None:
        """Return the set field of a required oneof, recording it when unset."""
        try:
            return which_oneof(message, oneof, path)
        except InvalidArgument as error:
            self.extend(error.violations)
            return None

    def name(self, path: str, name: str) -> bool:
        """Check that a layer or model name is usable by Keras."""
        if "/" not in name:
            return True
        self.add(f"{path}.name", f"expected a name without '/', received name={name!r}")
        return False


def is_activation(name: str) -> bool:
    """Return whether keras.activations resolves this name."""
    try:
        keras.activations.get(name)
    except (ValueError, TypeError):
        return False
    return True


def which_oneof(message: Message, oneof: str, path: str) -> str:
    """Return the set field of a required oneof, or raise naming the choices."""
    kind: str | None = message.WhichOneof(oneof)
    if kind is not None:
        return kind

    choices = ", ".join(f.name for f in message.DESCRIPTOR.oneofs_by_name[oneof].fields)
    raise InvalidArgument.field(
        path, f"expected one of {choices} to be set, received none"
    )
