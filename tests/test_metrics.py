import math
import random
from fractions import Fraction

import pytest

from ekt.errors import EktError
from ekt.metrics import mean_pass_at_k, pass_at_k


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
    ],
)
def test_edge_cases(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


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


def test_mean():
    assert mean_pass_at_k([(4, 2), (4, 0)], 1) == pytest.approx(0.25)
