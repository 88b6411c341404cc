"""Checks of hyper-parameters, shared by every entry point.

Every public entry point (:func:`seven_jax.seven_mask`,
:func:`seven_jax.pruning_mask`, :func:`seven_jax.prune_before_finetuning`,
:func:`seven_jax.fixed_mask`, the experiment command lines) checks its
arguments with these functions, so the same mistake gets the same message
everywhere: a :class:`TypeError` for a value of the wrong kind (a string, a
bool where a number is meant, ``None``, a fractional step count) and a
:class:`ValueError` for a value out of range, both naming the argument and
what it allows.

Values traced by JAX (``optax.inject_hyperparams`` passes its hyper-parameters
as arrays, traced inside ``jax.jit``) cannot be checked when the function is
built: the checks return them unchanged, and the transformations clip them
into the valid range where they are used (see each docstring).

Pure Python and numpy: this module does not import JAX (a value can only be
a tracer once JAX has been imported by someone else).
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import Any, Iterable, Optional

import numpy as np

__all__ = [
  "is_traced",
  "check_range",
  "check_fraction",
  "check_int",
  "check_bool",
  "check_choice",
]


def is_traced(value) -> bool:
  """True for a JAX tracer (a value known only inside ``jit``/``grad``)."""
  jax = sys.modules.get("jax")
  if jax is None:
    return False
  return isinstance(value, jax.core.Tracer)


def _describe(value) -> str:
  if isinstance(value, str):
    return f"the string {value!r}"
  if value is None:
    return "None"
  return f"{value!r} ({type(value).__name__})"


def _scalar(name: str, value, what: str):
  """``value`` as a 0-d numpy array, or a TypeError naming ``name``."""
  if value is None or isinstance(value, (str, bytes)):
    raise TypeError(f"{name} must be {what}, got {_describe(value)}.")
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be {what}, got the bool {value!r}.")
  try:
    arr = np.asarray(value)
  except Exception:  # noqa: BLE001 - anything numpy cannot read is the wrong kind
    raise TypeError(f"{name} must be {what}, got {_describe(value)}.") from None
  if arr.ndim != 0 or arr.dtype.kind not in "iuf":
    if arr.dtype.kind == "b":
      raise TypeError(f"{name} must be {what}, got a bool array {value!r}.")
    raise TypeError(f"{name} must be {what}, got {_describe(value)}.")
  return arr


def _interval(low, high, low_open, high_open) -> str:
  return f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def check_range(
  name: str,
  value,
  low: float = -math.inf,
  high: float = math.inf,
  *,
  low_open: bool = False,
  high_open: bool = False,
):
  """A finite real number in the interval; returns it as a Python float.

  Traced values are returned unchanged. Raises :class:`TypeError` for
  strings, bools, ``None`` and arrays with more than one element, and
  :class:`ValueError` outside the interval or for NaN/inf.
  """
  if is_traced(value):
    return value
  where = _interval(low, high, low_open, high_open)
  arr = _scalar(name, value, f"a real number in {where}")
  v = float(arr)
  too_low = v <= low if low_open else v < low
  too_high = v >= high if high_open else v > high
  if not math.isfinite(v) or too_low or too_high:
    raise ValueError(f"{name} must be in {where}, got {value!r}.")
  return v


def check_fraction(
  name: str,
  value,
  low: float = 0.0,
  high: float = 1.0,
  *,
  low_open: bool = False,
  high_open: bool = True,
):
  """A number in ``[low, high)`` by default (a sparsity, an EMA rate)."""
  return check_range(name, value, low, high, low_open=low_open, high_open=high_open)


def check_int(name: str, value, minimum: Optional[int] = None, maximum: Optional[int] = None):
  """An integer, ``minimum <= value <= maximum``; returns a Python int.

  Integer-valued floats (``1000.0`` from a config file) are accepted;
  fractional ones (``2.5``, ``steps / 3``), bools, strings (also numeric
  ones such as ``"10"``) and ``None`` raise a :class:`TypeError`. Traced
  values are returned unchanged.
  """
  if is_traced(value):
    return value
  lo = "-inf" if minimum is None else str(minimum)
  hi = "inf" if maximum is None else str(maximum)
  what = f"an integer in [{lo}, {hi}]" if maximum is not None else f"an integer >= {lo}"
  if minimum is None and maximum is None:
    what = "an integer"
  arr = _scalar(name, value, what)
  if arr.dtype.kind == "f":
    v = float(arr)
    if not math.isfinite(v) or v != math.floor(v):
      raise TypeError(f"{name} must be {what}, got {value!r} (not a whole number).")
  iv = int(arr)
  if (minimum is not None and iv < minimum) or (maximum is not None and iv > maximum):
    raise ValueError(f"{name} must be {what}, got {value!r}.")
  return iv


def check_bool(name: str, value) -> bool:
  """``True`` or ``False`` (also numpy bools); strings such as ``"no"``,
  numbers and ``None`` raise a :class:`TypeError`."""
  if is_traced(value):
    raise TypeError(f"{name} must be a Python bool (static), got a traced value.")
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  arr = np.asarray(value) if not isinstance(value, (str, bytes)) and value is not None else None
  if arr is not None and arr.ndim == 0 and arr.dtype.kind == "b":
    return bool(arr)
  raise TypeError(f"{name} must be True or False, got {_describe(value)}.")


def check_choice(name: str, value: Any, choices: Iterable[Any]):
  """One of ``choices`` (compared with ``==``); returns it."""
  choices = tuple(choices)
  try:
    ok = any(value == c and type(value) is type(c) for c in choices)
  except Exception:  # noqa: BLE001 - arrays and odd objects are not choices
    ok = False
  if not ok:
    allowed = ", ".join(repr(c) for c in choices)
    raise ValueError(f"{name} must be one of {allowed}; got {_describe(value)}.")
  return value


def is_number(value) -> bool:
  """A real number (not a bool, not a string)."""
  return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
