"""Argument checks shared by the library and the trainer.

Every check raises `ValueError` with the field name, the value and the allowed range, so that bad
input fails before anything is compiled or loaded.
"""

import math
import numbers
from collections.abc import Sequence


def check_positive_int(name: str, value: object) -> int:
    """Returns `value` if it is an integer > 0, else raises `ValueError` naming `name`."""
    if not _is_integer(value) or value <= 0:
        raise ValueError(f"{name} must be an integer > 0, got {value!r}")
    return int(value)


def check_non_negative_int(name: str, value: object) -> int:
    """Returns `value` if it is an integer >= 0, else raises `ValueError` naming `name`."""
    if not _is_integer(value) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def check_positive(name: str, value: object) -> float:
    """Returns `value` as a float if it is a finite number > 0, else raises `ValueError`."""
    if not _is_finite_number(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_non_negative(name: str, value: object) -> float:
    """Returns `value` as a float if it is a finite number >= 0, else raises `ValueError`."""
    if not _is_finite_number(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_in_unit_interval(name: str, value: object) -> float:
    """Returns `value` as a float if it lies in [0, 1] (NaN does not), else raises `ValueError`."""
    if not _is_finite_number(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def check_choice(name: str, value: object, allowed: Sequence[str]) -> str:
    """Returns `value` if it is one of `allowed`, else raises `ValueError` listing them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value  # type: ignore[return-value]


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_finite_number(value: object) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )
