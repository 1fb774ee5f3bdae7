import math
import random
from fractions import Fraction

import pytest

from ekt.errors import EktError
from ekt.evaluation.metrics import pass_at_k, question_scores, score_problems


def exact(n, c, k):
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


def test_matches_exact_comb_on_random_cases():
    rng = random.Random(0)
    for _ in range(2000):
        n = rng.randint(1, 200)
        c = rng.randint(0, n)
        k = rng.randint(1, n)
        assert pass_at_k(n, c, k) == pytest.approx(exact(n, c, k), abs=1e-12), (n, c, k)


@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (1, 0, 1, 0.0),
        (1, 1, 1, 1.0),
        (10, 0, 5, 0.0),
        (10, 10, 10, 1.0),
        (10, 6, 5, 1.0),
        (10, 1, 1, 0.1),
        (100, 1, 100, 1.0),
        (200, 3, 100, exact(200, 3, 100)),
        (4, 2, 2, 5 / 6),
        (200, 0, 200, 0.0),
        (200, 200, 1, 1.0),
        (200, 1, 1, 0.005),
        (7, 3, 7, 1.0),
    ],
)
def test_edge_cases(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_exhaustive_small_n_in_unit_interval_and_monotone():
    for n in range(1, 25):
        for c in range(0, n + 1):
            row = [pass_at_k(n, c, k) for k in range(1, n + 1)]
            assert all(0.0 <= v <= 1.0 for v in row)
            assert all(a <= b + 1e-12 for a, b in zip(row, row[1:])), (n, c)
            for k in range(1, n + 1):
                assert row[k - 1] == pytest.approx(exact(n, c, k), abs=1e-12)
                if c < n:
                    assert pass_at_k(n, c, k) <= pass_at_k(n, c + 1, k) + 1e-12
        assert pass_at_k(n, 1, 1) == pytest.approx(1 / n)


def test_monotone_in_k_and_c():
    for k in range(1, 20):
        assert pass_at_k(20, 3, k) <= pass_at_k(20, 3, k + 1) + 1e-15
    for c in range(0, 20):
        assert pass_at_k(20, c, 5) <= pass_at_k(20, c + 1, 5) + 1e-15


@pytest.mark.parametrize(
    "n,c,k,msg",
    [
        (5, 1, 6, "exceeds n=5"),
        (5, 6, 1, "between 0 and n"),
        (0, 0, 1, "n >= 1"),
        (5, 1, 0, "k must be >= 1"),
    ],
)
def test_refuses_invalid(n, c, k, msg):
    with pytest.raises(EktError, match=msg):
        pass_at_k(n, c, k)


def test_score_problems():
    rows = [
        {"problem_id": "a", "n": 4, "c": 2, "greedy_correct": True, "majority_correct": True},
        {"problem_id": "b", "n": 4, "c": 0, "greedy_correct": False, "majority_correct": False},
    ]
    s = score_problems(rows, ks=(1, 2, 4))
    assert s["problems"] == 2
    assert s["pass@1"] == pytest.approx(0.25)
    assert s["pass@2"] == pytest.approx((5 / 6) / 2)
    assert s["pass@4"] == pytest.approx(0.5)
    assert s["greedy_pass@1"] == pytest.approx(0.5)
    assert s["maj@4"] == pytest.approx(0.5)
    assert s["solved_any"] == 1
    # each figure is the mean of the per-question scores the bootstrap resamples
    per = question_scores(rows, (1, 2, 4))
    assert per["pass@2"] == pytest.approx([5 / 6, 0.0]) and per["maj@4"] == [1.0, 0.0]
    rows[1]["greedy_correct"] = None
    assert "greedy_pass@1" not in score_problems(rows, ks=(1,))
    with pytest.raises(EktError, match="exceeds n=4"):
        score_problems(rows, ks=(10,))
    with pytest.raises(EktError, match="different sample counts"):
        score_problems([rows[0], {**rows[1], "n": 5}], ks=(1,))
    with pytest.raises(EktError, match="no questions"):
        score_problems([], ks=(1,))
