"""Argument checks shared by the library and the trainer.

Every check raises `ValueError` with the field name, the value and the allowed range, so that bad
input fails before anything is compiled or loaded. Each rule lives here once; the library calls it
with its argument names, the trainer's resolve step with the dotted config field names.

Scalar checks accept Python numbers and NumPy/JAX scalars. A value traced under `jax.jit` has no
value to check: the checks that say so (`allow_traced=True`) let it through and check it when it
is concrete.
"""

import itertools
import math
import numbers
from collections.abc import Sequence

import jax
import numpy as np


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


def check_interval(
    name: str,
    value: object,
    low: float,
    high: float,
    *,
    low_closed: bool = True,
    high_closed: bool = True,
    allow_traced: bool = False,
) -> object:
    """Returns `value` if it is a number in the interval (NaN is not), else raises `ValueError`.

    >>> check_interval("momentum", 0.9, 0.0, 1.0, high_closed=False)
    0.9
    >>> check_interval("momentum", 1.0, 0.0, 1.0, high_closed=False)
    Traceback (most recent call last):
    ...
    ValueError: momentum must be a number in [0, 1), got 1.0
    """
    if allow_traced and isinstance(value, jax.core.Tracer):
        return value
    scalar = _concrete_scalar(value)
    inside = (
        scalar is not None
        and (low <= scalar if low_closed else low < scalar)
        and (scalar <= high if high_closed else scalar < high)
    )
    if not inside:
        interval = f"{'[' if low_closed else '('}{low:g}, {high:g}{']' if high_closed else ')'}"
        raise ValueError(f"{name} must be a number in {interval}, got {_plain(value)!r}")
    return value


def check_in_unit_interval(name: str, value: object, *, allow_traced: bool = False) -> object:
    """Returns `value` if it lies in [0, 1] (NaN does not), else raises `ValueError`."""
    return check_interval(name, value, 0.0, 1.0, allow_traced=allow_traced)


def check_choice(name: str, value: object, allowed: Sequence[str]) -> str:
    """Returns `value` if it is one of `allowed`, else raises `ValueError` listing them."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def check_bool(name: str, value: object) -> bool:
    """Returns `value` if it is True or False, else raises `ValueError`."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_string(name: str, value: object) -> str:
    """Returns `value` if it is a non-empty string, else raises `ValueError`."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def check_increasing(name: str, values: object) -> tuple[float, ...]:
    """Returns `values` as a tuple if it is a sequence of finite numbers, each larger than the
    one before, else raises `ValueError`.

    >>> check_increasing("decay_epochs", [30, 60, 80])
    (30, 60, 80)
    """
    if (
        isinstance(values, str)
        or not isinstance(values, Sequence)
        or not all(_is_finite_number(v) for v in values)
        or any(b <= a for a, b in itertools.pairwise(values))
    ):
        raise ValueError(f"{name} must be strictly increasing finite numbers, got {values!r}")
    return tuple(values)


def check_learning_rate(name: str, value: object) -> object:
    """A learning rate: a finite number > 0, or a schedule whose value at step 0 is one.

    A schedule is called at step 0 (under `jax.jit` the value is traced and not checked).

    >>> check_learning_rate("learning_rate", -0.1)
    Traceback (most recent call last):
    ...
    ValueError: learning_rate must be a finite number > 0, got -0.1
    """
    if callable(value):
        first = value(0)
        if not isinstance(first, jax.core.Tracer):
            scalar = _concrete_scalar(first)
            if scalar is None or not math.isfinite(scalar) or scalar <= 0:
                raise ValueError(
                    f"{name} must be a schedule with a finite value > 0 at step 0, got "
                    f"{_plain(first)!r}"
                )
        return value
    if isinstance(value, jax.core.Tracer):
        return value
    scalar = _concrete_scalar(value)
    if scalar is None or not math.isfinite(scalar) or scalar <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {_plain(value)!r}")
    return value


def _concrete_scalar(value: object) -> float | None:
    """`value` as a float if it is a real number or a 0-d NumPy/JAX array, else None."""
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, np.ndarray | np.generic | jax.Array) and not isinstance(
        value, jax.core.Tracer
    ):
        array = np.asarray(value)
        if array.shape == () and np.issubdtype(array.dtype, np.number):
            return float(array)
    return None


def _plain(value: object) -> object:
    """A scalar array as its Python number, so messages read `1.5`, not `Array(1.5, ...)`."""
    if isinstance(value, np.ndarray | np.generic | jax.Array) and not isinstance(
        value, jax.core.Tracer
    ):
        array = np.asarray(value)
        if array.shape == ():
            return array.item()
    return value


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_finite_number(value: object) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )
