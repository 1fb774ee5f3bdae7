"""The teacher's sampling budget: which sample indices a question gets, and what that costs.

``budget: full`` samples indices ``0 .. n-1`` for every question. ``budget:
adaptive`` samples them in rounds of ``round_size`` (``rounds``) and a question
leaves after the first round that leaves it ``satisfied``: with ``keep: first``
one correct program, with ``keep: all`` ``target`` distinct correct ones, or
``give_up_after`` samples without any correct one (when set), or all ``n``.
Every sample is seeded by (seed, question, index), so the indices a question
does get are the same samples a full run draws, and with ``keep: first`` (the
lowest correct index) the kept pairs are the same.

The expected cost is exact for a question whose samples are each correct with
probability ``p`` (independent draws): ``expected_samples`` sums, round by
round, the round's size times the probability that the question is still
active when the round starts. ``projected_saving`` turns per-question
probabilities (measured, or assumed) into full's samples over adaptive's. With
``keep: all`` the projection counts correct samples, not distinct programs
(an upper bound on how soon a question leaves). All functions are pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from math import comb
from typing import Any

from ekt.errors import EktError
from ekt.records import KEEP


@dataclass(frozen=True)
class AdaptiveBudget:
    """An adaptive budget's rule as ``generate`` applies it. The settings are declared (and
    documented, with their defaults) once, in the run config's ``teacher_sampling``
    (``ekt.pipeline.config.TeacherSampling``); this carries their values down."""

    round_size: int
    keep: str
    target: int
    give_up_after: int

    def __post_init__(self) -> None:
        if self.keep not in KEEP:
            raise EktError(f"keep must be one of {', '.join(KEEP)}, got {self.keep!r}")
        if self.round_size < 1 or self.target < 1 or self.give_up_after < 0:
            raise EktError(f"invalid adaptive budget {self}")

    def satisfied(self, correct: int, sampled: int, n: int) -> bool:
        return satisfied(correct, sampled, n, self.keep, self.target, self.give_up_after)

    def settings(self) -> dict:
        """What ``generate.json`` records of an adaptive job (a change refuses a resume)."""
        out: dict = {"budget": "adaptive", "round_size": self.round_size, "keep": self.keep}
        if self.keep == "all":  # keep: first never reads it
            out["target"] = self.target
        out["give_up_after"] = self.give_up_after
        return out


def rounds(n: int, round_size: int) -> list[range]:
    """The sample-index ranges of the rounds: ``[0, r), [r, 2r), ...`` up to ``n``."""
    if n < 1 or round_size < 1:
        raise EktError(f"rounds need n >= 1 and round_size >= 1, got {n=}, {round_size=}")
    return [range(a, min(a + round_size, n)) for a in range(0, n, round_size)]


def satisfied(
    correct: int,
    sampled: int,
    n: int,
    keep: str = "first",
    target: int = 1,
    give_up_after: int = 0,
) -> bool:
    """Whether a question with ``correct`` distinct correct programs among its first
    ``sampled`` samples needs no more."""
    if keep not in KEEP:
        raise EktError(f"keep must be one of {', '.join(KEEP)}, got {keep!r}")
    if sampled >= n:
        return True
    if correct >= (1 if keep == "first" else target):
        return True
    return bool(give_up_after) and correct == 0 and sampled >= give_up_after


def _binom_below(k: int, p: float, t: int) -> float:
    """P(Binomial(k, p) < t)."""
    return sum(comb(k, j) * p**j * (1 - p) ** (k - j) for j in range(min(t, k + 1)))


def expected_samples(
    p: float,
    n: int,
    round_size: int,
    keep: str = "first",
    target: int = 1,
    give_up_after: int = 0,
) -> float:
    """Expected samples an adaptive budget draws for a question each of whose samples is
    correct with probability ``p``."""
    if not 0 <= p <= 1:
        raise EktError(f"a success probability must be in [0, 1], got {p}")
    need = 1 if keep == "first" else target
    total = 0.0
    for r in rounds(n, round_size):
        k = r.start  # samples drawn before this round
        active = _binom_below(k, p, need)  # not yet satisfied by correct programs
        if give_up_after and k >= give_up_after and k > 0:
            active -= (1 - p) ** k  # ... and not given up (zero correct after enough samples)
        total += len(r) * max(active, 0.0)
    return total


def projected_saving(
    ps: Iterable[float],
    n: int,
    round_size: int,
    keep: str = "first",
    target: int = 1,
    give_up_after: int = 0,
) -> float:
    """Full's samples over adaptive's expected samples, for questions with success
    probabilities ``ps``."""
    ps = list(ps)
    if not ps:
        raise EktError("a projection needs at least one question")
    adaptive = sum(expected_samples(p, n, round_size, keep, target, give_up_after) for p in ps)
    return n * len(ps) / adaptive


def success_rates(correct: Sequence[int], n: int) -> list[float]:
    """Per-question success probabilities measured from ``correct`` of ``n`` samples each."""
    if n < 1:
        raise EktError("n must be >= 1")
    return [c / n for c in correct]


__all__ = [
    "AdaptiveBudget",
    "adaptive_budget",
    "expected_samples",
    "projected_saving",
    "rounds",
    "satisfied",
    "success_rates",
]


def adaptive_budget(sampling: Any, keep: str) -> AdaptiveBudget | None:
    """The adaptive budget of a ``teacher_sampling`` block (or one derived from it), for a
    filter that keeps ``keep``; None for ``budget: full``."""
    if getattr(sampling, "budget", "full") != "adaptive":
        return None
    return AdaptiveBudget(sampling.round_size, keep, sampling.target, sampling.give_up_after)
