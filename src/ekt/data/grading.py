"""Grading: the one rule that decides whether an answer equals the gold answer.

Every place that compares an answer with a gold answer (verification, majority
vote, pass@k, the report, the matrix) goes through this module, so they cannot
disagree.

A sandbox value counts as a number when it is an int, a float, a Fraction
(reported as ``[num, den]``), a Decimal (reported as its float) or a numpy
scalar; never a bool, never NaN or an infinity, never a string. It is read
*exactly*: an int stays an int of any size, a float is the binary fraction it
holds, and the comparison is done in exact rational arithmetic, so nothing
overflows or rounds on the way.

The rule::

    correct  <=>  |value - gold| <= max(ABS_TOL, rel_tol(type) * |gold|)

``ABS_TOL`` (1e-9) absorbs float noise near zero and the error of sums of many
small floats (``0.1 + 0.2``, ten thousand ``+= 0.1``). ``REL_TOL`` (1e-12)
absorbs the last few bits of a float64 result at large magnitudes
(``1e11 / 3 * 3``) while keeping the tolerance below 1 for every
``|gold| < 1e12``: an answer off by one is wrong at every magnitude a GSM8K
answer takes, and so is an answer off by 0.01 on a two-decimal gold (the
tolerance stays below 0.01 up to ``|gold| = 1e10``). A value the program
computed in numpy float32 or float16 cannot hold more than that type's bits, so
it is compared at that type's precision (a few units in its last place).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction
from numbers import Rational, Real
from typing import Any

from ekt.errors import EktError

ABS_TOL = Fraction(1, 10**9)  # absolute slack: float noise around small answers
REL_TOL = Fraction(1, 10**12)  # relative slack for float64 values: < 1 below |gold| = 1e12
# Values that were computed in a narrower float type carry that type's rounding:
# a few units in the last place of a 24-bit (float32) or 11-bit (float16) mantissa.
NARROW_REL_TOL = {"numpy.float32": Fraction(1, 2**21), "numpy.float16": Fraction(1, 2**8)}

_FLOAT_TYPES = ("float", "Decimal")  # Decimal arrives as its float


def as_number(value: Any, type_name: str) -> Fraction | None:
    """The exact number a sandbox value stands for, or None when it is not a finite number.

    ``type_name`` is the type the sandbox reported; a value whose JSON shape does
    not fit it (a string dressed as an int, a three-element "Fraction") is None.
    """
    if type_name in ("bool", "numpy.bool") or isinstance(value, bool):
        return None
    if type_name == "Fraction":
        if not (isinstance(value, list) and len(value) == 2):
            return None
        num, den = value
        if type(num) is not int or type(den) is not int or den == 0:
            return None
        return Fraction(num, den)
    numeric_type = type_name == "int" or type_name in _FLOAT_TYPES or type_name.startswith("numpy.")
    if not numeric_type:
        return None
    if type(value) is int:
        return Fraction(value)
    if type(value) is float and math.isfinite(value):
        return Fraction(value)
    return None


def gold_number(gold: Any) -> Fraction:
    """A gold answer as an exact number: a float gold means the decimal it prints as.

    Gold answers are decimals written in the dataset (``2.5``, ``0.25``, ``-3``,
    ``1000000000``); a float gold is read through its shortest repr, so ``0.1``
    is one tenth, not the binary fraction nearest it.
    """
    if isinstance(gold, bool):
        raise EktError(f"gold answer must be a number, got the bool {gold!r}")
    if isinstance(gold, int | Rational):
        return Fraction(gold)
    if isinstance(gold, Decimal):
        if not gold.is_finite():
            raise EktError(f"gold answer must be a finite number, got {gold!r}")
        return Fraction(gold)
    if isinstance(gold, float):
        if not math.isfinite(gold):
            raise EktError(f"gold answer must be a finite number, got {gold!r}")
        return Fraction(repr(float(gold)))  # float(): a numpy float64 reprs as np.float64(..)
    if isinstance(gold, Real):  # a numpy float, say
        return gold_number(float(gold))
    raise EktError(f"gold answer must be a number, got {type(gold).__name__} {gold!r}")


def tolerance(reference: Fraction, type_name: str = "float") -> Fraction:
    """How far a value of ``type_name`` may be from ``reference`` and still equal it."""
    rel = NARROW_REL_TOL.get(type_name, REL_TOL)
    return max(ABS_TOL, rel * abs(reference))


def equal_answers(x: Fraction, reference: Fraction, type_name: str = "float") -> bool:
    """``x`` (a value of ``type_name``) equals ``reference`` under the grading rule."""
    return abs(x - reference) <= tolerance(reference, type_name)


def grade_value(value: Any, type_name: str, gold: Any) -> bool:
    """True when the sandbox value ``value`` of type ``type_name`` is the gold answer."""
    g = gold_number(gold)
    x = as_number(value, type_name)
    return x is not None and equal_answers(x, g, type_name)


def majority_vote(answers: Sequence[tuple[Any, str] | None]) -> tuple[Any, str] | None:
    """The most common answer among one question's samples (self-consistency voting).

    ``answers`` are the sandbox's ``(value, type_name)`` of each sample, or None
    for a sample that did not run to a value. Non-numbers (strings, bools, NaN,
    None) get no vote. Answers are grouped by the grading rule: an answer joins
    the first group whose first answer it equals (``equal_answers``), so float
    noise variants of one number are one vote, and near misses are separate
    ones. The winner is the first answer of the largest group; a tie goes to the
    group seen first. Grade the result with ``grade_value(*winner, gold)``: the
    same function verification uses.
    """
    groups: list[tuple[Fraction, tuple[Any, str]]] = []
    sizes: list[int] = []
    for a in answers:
        if a is None:
            continue
        x = as_number(*a)
        if x is None:
            continue
        for i, (ref, (_, ref_type)) in enumerate(groups):
            if equal_answers(x, ref, ref_type):
                sizes[i] += 1
                break
        else:
            groups.append((x, (a[0], a[1])))
            sizes.append(1)
    if not groups:
        return None
    best = max(sizes)
    return groups[sizes.index(best)][1]


def answer_float(answer: tuple[Any, str] | None) -> float | None:
    """A voted answer as the float written to problems.jsonl (None when there is none)."""
    if answer is None:
        return None
    x = as_number(*answer)
    try:
        return None if x is None else float(x)
    except OverflowError:  # an int too large for a float: no GSM8K answer, shown as none
        return None
