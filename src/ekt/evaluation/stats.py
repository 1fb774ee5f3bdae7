"""Uncertainty for the results table: percentile bootstrap over questions. Pure functions.

The unit of resampling is the question: a table figure is a mean over
questions of a per-question score (the unbiased pass@k estimate from its
``n``/``c``, 0/1 for greedy correctness, 0/1 for a correct majority answer),
so the interval answers "how much would this figure move on another draw of
questions like these?". Samples within a question are not resampled: their
randomness is already folded into the per-question estimate.

- ``bootstrap_means(table)``: each column's mean and its 95% percentile
  interval from ``resamples`` resamples of the questions (rows) with
  replacement, seeded; ``metric_intervals`` applies it to a model's figures.
- ``paired_intervals(a, b)``: the mean of per-question differences ``a - b``
  on the questions both answered, bootstrapped by resampling questions, so that
  both methods see the same resampled set. This is much tighter than comparing
  two separate intervals, because question difficulty cancels.
- ``sample_notes(...)``: plain-language flags for figures that should not be
  read at face value (few questions; nothing or everything solved).

Everything is deterministic given ``seed``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from ekt.errors import EktError
from ekt.evaluation.metrics import pass_at_k, question_scores

_pass_at_k = lru_cache(maxsize=1 << 16)(pass_at_k)  # many questions share one (n, c)

RESAMPLES = 2000
LEVEL = 0.95
SEED = 0
SMALL_SAMPLE = 100  # fewer questions than this: intervals are flagged as unreliable
_CHUNK = 256  # resamples per block, so memory stays ~ _CHUNK x questions


@dataclass(frozen=True)
class Interval:
    """A figure with its percentile-bootstrap interval over ``questions`` questions."""

    estimate: float
    low: float
    high: float
    questions: int
    level: float = LEVEL

    def as_dict(self) -> dict:
        return asdict(self)


def _weights(n: int, resamples: int, seed: int):
    """Yield blocks of resample weights (counts of each question), shape (block, n)."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < resamples:
        b = min(_CHUNK, resamples - done)
        idx = rng.integers(0, n, size=(b, n))
        flat = (np.arange(b)[:, None] * n + idx).ravel()
        yield np.bincount(flat, minlength=b * n).reshape(b, n).astype(float)
        done += b


def bootstrap_means(
    values: np.ndarray | Sequence[Sequence[float]],
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> list[Interval]:
    """Percentile bootstrap for several per-question scores at once.

    ``values`` has one row per question and one column per figure; every column
    is resampled with the same question draws (so curves over k stay coherent).
    Returns one Interval per column: the plain mean and the (1-level)/2 and
    (1+level)/2 quantiles of the resampled means.
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 2:
        raise EktError(f"expected a questions x figures table, got shape {v.shape}")
    n, m = v.shape
    if n == 0:
        raise EktError("no questions to bootstrap")
    if resamples < 1:
        raise EktError(f"resamples must be >= 1, got {resamples}")
    if not 0 < level < 1:
        raise EktError(f"level must be between 0 and 1, got {level}")
    means = np.concatenate([w @ v / n for w in _weights(n, resamples, seed)])  # (resamples, m)
    alpha = (1 - level) / 2
    lo = np.quantile(means, alpha, axis=0)
    hi = np.quantile(means, 1 - alpha, axis=0)
    est = v.mean(axis=0)
    # Means of resamples lie within the data's range and the interval around the estimate;
    # clamp away the last-bit drift of floating-point sums (so all-equal data gives a point).
    vmin, vmax = v.min(axis=0), v.max(axis=0)
    lo = np.minimum(np.clip(lo, vmin, vmax), est)
    hi = np.maximum(np.clip(hi, vmin, vmax), est)
    est = np.clip(est, vmin, vmax)
    return [Interval(float(est[j]), float(lo[j]), float(hi[j]), n, level) for j in range(m)]


# -- intervals for the figures of ekt.evaluation.metrics (per-question scores) ----------


def metric_intervals(
    rows: Sequence[Mapping],
    ks: Sequence[int],
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> dict[str, Interval]:
    """Every table figure of one model with its interval, all from the same question draws."""
    scores = question_scores(rows, ks)
    names = list(scores)
    table = np.array([scores[k] for k in names]).T
    return dict(zip(names, bootstrap_means(table, resamples, seed, level), strict=True))


def pass_at_k_curve(
    rows: Sequence[Mapping],
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> list[Interval]:
    """pass@k for k = 1..n (n: the smallest per-question sample count), with intervals."""
    if not rows:
        raise EktError("no questions to score")
    n = min(int(r["n"]) for r in rows)
    if n < 1:
        return []
    table = np.array(
        [[_pass_at_k(int(r["n"]), int(r["c"]), k) for k in range(1, n + 1)] for r in rows]
    )
    return bootstrap_means(table, resamples, seed, level)


def paired_intervals(
    rows_a: Sequence[Mapping],
    rows_b: Sequence[Mapping],
    ks: Sequence[int],
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> dict[str, Interval]:
    """Paired differences a - b for every figure both have, on the questions both answered.

    Questions are matched by ``problem_id``; the count actually paired is each
    Interval's ``questions``. Returns {} when no question is shared.
    """
    b_by = {r["problem_id"]: r for r in rows_b}
    a_rows = [r for r in rows_a if r["problem_id"] in b_by]
    if not a_rows:
        return {}
    b_rows = [b_by[r["problem_id"]] for r in a_rows]
    sa, sb = question_scores(a_rows, ks), question_scores(b_rows, ks)
    names = [k for k in sa if k in sb]
    if not names:
        return {}
    table = np.array([np.subtract(sa[k], sb[k]) for k in names]).T
    return dict(zip(names, bootstrap_means(table, resamples, seed, level), strict=True))


def sample_notes(questions: int, successes: float | None = None) -> list[str]:
    """Reasons a figure over ``questions`` questions should be read with care.

    ``successes`` is the total per-question score (mean x questions) when known:
    at 0 or at ``questions`` every resample is identical, so the interval
    collapses to a point; the rule of three gives the honest one-sided bound.
    """
    notes = []
    if questions < SMALL_SAMPLE:
        notes.append(
            f"small sample: {questions} questions (< {SMALL_SAMPLE}); percentile bootstrap "
            "intervals are unreliable and tend to be too narrow at this size"
        )
    if successes is not None and questions > 0:
        bound = min(1.0, 3 / questions)
        if successes <= 0:
            notes.append(
                f"nothing solved: the bootstrap interval collapses to [0, 0]; with {questions} "
                f"questions the true rate could still be up to ~{bound:.1%} (rule of three, 95%)"
            )
        elif successes >= questions:
            notes.append(
                f"everything solved: the bootstrap interval collapses to [1, 1]; with "
                f"{questions} questions the true rate could still be as low as ~{1 - bound:.1%}"
            )
    return notes
