"""Grading: pure functions, run in the ekt process on the plain values the sandbox reports.

A value is correct when it is numeric (int, float, Fraction, Decimal or a numpy
number; never bool), finite, and equal to the gold answer within a small
tolerance. Strings, None, NaN, inf and any other type are wrong.
"""

from __future__ import annotations

import math
from typing import Any

ABS_TOL = 1e-4
REL_TOL = 1e-6


def as_number(value: Any, type_name: str) -> float | None:
    """The float a sandbox value stands for, or None when it is not a finite number."""
    if type_name == "bool" or isinstance(value, bool):
        return None
    if type_name == "Fraction":
        if not (isinstance(value, list) and len(value) == 2):
            return None
        num, den = value
        if type(num) is not int or type(den) is not int or den == 0:
            return None
        x = num / den
    elif type(value) in (int, float) and (
        type_name in ("int", "float", "Decimal") or type_name.startswith("numpy.")
    ):
        try:
            x = float(value)
        except OverflowError:  # an int too large for a float cannot equal a GSM8K answer
            return None
    else:
        return None
    return x if math.isfinite(x) else None


def grade_value(value: Any, type_name: str, gold: float) -> bool:
    x = as_number(value, type_name)
    if x is None:
        return False
    return math.isclose(x, float(gold), rel_tol=REL_TOL, abs_tol=ABS_TOL)
