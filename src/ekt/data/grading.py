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

    correct  <=>  |value - gold| <= tolerance(gold)
    tolerance(g) = max(ABS_TOL, REL_TOL * |g|, min(FLOAT32_REL * |g|, quantum(g) / 100))

- ``ABS_TOL`` (1e-9) absorbs float noise near zero (``0.1 + 0.2 - 0.3``) and
  the error of sums of many small floats.
- ``REL_TOL`` (1e-12) absorbs the last bits of a float64 result at large
  magnitudes (``1e11 / 3 * 3``) while keeping the tolerance below 1 for every
  ``|gold| < 1e12``.
- The last term lets a value that went through float32 (a numpy float32 sum,
  say) pass, but never by more than a hundredth of the gold's last written
  decimal place (``quantum``: 1 for an integer gold, 0.01 for ``2.25``), so
  it can never reach a near miss.

So an answer off by one is wrong at every magnitude below 1e12, an answer off
by 0.01 on a two-decimal gold is wrong below 1e10, and a wrong sign, a factor of
ten, a bool, NaN, an infinity or a string is always wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache
from numbers import Rational, Real
from typing import Any

from ekt.errors import EktError

ABS_TOL = Fraction(1, 10**9)  # absolute slack: float noise around small answers
REL_TOL = Fraction(1, 10**12)  # relative slack for float64 values: < 1 below |gold| = 1e12
FLOAT32_REL = Fraction(1, 2**22)  # a few float32 roundings (24-bit mantissa) ...
QUANTUM_SHARE = Fraction(1, 100)  # ... capped at this share of the gold's last decimal place
_MAX_DECIMALS = 30

_FLOAT_TYPES = ("float", "Decimal")  # Decimal arrives as its float


def _numeric_type(type_name: str) -> bool:
    """A type the sandbox reports a number as; a bool is never a number."""
    if type_name in ("bool", "numpy.bool"):
        return False
    return type_name == "int" or type_name in _FLOAT_TYPES or type_name.startswith("numpy.")


def as_number(value: Any, type_name: str) -> Fraction | None:
    """The exact number a sandbox value stands for, or None when it is not a finite number.

    ``type_name`` is the type the sandbox reported; a value whose JSON shape does
    not fit it (a string dressed as an int, a three-element "Fraction") is None.
    """
    if isinstance(value, bool):
        return None
    if type_name == "Fraction":
        if not (isinstance(value, list) and len(value) == 2):
            return None
        num, den = value
        if type(num) is not int or type(den) is not int or den == 0:
            return None
        return Fraction(num, den)
    if not _numeric_type(type_name):
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


def quantum(reference: Fraction) -> Fraction:
    """The place of the last decimal a number is written with: 1 for 18, 1/100 for 2.25.

    A number with no finite decimal form (1/3) counts as written to ``_MAX_DECIMALS``.
    """
    den, twos, fives = reference.denominator, 0, 0
    while den % 2 == 0:
        den, twos = den // 2, twos + 1
    while den % 5 == 0:
        den, fives = den // 5, fives + 1
    decimals = max(twos, fives) if den == 1 else _MAX_DECIMALS
    return Fraction(1, 10 ** min(decimals, _MAX_DECIMALS))


@lru_cache(maxsize=1 << 14)  # one per gold answer (and per vote group): computed once
def tolerance(reference: Fraction) -> Fraction:
    """How far a value may be from ``reference`` (a gold answer) and still equal it."""
    size = abs(reference)
    return max(ABS_TOL, REL_TOL * size, min(FLOAT32_REL * size, quantum(reference) * QUANTUM_SHARE))


def equal_answers(x: Fraction, reference: Fraction) -> bool:
    """``x`` equals ``reference`` under the grading rule (the tolerance is the reference's)."""
    return abs(x - reference) <= tolerance(reference)


@lru_cache(maxsize=1 << 14)
def _gold(kind: type, gold: Any) -> tuple[Fraction, Fraction, float, float]:
    """A gold answer's exact value and tolerance, and both as floats (for the fast path)."""
    g = gold_number(gold)
    tol = tolerance(g)
    try:
        return g, tol, float(g), float(tol)
    except OverflowError:  # beyond any float: the fast path's bounds are never met
        return g, tol, math.inf, math.inf


_EPS = 2.0**-52


def grade_value(value: Any, type_name: str, gold: Any) -> bool:
    """True when the sandbox value ``value`` of type ``type_name`` is the gold answer."""
    try:
        g, tol, gf, tf = _gold(type(gold), gold)
    except TypeError:  # unhashable: not a number, gold_number says why
        g, tol, gf, tf = _gold(float, gold_number(gold))
    if type(value) is float and math.isfinite(value) and _numeric_type(type_name):
        # Fast path, sound: the float difference is within a few ulps of the exact one, so
        # only a value at the edge of the tolerance needs the exact comparison below.
        d, slack = abs(value - gf), 8 * _EPS * (abs(value) + abs(gf))
        if d > tf + slack:
            return False
        if d < tf - slack:
            return True
    x = as_number(value, type_name)
    return x is not None and abs(x - g) <= tol


def majority_vote(
    answers: Sequence[tuple[Any, str] | None], gold: Any = None
) -> tuple[Any, str] | None:
    """The most common answer among one question's samples (self-consistency voting).

    ``answers`` are the sandbox's ``(value, type_name)`` of each sample, or None
    for a sample that did not run to a value; non-numbers (strings, bools, NaN,
    None) get no vote. Answers are grouped by the grading rule: with ``gold``,
    every answer that ``grade_value`` accepts is one group (so float-noise
    variants of the gold are one vote), and any other answer joins the first
    group whose first answer it equals (``equal_answers``), so near misses are
    votes of their own. The winner is the first answer of the largest group; a
    tie goes to the group seen first. ``grade_value(*winner, gold)`` is then
    True exactly when the gold's group won.
    """
    g = None if gold is None else gold_number(gold)
    exact: dict[Fraction, int] = {}  # a number seen before: its group, without a search
    firsts: list[tuple[Any, str]] = []  # each group's first answer
    refs: list[Fraction | None] = []  # each group's first number; None for the gold's group
    sizes: list[int] = []
    for a in answers:
        x = None if a is None else as_number(*a)
        if a is None or x is None:
            continue
        i = exact.get(x)
        if i is None:
            if g is not None and equal_answers(x, g):
                i = next((j for j, r in enumerate(refs) if r is None), None)
                ref = None
            else:
                i = next(
                    (j for j, r in enumerate(refs) if r is not None and equal_answers(x, r)), None
                )
                ref = x
            if i is None:
                i = len(sizes)
                firsts.append((a[0], a[1]))
                refs.append(ref)
                sizes.append(0)
            exact[x] = i
        sizes[i] += 1
    if not sizes:
        return None
    return firsts[sizes.index(max(sizes))]


def answer_float(answer: tuple[Any, str] | None) -> float | None:
    """A voted answer as the float written to problems.jsonl (None when there is none)."""
    if answer is None:
        return None
    x = as_number(*answer)
    try:
        return None if x is None else float(x)
    except OverflowError:  # an int too large for a float: no GSM8K answer, shown as none
        return None
