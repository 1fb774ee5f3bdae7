"""Symbolic grading (answer_format: math): equivalent forms right, near misses wrong, hostile
strings answered within a bounded time, and nothing parsed in the ekt process."""

from __future__ import annotations

import time

import pytest

from ekt.data import symbolic
from ekt.data.symbolic import boxed_answer, grade_symbolic, plain_number, value_text

# (gold LaTeX, returned value, its sandbox type, expected)
TABLE = [
    # fractions
    ("\\frac{1}{2}", [1, 2], "Fraction", True),
    ("\\frac{1}{2}", 0.5, "float", True),
    ("\\frac{1}{2}", "1/2", "str", True),
    ("\\frac{1}{2}", "\\dfrac{2}{4}", "str", True),
    ("\\frac{1}{2}", [1, 3], "Fraction", False),
    ("\\frac{1}{2}", 0.51, "float", False),
    ("\\frac{2}{3}", 0.6666666666666666, "float", True),
    ("\\frac{2}{3}", 0.67, "float", False),
    ("-\\frac{3}{4}", [-3, 4], "Fraction", True),
    ("-\\frac{3}{4}", [3, 4], "Fraction", False),
    # integers and decimals
    ("42", 42, "int", True),
    ("42", 42.0, "float", True),
    ("42", "42", "str", True),
    ("42", 43, "int", False),
    ("42", "forty-two", "str", False),
    ("100000000000", 100000000001, "int", False),
    ("0.25", [1, 4], "Fraction", True),
    ("1,000", 1000, "int", True),
    # radicals
    ("\\sqrt{2}", "\\sqrt{2}", "str", True),
    ("\\sqrt{2}", "sqrt(2)", "str", True),
    ("\\sqrt{2}", 1.4142135623730951, "float", True),
    ("\\sqrt{2}", 1.41, "float", False),
    ("4\\sqrt{3}", "\\sqrt{48}", "str", True),
    ("4\\sqrt{3}", "4*sqrt(3)", "str", True),
    ("4\\sqrt{3}", "3\\sqrt{4}", "str", False),
    ("\\frac{\\sqrt{3}}{2}", "sqrt(3)/2", "str", True),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt{2}}{2}", "str", False),
    # pi
    ("9\\pi", "9\\pi", "str", True),
    ("9\\pi", "9*pi", "str", True),
    ("9\\pi", 28.274333882308138, "float", True),
    ("9\\pi", "9", "str", False),
    ("\\pi", 3.14, "float", False),
    # percentages
    ("50\\%", "50\\%", "str", True),
    ("50\\%", 0.5, "float", True),
    ("50\\%", 0.05, "float", False),
    # intervals
    ("(3, \\infty)", "(3, \\infty)", "str", True),
    ("(3, \\infty)", "(3,\\infty)", "str", True),
    ("(3, \\infty)", "[3, \\infty)", "str", False),
    ("(1, 2]", "(1,2]", "str", True),
    ("(1, 2]", "(1,2)", "str", False),
    # algebra
    ("(x+1)^2", "x^2+2x+1", "str", True),
    ("(x+1)^2", "x^2+1", "str", False),
    # wrong kinds of value
    ("1", True, "bool", False),
    ("0", None, "NoneType", False),
    ("1", float("nan"), "float", False),
    ("\\frac{1}{2}", "", "str", False),
]


@pytest.mark.parametrize("gold,value,type_name,expected", TABLE)
def test_symbolic_grading_table(gold, value, type_name, expected):
    assert grade_symbolic(value, type_name, gold) is expected


def test_table_is_large_and_balanced():
    assert len(TABLE) >= 40
    assert sum(e for *_, e in TABLE) >= 15 and sum(not e for *_, e in TABLE) >= 15


HOSTILE = [
    "10^{10^{10^{10}}}",
    "9**9**9**9",
    "{" * 400 + "1" + "}" * 400,
    "\\frac{" * 60 + "1" + "}{2}" * 60,
    "x" * 100_000,
    "\\sqrt{" * 30 + "2" + "}" * 30,
    "(" * 13 + "1" + ")" * 13,
    "2^{99999999}",
    "\\left(" * 50 + "1" + "\\right)" * 50,
    "factorial(10**9)",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_strings_are_wrong_within_bounded_time(value):
    t0 = time.monotonic()
    assert grade_symbolic(value, "str", "2") is False
    # the helper gets TIMEOUT_S per pair; a restart (the helper's import) may follow a kill
    assert time.monotonic() - t0 < symbolic.TIMEOUT_S + 30


def test_grading_still_works_after_a_timeout():
    assert grade_symbolic("10^{10^{10^{10}}}", "str", "7") is False
    assert grade_symbolic("\\sqrt{49}", "str", "7") is True


def test_plain_numbers_never_reach_the_helper(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("plain numbers must be compared in process, without parsing")

    monkeypatch.setattr(symbolic._Judge, "equal", refuse)
    assert grade_symbolic(7, "int", "7") and grade_symbolic("3/4", "str", "\\frac{3}{4}")
    assert not grade_symbolic(8, "int", "7")


def test_boxed_answer_takes_the_last_balanced_box():
    assert boxed_answer("so $x = \\boxed{3}$ or \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert boxed_answer("no box here") == "no box here"
    assert boxed_answer("\\boxed{\\{1, 2\\}}") == "\\{1, 2\\}"
    assert boxed_answer("\\fbox{5}") == "5"


def test_value_text_and_plain_number():
    assert (
        value_text([3, 4], "Fraction") == "\\frac{3}{4}" and value_text([3, 0], "Fraction") is None
    )
    assert value_text(True, "bool") is None and value_text(2.5, "float") == "2.5"
    assert plain_number("\\frac{-3}{4}") == plain_number("-3/4") == plain_number("-0.75")
    assert plain_number("\\sqrt{2}") is None and plain_number("$5$") == 5
