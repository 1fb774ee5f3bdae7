"""seq-kd: sequence-level distillation (Kim & Rush 2016).

The student is fine-tuned on every program the teacher sampled, correct or not
(:func:`sequence_kd_pairs`): the other common meaning of "distillation", and the same
data as EKT before the sandbox filter. Settings: the ``seq_kd:`` block (``SeqKDConfig``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ekt.data.prompts import extract_program
from ekt.errors import EktError
from ekt.generation.generate import read_completions
from ekt.methods.base import (
    BUDGET,
    EVERY_STUDENT,
    TEACHER_SAMPLES,
    TEACHER_SAMPLING,
    Context,
    Cost,
    Fitted,
    Method,
    train_on_pairs,
)
from ekt.records import Completion, Problem, TrainPair, write_jsonl_atomic
from ekt.verification.filtering import _norm_question, _order


@dataclass
class SeqKDConfig:
    """``seq_kd:`` block of a run config (``method: seq-kd``)."""

    per_question: int = 0
    """teacher samples taken per question, in sample order, verified or not (0: every sample).
    1 is sequence-level KD as first defined (one teacher output per input), and the closest
    contrast to ekt with ``keep: first``: the same teacher, one program per question, only
    the correctness filter differs"""

    def validate(self) -> None:
        if not isinstance(self.per_question, int) or self.per_question < 0:
            raise EktError(
                f"seq_kd.per_question must be an integer >= 0 (0: every sample), "
                f"got {self.per_question!r}"
            )


def sequence_kd_pairs(
    completions: Iterable[Completion],
    problems: dict[str, Problem],
    exclude_questions: frozenset[str] = frozenset(),
    per_question: int = 0,
) -> list[TrainPair]:
    """Teacher samples as training pairs, unverified (``method: seq-kd``). Pure.

    Duplicates are kept: the samples stand for the teacher's distribution over
    programs. ``per_question`` > 0 takes only each question's first samples (by
    sample index; a sample without a program still counts as taken). Questions in
    ``exclude_questions`` (normalised text of the evaluation split) are dropped,
    as for EKT.
    """
    ordered = sorted(completions, key=lambda c: (_order(c.problem_id), c.sample_idx))
    pairs = []
    taken: dict[str, int] = {}
    for c in ordered:
        problem = problems[c.problem_id]
        if _norm_question(problem.question) in exclude_questions:
            continue
        if per_question:
            taken[c.problem_id] = taken.get(c.problem_id, 0) + 1
            if taken[c.problem_id] > per_question:
                continue
        if c.extract_error:  # the reply held no program: nothing to imitate
            continue
        program = c.program or extract_program(c.text)
        pairs.append(TrainPair(c.problem_id, problem.question, program, "teacher-unfiltered"))
    return pairs


def prepare(ctx: Context, problems: Sequence[Problem]) -> tuple[Path | None, Cost]:
    """Every teacher sample as a pair, without the correctness filter (under a
    ``teacher_token_budget``, every one the budget buys)."""
    allowed, cost = ctx.budget_samples(problems)
    path = ctx.layout.seq_kd_pairs
    per_q = ctx.cfg.seq_kd.per_question
    which = (
        "every teacher sample" if not per_q
        else "each question's first teacher sample" if per_q == 1
        else f"each question's first {per_q} teacher samples"
    )  # fmt: skip
    with ctx.stage(f"seq-kd pairs: {which}, unverified"):
        completions = read_completions(ctx.layout.teacher)
        if allowed is not None:
            completions = [c for c in completions if (c.problem_id, c.sample_idx) in allowed]
        by_id = ctx.task.by_id({c.problem_id for c in completions})
        test = frozenset(_norm_question(p.question) for p in ctx.task.load_file("test"))
        pairs = sequence_kd_pairs(completions, by_id, test, per_q)
        n = write_jsonl_atomic(path, pairs)
        n_q = len({c.problem_id for c in completions})
        print(f"seq-kd: {n} pairs from {n_q} questions (no correctness filter)")
    return path, cost


def fit(ctx: Context, problems: Sequence[Problem], pairs: Path | None) -> Fitted:
    return train_on_pairs(ctx, "seq-kd", pairs)


METHOD = Method(
    name="seq-kd",
    summary="every teacher sample, unverified (sequence-level KD)",
    consumes=(TEACHER_SAMPLES,),
    prepare=prepare,
    fit=fit,
    settings_key="seq_kd",
    settings=SeqKDConfig,
    writes=("seq_kd",),
    invalidated_by=(*EVERY_STUDENT, "train", *TEACHER_SAMPLING, "seq_kd", BUDGET),
    pairs=lambda lay: lay.seq_kd_pairs,
)
