"""Scoring: the unbiased pass@k estimator (Chen et al. 2021) and majority vote. Pure functions.

``pass_at_k(n, c, k)`` is the probability that at least one of ``k`` samples
drawn without replacement from ``n`` generated samples, ``c`` of them correct,
is correct. ``majority_vote`` picks the most common numeric answer among a
question's samples (self-consistency). ``score_problems`` turns per-question
counts into the numbers a results table reports.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

from ekt.data.grading import ABS_TOL, REL_TOL
from ekt.errors import EktError

VOTE_DECIMALS = 6  # answers that agree to 1e-6 are one vote (well inside the grading tolerance)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples, drawn without replacement from n
    samples of which c are correct, is correct:

        pass@k = 1 - C(n - c, k) / C(n, k)

    computed as 1 - prod_{i = n-c+1}^{n} (1 - k / i), which never forms the huge
    binomials. Returns 1.0 when fewer than k samples are wrong and 0.0 when c = 0.
    """
    if n < 1:
        raise EktError(f"pass@k needs n >= 1 samples, got n={n}")
    if not 0 <= c <= n:
        raise EktError(f"correct count c={c} must be between 0 and n={n}")
    if k < 1:
        raise EktError(f"k must be >= 1, got {k}")
    if k > n:
        raise EktError(f"k={k} exceeds n={n} samples; pass@k needs n >= k")
    if c == 0:
        return 0.0
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """pass@k averaged over problems, from (n, c) per problem."""
    if not counts:
        raise EktError("no problems to score")
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)


def _vote_key(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    x = float(value)
    if not math.isfinite(x):
        return None
    return round(x, VOTE_DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0


def majority_vote(values: Sequence[float | None]) -> float | None:
    """The most common answer among one question's samples, or None when none is numeric.

    ``values`` are answers already normalised to floats by the caller; None, bools,
    NaN and infinities are ignored. Answers equal after rounding to 1e-6 count as
    one; a tie goes to the answer seen first. The returned value is the rounded one.
    """
    keys = [_vote_key(v) for v in values]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(k for k in keys if k is not None and counts[k] == best)


def is_correct(value: float | None, gold: float) -> bool:
    """Numeric answer equal to gold within the grading tolerance (see ``ekt.data.grading``)."""
    return value is not None and math.isclose(value, float(gold), rel_tol=REL_TOL, abs_tol=ABS_TOL)


def majority_accuracy(samples: Sequence[Sequence[float | None]], golds: Sequence[float]) -> float:
    """Fraction of questions whose majority answer is correct (maj@n); one row of samples each."""
    if len(samples) != len(golds):
        raise EktError(f"{len(samples)} questions of samples but {len(golds)} gold answers")
    if not golds:
        raise EktError("no problems to score")
    hits = sum(is_correct(majority_vote(vals), g) for vals, g in zip(samples, golds, strict=True))
    return hits / len(golds)


def score_problems(records: Sequence[Mapping], ks: Sequence[int] = (1,)) -> dict:
    """Table numbers from per-question records.

    Each record has ``n`` (samples), ``c`` (correct samples), ``greedy_correct``
    (bool, or None when no greedy decode was run) and ``majority_correct`` (bool).
    Returns ``{"problems": N, "pass@k": ... for each k, "greedy_pass@1": ...,
    "maj@n": ...}``; ``greedy_pass@1`` is left out unless every record has a greedy
    outcome. Every question must have the same n >= max(ks).
    """
    if not records:
        raise EktError("no problems to score")
    ns = {int(r["n"]) for r in records}
    if len(ns) != 1:
        raise EktError(f"questions have different sample counts {sorted(ns)}; expected one n")
    n = ns.pop()
    out: dict = {"problems": len(records)}
    for k in ks:
        out[f"pass@{k}"] = mean_pass_at_k([(int(r["n"]), int(r["c"])) for r in records], k)
    greedy = [r.get("greedy_correct") for r in records]
    if all(g is not None for g in greedy):
        out["greedy_pass@1"] = sum(bool(g) for g in greedy) / len(records)
    out[f"maj@{n}"] = sum(bool(r["majority_correct"]) for r in records) / len(records)
    return out
