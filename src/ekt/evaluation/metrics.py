"""The scorer: per-question outcomes -> the figures of a results table. Pure functions.

Every figure ekt reports (``scores.json``, results.json/.md, the report, the
matrix, the bootstrap intervals of ``ekt.evaluation.stats``) is the mean over
questions of a per-question score from ``question_scores``:

- ``pass@k``: the unbiased estimate ``pass_at_k(n, c, k)`` from the question's
  ``n`` samples of which ``c`` are correct;
- ``greedy_pass@1``: 1 when the greedy program is correct;
- ``maj@n``: 1 when the majority answer is correct.

Correctness itself (of a sample, of a greedy program, of a voted answer) is
decided by ``ekt.data.grading``, and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ekt.errors import EktError


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): the probability that at least one of k samples,
    drawn without replacement from n samples of which c are correct, is correct:

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


def question_scores(rows: Sequence[Mapping], ks: Sequence[int]) -> dict[str, list[float]]:
    """Per-question scores whose means are the table figures.

    ``rows`` are per-question records (``eval/<label>/problems.jsonl``): ``n``,
    ``c``, ``greedy_correct`` (None when no greedy decode was run) and
    ``majority_correct``. Keys: ``pass@k`` for each k, ``greedy_pass@1`` (only
    when every question has a greedy outcome) and ``maj@n`` (only when every
    question has the same n).
    """
    if not rows:
        raise EktError("no questions to score")
    out: dict[str, list[float]] = {}
    for k in ks:
        out[f"pass@{k}"] = [pass_at_k(int(r["n"]), int(r["c"]), k) for r in rows]
    greedy = [r.get("greedy_correct") for r in rows]
    if all(g is not None for g in greedy):
        out["greedy_pass@1"] = [float(bool(g)) for g in greedy]
    ns = {int(r["n"]) for r in rows}
    if len(ns) == 1:
        out[f"maj@{ns.pop()}"] = [float(bool(r["majority_correct"])) for r in rows]
    return out


def score_problems(rows: Sequence[Mapping], ks: Sequence[int]) -> dict:
    """The figures of one evaluated model: ``{"problems": N, "pass@k": ... for each k,
    "greedy_pass@1": ..., "maj@n": ..., "solved_any": questions with c > 0}``.

    ``greedy_pass@1`` is left out unless every question has a greedy outcome.
    Every question must have the same n >= max(ks).
    """
    if not rows:
        raise EktError("no questions to score")
    ns = sorted({int(r["n"]) for r in rows})
    if len(ns) != 1:
        raise EktError(f"questions have different sample counts {ns}; expected one n")
    out: dict = {"problems": len(rows)}
    for key, values in question_scores(rows, ks).items():
        out[key] = sum(values) / len(values)
    out["solved_any"] = sum(int(r["c"]) > 0 for r in rows)
    return out
