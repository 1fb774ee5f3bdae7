"""Bootstrap intervals and paired differences on constructed data with known answers."""

import math
import random

import numpy as np
import pytest

from ekt.errors import EktError
from ekt.evaluation.metrics import question_scores, score_problems
from ekt.evaluation.stats import (
    SMALL_SAMPLE,
    Interval,
    bootstrap_means,
    metric_intervals,
    paired_intervals,
    pass_at_k_curve,
    sample_notes,
)


def bootstrap_mean(values, **kw) -> Interval:
    """One figure's interval: a one-column table through ``bootstrap_means``."""
    return bootstrap_means(np.asarray(values, dtype=float)[:, None], **kw)[0]


def paired_difference(a, b, **kw) -> Interval:
    """The bootstrap of per-question differences, as ``paired_intervals`` computes it."""
    return bootstrap_mean(np.subtract(a, b), **kw)


def _rows(cs, n=4, greedy=None, maj=None, prefix="q"):
    return [
        {
            "problem_id": f"{prefix}{i}",
            "n": n,
            "c": c,
            "greedy_correct": bool(greedy[i]) if greedy is not None else c > 0,
            "majority_correct": bool(maj[i]) if maj is not None else 2 * c > n,
        }
        for i, c in enumerate(cs)
    ]


def test_all_correct_and_all_wrong_collapse_to_a_point():
    for v in (1.0, 0.0, 0.1):
        iv = bootstrap_mean([v] * 250)
        assert (iv.estimate, iv.low, iv.high, iv.questions) == (v, v, v, 250)


def test_two_questions_exact_quantiles():
    # Resampled means of [0, 1] are 0, 0.5, 1 with probability 1/4, 1/2, 1/4: the 2.5% and
    # 97.5% quantiles are exactly 0 and 1.
    iv = bootstrap_mean([0.0, 1.0], resamples=4000)
    assert (iv.estimate, iv.low, iv.high) == (0.5, 0.0, 1.0)


def test_half_correct_matches_the_normal_approximation():
    # The bootstrap variance of a mean is the plug-in variance / n: 0.25 / 400, so the 95%
    # interval is 0.5 +- 1.96 * 0.025 = [0.451, 0.549] up to Monte Carlo and lattice error.
    iv = bootstrap_mean([1.0, 0.0] * 200, resamples=4000, seed=3)
    assert iv.estimate == 0.5
    half = 1.959964 * math.sqrt(0.25 / 400)
    assert iv.low == pytest.approx(0.5 - half, abs=0.006)
    assert iv.high == pytest.approx(0.5 + half, abs=0.006)


def test_seeded_and_deterministic():
    rng = random.Random(1)
    vals = [rng.random() for _ in range(60)]
    assert bootstrap_mean(vals, seed=5) == bootstrap_mean(vals, seed=5)
    assert bootstrap_mean(vals, seed=5) != bootstrap_mean(vals, seed=6)


def test_coverage_of_a_known_rate_in_a_seeded_simulation():
    rng = np.random.default_rng(0)
    p, n, reps = 0.3, 200, 300
    hits = 0
    for r in range(reps):
        data = (rng.random(n) < p).astype(float)
        iv = bootstrap_mean(data, resamples=500, seed=r)
        hits += iv.low <= p <= iv.high
    assert 0.90 <= hits / reps <= 0.985, hits / reps


def test_paired_difference_of_identical_methods_is_exactly_zero():
    rows = _rows([random.Random(2).randint(0, 4) for _ in range(150)])
    diffs = paired_intervals(rows, list(reversed(rows)), ks=[1, 4])
    assert set(diffs) == {"pass@1", "pass@4", "greedy_pass@1", "maj@4"}
    for iv in diffs.values():
        assert (iv.estimate, iv.low, iv.high, iv.questions) == (0.0, 0.0, 0.0, 150)


def test_paired_difference_known_cases():
    # a beats b by one whole question on every question: the difference is exactly 1.
    iv = paired_difference([1.0] * 50, [0.0] * 50)
    assert (iv.estimate, iv.low, iv.high) == (1.0, 1.0, 1.0)
    # a wins 100 of 400 questions and ties the rest: mean 0.25, sd sqrt(.25 * .75 / 400).
    a = [1.0] * 100 + [0.0] * 300
    b = [0.0] * 400
    iv = paired_difference(a, b, resamples=4000, seed=1)
    rows_a = _rows([4] * 100 + [0] * 300)  # the same through the production path
    via = paired_intervals(rows_a, _rows([0] * 400), ks=[1], resamples=4000, seed=1)["pass@1"]
    assert via == iv
    half = 1.959964 * math.sqrt(0.25 * 0.75 / 400)
    assert iv.estimate == 0.25
    assert iv.low == pytest.approx(0.25 - half, abs=0.006)
    assert iv.high == pytest.approx(0.25 + half, abs=0.006)


def test_pairing_cancels_question_difficulty():
    # Both methods solve the easy half; a also solves 10% of the hard half. Separately each
    # interval is ~+-7 points wide; the paired difference is much tighter.
    rng = random.Random(4)
    easy = [i < 100 for i in range(200)]
    a = [1.0 if e or rng.random() < 0.1 else 0.0 for e in easy]
    b = [1.0 if e else 0.0 for e in easy]
    d = paired_difference(a, b)
    ia, ib = bootstrap_mean(a), bootstrap_mean(b)
    assert d.estimate == pytest.approx(ia.estimate - ib.estimate)
    assert d.high - d.low < 0.5 * (ia.high - ia.low)
    assert d.low > 0  # the gain is significant when paired ...
    assert ia.low < ib.high  # ... though the separate intervals overlap


def test_pairs_are_matched_by_problem_id():
    a = _rows([4, 0, 4], prefix="q")
    b = _rows([0, 0], prefix="q")  # q2 missing: only q0, q1 are paired
    diffs = paired_intervals(list(reversed(a)), b, ks=[1])
    assert diffs["pass@1"].questions == 2 and diffs["pass@1"].estimate == 0.5
    assert paired_intervals(a, _rows([1], prefix="other"), ks=[1]) == {}


def test_metric_estimates_equal_the_table_figures():
    rng = random.Random(5)
    rows = _rows(
        [rng.randint(0, 10) for _ in range(120)],
        n=10,
        greedy=[rng.random() < 0.4 for _ in range(120)],
        maj=[rng.random() < 0.3 for _ in range(120)],
    )
    table = score_problems(rows, [1, 5, 10])
    ivs = metric_intervals(rows, [1, 5, 10])
    assert set(ivs) == {"pass@1", "pass@5", "pass@10", "greedy_pass@1", "maj@10"}
    for key, iv in ivs.items():
        assert iv.estimate == pytest.approx(table[key])
        assert iv.low <= iv.estimate <= iv.high
        assert iv.high - iv.low < 0.25


def test_greedy_left_out_when_not_run():
    rows = _rows([1, 2], greedy=[True, False])
    rows[0]["greedy_correct"] = None
    assert "greedy_pass@1" not in question_scores(rows, [1])


def test_pass_at_k_curve_is_monotone_and_matches_its_ends():
    rng = random.Random(6)
    cs = [rng.choice([0, 0, 1, 3, 8]) for _ in range(80)]
    rows = _rows(cs, n=8)
    curve = pass_at_k_curve(rows, resamples=500)
    assert len(curve) == 8
    est = [iv.estimate for iv in curve]
    assert all(x <= y + 1e-12 for x, y in zip(est, est[1:]))
    assert est[0] == pytest.approx(sum(cs) / (8 * len(cs)))
    assert est[-1] == pytest.approx(sum(c > 0 for c in cs) / len(cs))
    for iv in curve:
        assert iv.low <= iv.estimate <= iv.high


def test_small_samples_are_flagged_with_a_reason():
    (note,) = sample_notes(24)
    assert "small sample" in note and "24 questions" in note
    assert sample_notes(SMALL_SAMPLE) == []
    notes = sample_notes(300, successes=0)
    assert len(notes) == 1 and "[0, 0]" in notes[0] and "1.0%" in notes[0]
    notes = sample_notes(30, successes=30)
    assert len(notes) == 2 and "[1, 1]" in notes[1]
    assert sample_notes(300, successes=12) == []


def test_bad_input_stops_clearly():
    with pytest.raises(EktError, match="no questions"):
        bootstrap_mean([])
    with pytest.raises(EktError, match="no questions"):
        metric_intervals([], [1])
    with pytest.raises(EktError, match="resamples"):
        bootstrap_mean([1.0], resamples=0)
