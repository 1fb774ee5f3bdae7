"""EKT: the student is fine-tuned on the teacher's programs that the sandbox verified."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ekt.methods.base import (
    BUDGET,
    EVERY_STUDENT,
    TEACHER_PAIRS,
    TEACHER_SAMPLING,
    Context,
    Cost,
    Fitted,
    Method,
    train_on_pairs,
)
from ekt.records import Problem


def prepare(ctx: Context, problems: Sequence[Problem]) -> tuple[Path | None, Cost]:
    return ctx.teacher_pairs(problems, "ekt")


def fit(ctx: Context, problems: Sequence[Problem], pairs: Path | None) -> Fitted:
    return train_on_pairs(ctx, "ekt", pairs)


METHOD = Method(
    name="ekt",
    summary="fine-tune on the teacher's verified programs",
    consumes=(TEACHER_PAIRS,),
    prepare=prepare,
    fit=fit,
    writes=("budget/ekt",),
    invalidated_by=(*EVERY_STUDENT, "train", *TEACHER_SAMPLING, "keep", BUDGET),
    pairs=lambda lay: lay.train_pairs,
)
