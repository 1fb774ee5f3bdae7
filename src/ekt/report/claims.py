"""The paper's claims, checked on a run's per-question records. Pure functions.

A claim compares two evaluated models of one run, ``left`` and ``right``: each
side is a method (``"ekt"``, ``"kd"``, ...), ``TEACHER`` (the few-shot teacher)
or ``BEST_STUDENT``. ``CLAIMS`` declares them as data; a later claim is one more
``Claim`` line, nothing else changes.

For each claim:

- the paired difference ``left - right`` per question, averaged over the
  questions both models answered (matched by ``problem_id``), with a 95%
  percentile bootstrap interval that resamples the same questions for both
  sides (``ekt.evaluation.stats.paired_intervals``, seeded, so the section is
  the same on every rebuild). Figures: ``pass@1`` and ``pass@k`` for every k of
  the run up to the smallest sample count n of the paired questions (the
  unbiased per-question estimates), and ``greedy_pass@1`` when both models have
  a greedy outcome for every paired question. Majority vote is left out.
- a verdict on the **primary metric**: ``pass@1`` from the samples when both
  models have at least one sample per paired question, else ``greedy_pass@1``.
  Sampled pass@1 averages n programs per question, so it is the less noisy of
  the two; greedy is the fallback for runs evaluated without samples.

  ``SUPPORTED``: the interval lies entirely above 0; ``CONTRADICTED``: entirely
  below 0; ``NOT_DISTINGUISHABLE``: it contains 0 (at this scale: more
  questions may still separate them). ``NOT_RUN``: a side's method was not
  evaluated in the run (absent or skipped); no figures. ``NOT_COMPARABLE``: both
  sides ran but share no question, or have no figure in common.

``BEST_STUDENT`` is the trained student (any method but the few-shot teacher
and the untrained base student) with the highest pass@1 estimate over its own
questions (sampled pass@1 when every candidate has samples, else greedy
pass@1); a tie goes to the model listed first in the run. Which one it was is
part of the result.

``run_claims`` gives results.json its ``claims`` section (``ekt.report.build``);
``ekt.report.tables.claims_lines`` renders it in results.md and
``templates/claims.html.j2`` in report.html (a row group per run), both
wording each decided verdict "... at this scale".

Public: ``Claim``, ``CLAIMS``, ``ClaimResult``, ``BestStudent``,
``best_student``, ``check_claim``, ``check_claims``, ``verdict_of``,
``run_claims`` (a loaded run -> the results.json section).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ekt.evaluation.metrics import question_scores
from ekt.evaluation.stats import LEVEL, RESAMPLES, SEED, Interval, paired_intervals
from ekt.report.load import RunData

TEACHER = "teacher"
BEST_STUDENT = "best student"
UNTRAINED = ("few-shot", "none")  # the teacher's and the base student's methods

SUPPORTED = "supported"
CONTRADICTED = "contradicted"
NOT_DISTINGUISHABLE = "not distinguishable"
NOT_RUN = "not run"
NOT_COMPARABLE = "not comparable"

PRIMARY = "pass@1"
FALLBACK = "greedy_pass@1"


@dataclass(frozen=True)
class Claim:
    """One claim: ``left`` does better than ``right`` (both: a method, TEACHER or BEST_STUDENT)."""

    name: str  # its key in results.json
    left: str
    right: str
    text: str  # the claim in words, as the paper makes it
    left_name: str = ""  # how the rendered section names each side ("" -> the side itself)
    right_name: str = ""
    optional: bool = False  # left out of a run that neither evaluated nor skipped its right side

    def side_names(self) -> tuple[str, str]:
        return self.left_name or self.left, self.right_name or self.right


CLAIMS: tuple[Claim, ...] = (
    Claim(
        "ekt_vs_kd",
        "ekt",
        "kd",
        "EKT gives the student more than knowledge distillation",
        "EKT",
        "KD",
    ),
    Claim(
        "ekt_vs_expert_iteration",
        "ekt",
        "expert-iteration",
        "EKT gives the student more than expert iteration",
        "EKT",
        "expert iteration",
    ),
    Claim(
        "best_student_vs_teacher",
        BEST_STUDENT,
        TEACHER,
        "the best student outperforms its few-shot teacher",
    ),
    Claim(
        "ekt_vs_base",
        "ekt",
        "none",
        "EKT makes the student better than it was (the check every run must pass)",
        "EKT",
        "base student",
    ),
    # the methods compared against today (issue 28), as paired differences against EKT on
    # the same questions; shown only for runs that trained that method
    Claim("ekt_vs_grpo", "ekt", "grpo",
          "EKT gives the student more than GRPO with the sandbox as reward", "EKT", "GRPO",
          optional=True),
    Claim("ekt_vs_on_policy", "ekt", "on-policy",
          "EKT gives the student more than on-policy distillation", "EKT",
          "on-policy distillation", optional=True),
)  # fmt: skip


class Evaluated(Protocol):
    """What a claim needs of an evaluated model (``ekt.report.load.EvalData`` is one)."""

    @property
    def label(self) -> str: ...

    @property
    def method(self) -> str: ...

    @property
    def problems(self) -> Sequence[Mapping]: ...


@dataclass(frozen=True)
class BestStudent:
    label: str
    method: str
    metric: str  # the figure it was picked by
    estimate: float

    def as_dict(self) -> dict:
        return {
            "label": self.label,
            "method": self.method,
            "metric": self.metric,
            "estimate": self.estimate,
        }


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    verdict: str
    left_label: str | None = None  # the evaluated models compared (None: that side did not run)
    left_method: str | None = None
    right_label: str | None = None
    right_method: str | None = None
    metric: str | None = None  # the primary metric the verdict is on
    questions: int = 0  # questions both answered
    differences: dict[str, Interval] = field(default_factory=dict)  # left - right per figure
    reason: str | None = None  # why NOT_RUN / NOT_COMPARABLE

    def as_dict(self) -> dict:
        left_name, right_name = self.claim.side_names()
        return {
            "claim": self.claim.text,
            "left": self.claim.left,
            "right": self.claim.right,
            "left_name": left_name,
            "right_name": right_name,
            "left_label": self.left_label,
            "left_method": self.left_method,
            "right_label": self.right_label,
            "right_method": self.right_method,
            "verdict": self.verdict,
            "metric": self.metric,
            "questions": self.questions,
            "differences": {k: v.as_dict() for k, v in self.differences.items()},
            "reason": self.reason,
        }


def verdict_of(diff: Interval | Mapping) -> str:
    """SUPPORTED, CONTRADICTED or NOT_DISTINGUISHABLE from a difference's interval."""
    low = diff["low"] if isinstance(diff, Mapping) else diff.low
    high = diff["high"] if isinstance(diff, Mapping) else diff.high
    if low > 0:
        return SUPPORTED
    if high < 0:
        return CONTRADICTED
    return NOT_DISTINGUISHABLE


def best_student(models: Sequence[Evaluated]) -> BestStudent | None:
    """The trained student with the highest pass@1 estimate; the first listed on a tie.

    Sampled pass@1 when every candidate has samples for every question, else greedy
    pass@1 (candidates without greedy outcomes then drop out): one figure for all.
    """
    candidates = [
        m for m in models if m.method not in UNTRAINED and m.label != TEACHER and m.problems
    ]
    sampled = all(min(int(p["n"]) for p in m.problems) >= 1 for m in candidates)
    metric = PRIMARY if sampled else FALLBACK
    scored: list[tuple[Evaluated, float]] = []
    for m in candidates:
        values = question_scores(m.problems, [1] if sampled else []).get(metric)
        if values is not None:
            scored.append((m, float(np.mean(values))))
    if not scored:
        return None
    top, value = max(scored, key=lambda mv: mv[1])  # max keeps the first of equal estimates
    return BestStudent(top.label, top.method, metric, value)


def _side(
    side: str,
    models: Sequence[Evaluated],
    best: BestStudent | None,
    skipped: Mapping[str, str],
) -> tuple[Evaluated | None, str]:
    """The model a side names, or None with why it is missing."""
    if side == BEST_STUDENT:
        if best is None:
            return None, "no trained student was evaluated"
        return next(m for m in models if m.label == best.label), ""
    if side == TEACHER:
        found = next((m for m in models if m.label == TEACHER or m.method == "few-shot"), None)
        why = skipped.get("few-shot") or skipped.get(TEACHER)
        return found, f"teacher: skipped: {why}" if why else "teacher: not evaluated in this run"
    found = next((m for m in models if m.method == side), None)
    why = skipped.get(side)
    return found, f"{side}: skipped: {why}" if why else f"{side}: not in this run"


def check_claim(
    claim: Claim,
    models: Sequence[Evaluated],
    ks: Sequence[int],
    skipped: Mapping[str, str] | None = None,
    best: BestStudent | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> ClaimResult:
    """One claim on one run's evaluated ``models``.

    ``ks``: the run's pass@k values (pass@1 is always included; those above the
    paired questions' smallest n are left out). ``skipped``: method -> why it
    was not evaluated, for the NOT_RUN reason. ``best``: the BEST_STUDENT when the
    claim names one (None: ``best_student(models)``). Intervals are at ``LEVEL``, the level
    ``run_claims`` reports.
    """
    skipped = skipped or {}
    if best is None and BEST_STUDENT in (claim.left, claim.right):
        best = best_student(models)
    left, why_left = _side(claim.left, models, best, skipped)
    right, why_right = _side(claim.right, models, best, skipped)
    if left is None or right is None:
        reason = "; ".join(w for m, w in ((left, why_left), (right, why_right)) if m is None)
        return ClaimResult(
            claim,
            NOT_RUN,
            left_label=left.label if left else None,
            left_method=left.method if left else None,
            right_label=right.label if right else None,
            right_method=right.method if right else None,
            reason=reason,
        )
    sides = {
        "left_label": left.label,
        "left_method": left.method,
        "right_label": right.label,
        "right_method": right.method,
    }
    shared = {p["problem_id"] for p in left.problems} & {p["problem_id"] for p in right.problems}
    if not shared:
        return ClaimResult(
            claim, NOT_COMPARABLE, **sides, reason="the two models share no question"
        )
    nmin = min(
        int(p["n"]) for rows in (left.problems, right.problems) for p in rows
        if p["problem_id"] in shared
    )  # fmt: skip
    use_ks = [k for k in sorted({1, *map(int, ks)}) if k <= nmin]
    diffs = paired_intervals(left.problems, right.problems, use_ks, resamples, seed, LEVEL)
    wanted = [f"pass@{k}" for k in use_ks] + [FALLBACK]
    diffs = {k: diffs[k] for k in wanted if k in diffs}
    metric = PRIMARY if PRIMARY in diffs else FALLBACK if FALLBACK in diffs else None
    if metric is None:
        return ClaimResult(
            claim,
            NOT_COMPARABLE,
            **sides,
            questions=len(shared),
            reason="neither has samples nor greedy outcomes for the shared questions",
        )
    return ClaimResult(
        claim,
        verdict_of(diffs[metric]),
        **sides,
        metric=metric,
        questions=diffs[metric].questions,
        differences=diffs,
    )


def check_claims(
    models: Sequence[Evaluated],
    ks: Sequence[int],
    skipped: Mapping[str, str] | None = None,
    claims: Sequence[Claim] = CLAIMS,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> tuple[BestStudent | None, list[ClaimResult]]:
    """Every claim on one run: the best student (if any) and one result per claim, in order."""
    best = best_student(models)
    present = {m.method for m in models} | set(skipped or {})
    claims = [c for c in claims if not c.optional or c.right in present]
    return best, [check_claim(c, models, ks, skipped, best, resamples, seed) for c in claims]


def run_claims(
    run: RunData,
    claims: Sequence[Claim] = CLAIMS,
    resamples: int | None = None,
    seed: int | None = None,
) -> dict:
    """The ``claims`` section of results.json for a loaded run (``ekt.report.load``).

    ``{"difference", "primary_metric", "resamples", "seed", "level",
    "best_student": {label, method, metric, estimate} | None,
    "rows": {claim name: ClaimResult.as_dict()}}``.
    """
    resamples = run.resamples if resamples is None else resamples
    seed = run.seed if seed is None else seed
    skipped = {str(s.get("method")): str(s.get("skipped")) for s in run.skipped if s.get("method")}
    best, results = check_claims(run.evals, run.ks, skipped, claims, resamples, seed)
    return {
        "difference": "left - right, per question, averaged over the questions both answered",
        "primary_metric": f"{PRIMARY} (sampled) when both models have samples, else {FALLBACK}",
        "verdicts": {
            SUPPORTED: "95% interval of the primary difference entirely above 0",
            CONTRADICTED: "entirely below 0",
            NOT_DISTINGUISHABLE: "the interval contains 0",
            NOT_RUN: "a side was not evaluated in this run",
            NOT_COMPARABLE: "both ran but share no question or no figure",
        },
        "resamples": resamples,
        "seed": seed,
        "level": LEVEL,
        "best_student": best.as_dict() if best else None,
        "rows": {r.claim.name: r.as_dict() for r in results},
    }
