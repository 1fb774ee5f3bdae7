"""Symbolic answers (``answer_format: math``): is a returned value equivalent to a LaTeX gold?

Gold answers of MATH-style tasks are LaTeX (``\\frac{1}{2}``, ``2\\sqrt{3}``, ``(1, 2]``,
``50\\%``, ``\\pi``); programs return ints, floats, ``Fraction``s or strings. Grading:

1. The returned value is turned into text (:func:`value_text`): an int as digits, a
   ``Fraction`` as ``\\frac{p}{q}``, a finite float as its repr, a string as it is.
   Anything else (bool, None, NaN, objects) is wrong.
2. When both sides are plain numbers (integers, decimals, ``p/q`` or ``\\frac{p}{q}`` with
   integer parts), they are compared by the one numeric grader
   (:func:`ekt.data.grading.grade_value`), in this process: nothing is parsed.
3. Otherwise the pair goes to a helper process (``python -m ekt.data._symbolic_worker``)
   that parses both sides with math-verify (LaTeX and plain expressions, through sympy)
   and compares them. Model-written text is never parsed in the ekt process: the helper
   runs with an address-space limit, gets ``timeout`` seconds per pair (it is killed and
   restarted past that, and the pair is wrong), and text over ``MAX_CHARS`` characters or
   nested deeper than ``MAX_DEPTH`` brackets is wrong without being parsed. Answers are
   cached per (gold, value) pair.
"""

from __future__ import annotations

import importlib.util
import json
import re
from fractions import Fraction
from typing import Any

from ekt.data.grading import grade_value
from ekt.data.helper import HelperProcess
from ekt.errors import EktError

MAX_CHARS = 512  # longer returned text is wrong unparsed (no MATH answer comes close)
MAX_DEPTH = 12  # deeper {[( nesting is wrong unparsed
TIMEOUT_S = 3.0  # seconds the helper may spend on one pair
MEMORY_MB = 1024  # the helper's address-space limit

_INT = r"[-+]?\d+"
_DEC = r"[-+]?(?:\d+\.?\d*|\.\d+)"
_PLAIN = [
    re.compile(rf"^(?P<n>{_DEC})$"),
    re.compile(rf"^(?P<n>{_INT})\s*/\s*(?P<d>{_INT})$"),
    re.compile(rf"^(?P<s>-?)\\[dt]?frac\{{(?P<n>{_INT})\}}\{{(?P<d>{_INT})\}}$"),
]
_STRIP = re.compile(r"^\$+|\$+$|^\\\(|\\\)$|^\\\[|\\\]$")


def boxed_answer(text: str) -> str:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, else ``text``."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return text
    i = text.find("{", start)
    if i < 0:  # "\boxed 5"
        rest = text[start + len("\\boxed") :].strip()
        return rest.split("$")[0].strip() or text
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return text  # unbalanced: keep the whole field


def value_text(value: Any, type_name: str) -> str | None:
    """A sandbox value as answer text, or None when it cannot be an answer."""
    if type_name == "bool" or isinstance(value, bool) or value is None:
        return None
    if type_name == "Fraction":
        if isinstance(value, list) and len(value) == 2 and all(type(x) is int for x in value):
            num, den = value
            return None if den == 0 else (str(num) if den == 1 else f"\\frac{{{num}}}{{{den}}}")
        return None
    if type(value) is int:
        return str(value)
    if type(value) is float:
        return repr(value) if value == value and abs(value) != float("inf") else None
    if type(value) is str and type_name == "str":
        return value
    return None


def plain_number(text: str) -> Fraction | None:
    """The exact value of plain-number text (``12``, ``-0.5``, ``3/4``, ``\\frac{3}{4}``)."""
    t = _STRIP.sub("", text.strip()).strip().replace(",", "") if len(text) < 64 else ""
    for pat in _PLAIN:
        m = pat.match(t)
        if not m:
            continue
        try:
            if "d" not in m.groupdict():
                return Fraction(m["n"])
            num, den = int(m["n"]), int(m["d"])
            if den == 0:
                return None
            return -Fraction(num, den) if m.groupdict().get("s") else Fraction(num, den)
        except (ValueError, ZeroDivisionError):
            return None
    return None


def too_complex(text: str) -> bool:
    """True for text that is not parsed at all: too long or nested too deep."""
    if len(text) > MAX_CHARS:
        return True
    depth = deepest = 0
    for c in text:
        if c in "{[(":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "}])":
            depth -= 1
    return deepest > MAX_DEPTH


def grade_symbolic(value: Any, type_name: str, gold: str) -> bool:
    """True when the returned value is equivalent to the gold answer (see the module docstring)."""
    text = value_text(value, type_name)
    if text is None or not text.strip():
        return False
    gold_num = plain_number(gold)
    if gold_num is not None:
        if type_name != "str":  # a number, a Fraction: the numeric grader decides
            return grade_value(value, type_name, float(gold_num))
        num = plain_number(text)
        if num is not None:
            if num.denominator == 1 and gold_num.denominator == 1:
                return num == gold_num
            return grade_value(float(num), "float", float(gold_num))
    if too_complex(text) or too_complex(gold):
        return False
    return _judge().equal(gold, text)


class _Judge(HelperProcess):
    """The helper process that parses and compares with math-verify, one pair at a time."""

    def __init__(self, timeout: float = TIMEOUT_S):
        super().__init__("ekt.data._symbolic_worker", timeout, MEMORY_MB)

    def equal(self, gold: str, value: str) -> bool:
        return self.ask(json.dumps([gold, value])) == "1"


_JUDGE: _Judge | None = None


def _judge() -> _Judge:
    global _JUDGE
    if _JUDGE is None:
        if importlib.util.find_spec("math_verify") is None:
            raise EktError(
                "symbolic answers (answer_format: math) need math-verify: pip install 'ekt[math]'"
            )
        _JUDGE = _Judge()
    return _JUDGE
