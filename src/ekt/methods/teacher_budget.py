"""One teacher-token budget for every method (``teacher_token_budget`` of a run config).

A method's teacher tokens are those the teacher sampled for it plus those a live teacher
scored for it (``Cost.teacher_tokens_sampled + teacher_tokens_scored``). With a budget ``B``
no method spends more than ``B``:

* the methods that learn from the teacher's samples (ekt, kd, seq-kd) use a prefix of them
  in *spending order*: sample 0 of every training question (in the run's question order),
  then sample 1 of every question, and so on. Samples are seeded per question and index, so
  a prefix holding ``k`` samples of every question is what ``teacher_sampling.n: k`` would
  have drawn, and the cost billed is the prefix's tokens, not the whole shared sampling.
* a method whose teacher also scores (kd reads every training token with the teacher) takes
  the longest prefix whose samples *plus* that scoring fit (:func:`affordable`);
* on-policy distillation stops training before its teacher has scored more than ``B``.

GRPO and expert iteration use no teacher tokens, so the budget does not bind them (GRPO
started from the EKT student carries EKT's cost, which is within it).

Pure functions here; ``ekt.pipeline.run.Runner`` applies them to its run folder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ekt.records import write_jsonl_atomic

SampleKey = tuple[str, int]  # (problem_id, sample_idx)


@dataclass(frozen=True)
class Spent:
    """One teacher sample in spending order and the tokens it cost."""

    problem_id: str
    sample_idx: int
    n_tokens: int


def spending_order(samples: Iterable[Spent], question_order: Sequence[str]) -> list[Spent]:
    """Samples by index first, then by the question's place in ``question_order`` (ids the
    order does not know go last, by id): every question's sample 0, then every sample 1..."""
    rank = {pid: i for i, pid in enumerate(question_order)}
    late = len(rank)
    return sorted(
        samples, key=lambda s: (s.sample_idx, rank.get(s.problem_id, late), s.problem_id)
    )


def affordable(
    order: Sequence[Spent], budget: int, scored: Callable[[int], int] | None = None
) -> int:
    """The length of the longest prefix of ``order`` whose tokens plus ``scored(length)``
    (what the method's teacher would score training on that prefix; it never falls when the
    prefix grows) fit in ``budget``. Binary search: ``scored`` is called O(log n) times."""
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    spent = [0]
    for s in order:
        spent.append(spent[-1] + s.n_tokens)
    extra = scored or (lambda _n: 0)

    def fits(n: int) -> bool:
        return spent[n] <= budget and spent[n] + extra(n) <= budget

    lo, hi = 0, len(order)  # fits(lo) holds (an empty prefix scores nothing), find the last
    if not fits(0):
        return 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def chosen(order: Sequence[Spent], n: int) -> frozenset[SampleKey]:
    return frozenset((s.problem_id, s.sample_idx) for s in order[:n])


def tokens_of(order: Sequence[Spent], n: int) -> int:
    return sum(s.n_tokens for s in order[:n])


def write_subset(executions: Sequence[dict], keep: frozenset[SampleKey], out: Path) -> int:
    """Write the verified samples (records of ``executions``) that are in ``keep`` to
    ``out`` (atomically, in their order); how many."""
    rows = [o for o in executions if (o.get("problem_id"), o.get("sample_idx")) in keep]
    return write_jsonl_atomic(out, rows)
