"""Checks of the constructor arguments of the service's custom Keras classes."""

from __future__ import annotations

import math
import numbers


def check_units(owner: str, units: object) -> int:
    """Return `units` if it is a positive integer; otherwise raise ValueError."""
    if not isinstance(units, int) or isinstance(units, bool) or units <= 0:
        raise ValueError(
            f"{owner} expected a positive integer, received units={units!r}"
        )
    return units


def check_positive_number(name: str, value: object) -> float:
    """Return `value` as a float if it is finite and positive, else raise ValueError."""
    number = math.nan
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)

    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} expected a positive number, received {value!r}")
    return number
