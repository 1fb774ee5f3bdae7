import math

import pytest

from ekt.data.grading import as_number, grade_value


@pytest.mark.parametrize(
    "value,type_name,gold,ok",
    [
        (72, "int", 72, True),
        (72.0, "float", 72, True),
        (10.000000000000002, "float", 10, True),
        (0.5, "float", 0.5, True),
        (-3, "int", -3, True),
        ([1, 2], "Fraction", 0.5, True),
        ([3, 0], "Fraction", 0, False),
        (18, "numpy.int64", 18, True),
        (18.0, "Decimal", 18, True),
        (71, "int", 72, False),
        (72.01, "float", 72, False),
        (True, "bool", 1, False),
        (False, "bool", 0, False),
        ("72", "str", 72, False),
        (None, "NoneType", 0, False),
        (None, "Weird", 72, False),
        (float("nan"), "float", 0, False),
        (math.inf, "float", 0, False),
        ("nan", "float", 0, False),
        (10**400, "int", 1, False),
    ],
)
def test_grade_value(value, type_name, gold, ok):
    assert grade_value(value, type_name, gold) is ok


def test_as_number_refuses_type_mismatch():
    assert as_number("5", "int") is None  # a string dressed as an int
    assert as_number(5, "str") is None
    assert as_number([1, 2, 3], "Fraction") is None
