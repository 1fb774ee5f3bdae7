"""The adaptive budget's pure parts: rounds, when a question leaves, and the exact projection
(checked against a simulation that uses the same leaving rule)."""

import random

import pytest

from ekt.errors import EktError
from ekt.generation.budget import (
    expected_samples,
    projected_saving,
    rounds,
    satisfied,
    success_rates,
)


def test_rounds_cover_every_index_once_in_order():
    rs = rounds(10, 4)
    assert [list(r) for r in rs] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert rounds(3, 8) == [range(0, 3)]
    with pytest.raises(EktError):
        rounds(0, 4)
    with pytest.raises(EktError):
        rounds(4, 0)


@pytest.mark.parametrize(
    "args, want",
    [
        ((0, 4, 32), False),
        ((1, 4, 32), True),  # keep first: one correct is enough
        ((1, 4, 32, "all", 2), False),
        ((2, 4, 32, "all", 2), True),
        ((0, 32, 32), True),  # n reached
        ((0, 8, 32, "first", 1, 8), True),  # given up
        ((0, 4, 32, "first", 1, 8), False),
        ((1, 8, 32, "all", 3, 8), False),  # give-up only applies with no correct program
    ],
)
def test_satisfied(args, want):
    assert satisfied(*args) is want


def _simulate(p, n, r, keep, target, give_up, trials, rng):
    drawn = 0
    for _ in range(trials):
        correct = sampled = 0
        for rd in rounds(n, r):
            correct += sum(rng.random() < p for _ in rd)
            sampled = rd.stop
            if satisfied(correct, sampled, n, keep, target, give_up):
                break
        drawn += sampled
    return drawn / trials


@pytest.mark.parametrize(
    "p, n, r, keep, target, give_up",
    [
        (0.6, 32, 4, "first", 1, 0),
        (0.1, 20, 3, "first", 1, 0),
        (0.3, 16, 4, "all", 3, 0),
        (0.05, 32, 4, "first", 1, 8),
        (0.2, 24, 5, "all", 2, 10),
    ],
)
def test_expected_samples_matches_a_simulation_of_the_leaving_rule(p, n, r, keep, target, give_up):
    rng = random.Random(0)
    sim = _simulate(p, n, r, keep, target, give_up, 20000, rng)
    exact = expected_samples(p, n, r, keep, target, give_up)
    assert abs(sim - exact) < 0.02 * n, (sim, exact)


def test_expected_samples_closed_forms():
    # keep first, rounds of 4, n 32: 4 * sum_{r<8} (1-p)^(4r)
    p = 0.6
    want = 4 * sum((1 - p) ** (4 * r) for r in range(8))
    assert expected_samples(p, 32, 4) == pytest.approx(want)
    assert expected_samples(0.0, 32, 4) == 32  # never solved: every index drawn
    assert expected_samples(1.0, 32, 4) == 4  # solved in the first round
    assert expected_samples(0.0, 32, 4, give_up_after=8) == 8
    assert projected_saving([0.6] * 5, 32, 4) == pytest.approx(32 / want)
    assert projected_saving([0.0, 1.0], 32, 32) == 1.0  # one round is a full run


def test_bad_inputs():
    with pytest.raises(EktError):
        expected_samples(1.5, 32, 4)
    with pytest.raises(EktError):
        projected_saving([], 32, 4)
    with pytest.raises(EktError):
        satisfied(0, 0, 4, keep="some")
    assert success_rates([0, 3, 4], 4) == [0.0, 0.75, 1.0]
