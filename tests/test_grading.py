"""The one grading rule: float noise is right, every near miss is wrong, at every magnitude.

``NEAR_MISSES`` and ``NOISE`` are the table of issue 14; ``test_verify_and_vote_agree``
runs the same values through the real sandbox and verification and checks that
majority vote reaches the verdict verification wrote.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

from ekt.data.grading import as_number, gold_number, grade_value, majority_vote
from ekt.errors import EktError

MAGNITUDES = [1, 7, 12, 100, 1_000, 12_345, 10**6, 192_000_000, 10**9, 10**10, 10**11]
GOLDS_DEC = [0.25, 2.5, 12.75, 1234.56, 98765.43, 1_000_000.5, 123_456_789.25, 9_876_543_210.01]


def _near_misses() -> list[tuple[object, str, object, str]]:
    rows: list[tuple[object, str, object, str]] = []
    for g in MAGNITUDES + [999_999_999_999]:
        for sign in (1, -1):
            gold = sign * g
            rows += [
                (gold + 1, "int", gold, "off by +1"),
                (gold - 1, "int", gold, "off by -1"),
                (float(gold + 1), "float", gold, "off by +1 as float"),
                (float(gold - 1), "float", gold, "off by -1 as float"),
                (gold * 10, "int", gold, "x10"),
                (-gold, "int", gold, "wrong sign"),
                (gold + 1, "numpy.int64", gold, "off by 1 as numpy int"),
            ]
            if g <= 10**11:  # the tolerance nears 1 only as |gold| nears 1e12
                rows += [
                    ([2 * gold + 1, 2], "Fraction", gold, "off by 1/2 as Fraction"),
                    (float(gold) + 0.5, "numpy.float64", gold, "off by 1/2 as numpy float"),
                ]
    for g in GOLDS_DEC:
        for sign in (1, -1):
            gold = sign * g
            rows += [
                (gold + 0.01, "float", gold, "off by +0.01"),
                (gold - 0.01, "float", gold, "off by -0.01"),
                (float(Decimal(repr(gold)) + Decimal("0.01")), "Decimal", gold, "Decimal +0.01"),
                (round(gold), "int", gold, "rounded to an int"),
                (-gold, "float", gold, "wrong sign"),
                (gold * 10, "float", gold, "x10"),
            ]
    rows += [
        (True, "bool", 1, "bool True for 1"),
        (False, "bool", 0, "bool False for 0"),
        (True, "numpy.bool", 1, "numpy bool for 1"),
        ("72", "str", 72, "a string"),
        ("72", "int", 72, "a string dressed as an int"),
        (None, "NoneType", 0, "None"),
        ("nan", "float", 0, "NaN as the sandbox reports it"),
        (math.nan, "float", 0, "NaN"),
        (math.inf, "float", 0, "inf"),
        ("-inf", "float", 0, "-inf reported"),
        (10**400, "int", 1, "a huge int"),
        ([3, 0], "Fraction", 0, "a zero denominator"),
        ([1, 2, 3], "Fraction", 0.5, "a malformed Fraction"),
        (0.5, "Fraction", 0.5, "a float dressed as a Fraction"),
        (18, "Weird", 18, "an unknown type"),
        (0.0001, "float", 0, "1e-4 for 0"),
        (1e-6, "float", 0, "1e-6 for 0"),
        (0.1, "numpy.float32", 0.11, "float32 near miss"),
        (400_000.1, "float", 400_000, "off by 0.1 on an integer gold"),
        (18.01, "float", 18, "off by 0.01 on an integer gold"),
        (2.2501, "float", 2.25, "off by 1e-4 on a two-decimal gold"),
        (float(np.float32(1234.57)), "numpy.float32", 1234.56, "float32 of the next cent"),
        (192_000_016.0, "numpy.float32", 192_000_000, "the next float32"),
    ]
    return rows


def _noise() -> list[tuple[object, str, object, str]]:
    acc = 0.0
    for _ in range(10_000):
        acc += 0.1
    many = 0.0
    for v in [19.99, 5.01, 0.33] * 3_000:
        many += v
    rows: list[tuple[object, str, object, str]] = [
        (0.1 + 0.2, "float", 0.3, "0.1 + 0.2"),
        (1.1 * 3, "float", 3.3, "1.1 * 3"),
        (1e11 / 3 * 3, "float", 10**11, "1e11 / 3 * 3"),
        (acc, "float", 1000, "10,000 additions of 0.1"),
        (many, "float", 76000.0 + 20.0 * 3000 / 3000 * 0, "9,000 prices"),
        (0.1 + 0.2 - 0.3, "float", 0, "noise around 0"),
        (-0.0, "float", 0, "negative zero"),
        (12.75 * 100 / 100, "float", 12.75, "scaled and back"),
        (123_456_789.25 * 1.1 / 1.1, "float", 123_456_789.25, "2-decimal gold, scaled"),
        (9_876_543_210.01 * 3 / 3, "float", 9_876_543_210.01, "large decimal gold"),
        (float(np.float32(0.1)), "numpy.float32", 0.1, "0.1 computed in float32"),
        (float(np.float32(1234.56)), "numpy.float32", 1234.56, "1234.56 in float32"),
        (float(np.float32(2.5) * np.float32(3)), "numpy.float32", 7.5, "float32 arithmetic"),
        (float(np.float32(0.1)), "float", 0.1, "0.1 through float32, as a plain float"),
        (float(np.float32(1234.56)), "float", 1234.56, "1234.56 through float32, plain"),
        (float(np.float32(12.75) * np.float32(0.2)), "float", 2.55, "float32 product, plain"),
        (float(np.float32([0.1] * 10).sum()), "numpy.float32", 1, "a float32 sum"),
        (float(np.float64(0.7) * 3), "numpy.float64", 2.1, "numpy float64 noise"),
        (float(Decimal("0.1") * 3), "Decimal", 0.3, "a Decimal"),
        ([1, 4], "Fraction", 0.25, "a Fraction"),
        ([-5, 2], "Fraction", -2.5, "a negative Fraction"),
        (192_000_000, "int", 192_000_000.0, "an int for a float gold"),
        (10**9, "numpy.int64", 1e9, "numpy int for 1e9"),
    ]
    rows[4] = (many, "float", round(many, 2), "9,000 prices")  # gold: the exact decimal sum
    for g in MAGNITUDES:
        for sign in (1, -1):
            gold = sign * g
            rows += [
                (gold, "int", gold, "exact"),
                (float(gold) * (1 + 2**-52), "float", gold, "one ulp up"),
                (math.nextafter(float(gold), 0.0), "float", gold, "one ulp down"),
                (gold / 7 * 7, "float", gold, "divided and multiplied back"),
                (sum([gold / 10] * 10), "float", gold, "a sum of ten tenths"),
            ]
    return rows


NEAR_MISSES = _near_misses()
NOISE = _noise()


def test_many_prices_gold_is_the_exact_decimal_sum():
    """The noise table's '9,000 prices' row is against the true sum, so it tests something."""
    assert round(sum(Decimal(repr(v)) for v in [19.99, 5.01, 0.33] * 3_000), 2) == Decimal("75990")


@pytest.mark.parametrize("value,type_name,gold,why", NEAR_MISSES, ids=lambda x: str(x)[:24])
def test_near_misses_are_wrong(value, type_name, gold, why):
    assert grade_value(value, type_name, gold) is False, why


@pytest.mark.parametrize("value,type_name,gold,why", NOISE, ids=lambda x: str(x)[:24])
def test_float_noise_is_right(value, type_name, gold, why):
    assert grade_value(value, type_name, gold) is True, why


def test_off_by_one_wrong_up_to_1e12_and_noise_right_at_every_magnitude():
    for e in range(0, 12):
        for m in (1, 3, 9.99):
            gold = round(m * 10**e)
            assert not grade_value(gold + 1, "int", gold)
            assert not grade_value(float(gold - 1), "float", gold)
            assert grade_value(float(gold) * (1 + 4e-16), "float", gold)


def test_quantum_and_tolerance():
    from ekt.data.grading import quantum, tolerance

    assert quantum(Fraction(18)) == 1 and quantum(Fraction(9, 4)) == Fraction(1, 100)
    assert quantum(Fraction(1, 3)) == Fraction(1, 10**30)
    for e in range(12):  # below 1 up to 1e12; below 0.01 for a 2-decimal gold up to 1e10
        assert tolerance(Fraction(10**e)) < 1
        assert e >= 10 or tolerance(Fraction(10**e) + Fraction(1, 4)) < Fraction(1, 100)
    assert tolerance(Fraction(0)) == Fraction(1, 10**9)


def test_gold_forms():
    assert gold_number(0.1) == Fraction(1, 10)  # the decimal the dataset wrote
    assert gold_number(2.5) == Fraction(5, 2) and gold_number(-3) == -3
    assert gold_number(Decimal("0.25")) == Fraction(1, 4)
    assert gold_number(np.float64(1e9)) == 10**9
    assert grade_value(10**400, "int", 10**400) and not grade_value(1e300, "float", 10**400)
    for bad in (True, math.nan, math.inf, "18", None, [1, 2]):
        with pytest.raises(EktError, match="gold answer"):
            grade_value(18, "int", bad)


def test_as_number_is_exact():
    assert as_number(10**30 + 1, "int") == 10**30 + 1
    assert as_number([1, 3], "Fraction") == Fraction(1, 3)
    assert as_number(0.1, "float") == Fraction(0.1)
    assert as_number("5", "int") is None  # a string dressed as an int
    assert as_number(5, "str") is None
    assert as_number([1, 2, 3], "Fraction") is None


def test_majority_vote_groups_by_the_grading_rule():
    f = "float"
    # noise variants of one number are one vote, near misses are votes of their own
    assert majority_vote([(7, "int"), (0.1 + 0.2, f), (0.3, f), (0.30000000000000004, f)]) == (
        0.1 + 0.2,
        f,
    )
    assert majority_vote([(192000001, "int"), (192000000, "int"), (192000000.0, f)]) == (
        192000000,
        "int",
    )
    assert majority_vote([(1, "int"), (2, "int")]) == (1, "int")  # tie: first seen
    assert majority_vote([(2, "int"), (1, "int"), (1, "int"), (2, "int")]) == (2, "int")
    assert majority_vote([None, None]) is None and majority_vote([]) is None
    assert majority_vote([("nan", f), ("nan", f), (5, "int")]) == (5, "int")
    assert majority_vote([(math.inf, f), (True, "bool"), (True, "bool"), (4, "int")]) == (4, "int")
    assert majority_vote([("x", "str"), ("x", "str"), (-0.0, f), (0, "int")]) == (-0.0, f)
    assert majority_vote([([1, 2], "Fraction"), (0.5, f), (0.51, f)]) == ([1, 2], "Fraction")


def test_majority_vote_knows_every_noise_variant_of_the_gold():
    f = "float"
    f32 = float(np.float32(1234.56))
    votes = [(1234.57, f), (1234.57, f), (f32, "numpy.float32"), (1234.56, f), (1234.56, f)]
    assert majority_vote(votes, gold=1234.56) == (f32, "numpy.float32")  # 3 votes for the gold
    assert grade_value(*majority_vote(votes, gold=1234.56), 1234.56)
    # without the gold, float32 noise is its own group and the near miss wins the tie
    assert majority_vote(votes) == (1234.57, f)
    assert not grade_value(*majority_vote(votes[:3], gold=1234.56), 1234.56)


@pytest.mark.parametrize("value,type_name,gold,why", NEAR_MISSES + NOISE, ids=lambda x: str(x)[:24])
def test_vote_of_one_answer_is_graded_like_the_answer(value, type_name, gold, why):
    right = grade_value(value, type_name, gold)
    for voted in (
        majority_vote([(value, type_name)] * 3, gold),
        majority_vote([(value, type_name)]),
    ):
        assert (voted is not None and grade_value(*voted, gold)) is right


def _literal(value: object, type_name: str) -> str | None:
    """Python source that returns ``value`` with the reported type, or None if it has none."""
    if type_name in ("int", "float"):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return repr(value) if type(value).__name__ == type_name else None
    if type_name == "Fraction" and isinstance(value, list) and len(value) == 2 and value[1]:
        return f"__import__('fractions').Fraction({value[0]}, {value[1]})"
    if type_name == "Decimal" and isinstance(value, float):
        return f"__import__('decimal').Decimal({repr(value)!r})"
    if type_name.startswith("numpy.") and type_name != "numpy.bool":
        return f"__import__('numpy').{type_name[6:]}({value!r})"
    if type_name == "bool":
        return repr(value)
    if type_name == "str":
        return repr(value)
    return None


def test_verify_and_vote_agree(tmp_path):
    """The table through the real sandbox: verify's verdicts and the graded majority vote match,
    and both match the table."""
    from ekt.data.tasks import get_task
    from ekt.evaluation.evaluate import per_problem
    from ekt.sandbox.pool import SandboxConfig
    from ekt.verification.verify import verify

    cases = []
    for value, type_name, gold, why in NEAR_MISSES + NOISE:
        src = _literal(value, type_name)
        if src is None or isinstance(gold, bool) or not isinstance(gold, int | float):
            continue
        want = grade_value(value, type_name, gold)
        cases.append((src, gold, want, why))
    assert len(cases) > 300
    data = tmp_path / "data"
    data.mkdir()
    lines = [
        json.dumps({"question": f"case {i}: {why}", "answer": f"work\n#### {gold!r}"})
        for i, (_, gold, _, why) in enumerate(cases)
    ]
    (data / "test.jsonl").write_text("\n".join(lines) + "\n")
    (data / "train.jsonl").write_text(lines[0] + "\n")
    task = get_task("gsm8k", data_dir=str(data))
    programs = tmp_path / "programs.jsonl"
    with programs.open("w") as f:
        for i, (src, *_rest) in enumerate(cases):
            for s in range(3):  # three samples each: the vote sees three equal answers
                prog = f"def solution():\n    return {src}\n"
                f.write(
                    json.dumps({"problem_id": f"gsm8k/test/{i}", "sample_idx": s, "program": prog})
                    + "\n"
                )
    out = tmp_path / "executions.jsonl"
    verify(programs, out, task, sandbox=SandboxConfig(workers=1), progress=False)
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    problems = task.load("test")
    rows = {r["problem_id"]: r for r in per_problem(problems, recs, None)}
    for i, (src, gold, want, why) in enumerate(cases):
        row = rows[f"gsm8k/test/{i}"]
        assert row["c"] == 3 * want, (src, gold, why, row)
        assert row["majority_correct"] is want, (src, gold, why, row)


def test_fast_path_agrees_with_exact_rule_at_the_edge():
    """Values within a few ulps of gold +- tolerance, and bool-typed floats, graded as the
    exact rule says."""
    from ekt.data.grading import equal_answers, tolerance

    edges = 0
    for gold in (0, 0.3, -2.5, 18, 1234.56, 192_000_000, 10**11, 999_999_999_999):
        g = gold_number(gold)
        for base in (float(g + tolerance(g)), float(g - tolerance(g))):
            for k in range(-30, 31):
                v = base + k * math.ulp(base)
                want = equal_answers(Fraction(v), g)
                assert grade_value(v, "float", gold) is want, (gold, v)
                edges += want
        assert 0 < edges
    assert not grade_value(18.0, "numpy.bool", 18) and not grade_value(1.0, "bool", 1)
