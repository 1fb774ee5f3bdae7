"""Scoring: the unbiased pass@k estimator (Chen et al. 2021). Pure functions."""

from __future__ import annotations

from collections.abc import Sequence

from ekt.errors import EktError


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
