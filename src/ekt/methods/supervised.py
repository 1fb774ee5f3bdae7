"""supervised: fine-tune on reference programs built from the task's worked solutions
(GSM8K's calculator annotations, ``ekt.data.supervised``), verified in the sandbox."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ekt.data.supervised import reference_pairs
from ekt.methods.base import (
    EVERY_STUDENT,
    REFERENCE_PROGRAMS,
    Context,
    Cost,
    Fitted,
    Method,
    count_lines,
    train_on_pairs,
)
from ekt.records import Problem, write_jsonl_atomic
from ekt.verification.filtering import filter_stage
from ekt.verification.verify import verify


def prepare(ctx: Context, problems: Sequence[Problem]) -> tuple[Path | None, Cost]:
    lay = ctx.layout
    with ctx.stage("supervised reference programs from calculator annotations"):
        recs = [{"problem_id": p.problem_id, "sample_idx": 0, "program": p.program}
                for p in reference_pairs(problems)]  # fmt: skip
        if not lay.supervised_programs.exists():
            write_jsonl_atomic(lay.supervised_programs, recs)
        v = verify(
            lay.supervised_programs, lay.supervised_executions, ctx.task, None,
            ctx.sandbox, cluster=ctx.cluster,
        )  # fmt: skip
        f = filter_stage(
            lay.supervised_executions,
            lay.supervised_pairs,
            ctx.task,
            keep="first",
            source="supervised",
            against=ctx.contamination_sets(),
        )
        print(
            f"supervised: {len(recs)}/{len(problems)} questions have annotations that form a "
            f"program; {v.correct} return the gold answer; {f.pairs} pairs"
        )
    return lay.supervised_pairs, Cost(sandbox_executions=count_lines(lay.supervised_executions))


def fit(ctx: Context, problems: Sequence[Problem], pairs: Path | None) -> Fitted:
    return train_on_pairs(ctx, "supervised", pairs)


METHOD = Method(
    name="supervised",
    summary="the task's reference programs (GSM8K calculator annotations), verified",
    consumes=(REFERENCE_PROGRAMS,),
    prepare=prepare,
    fit=fit,
    writes=("supervised",),
    invalidated_by=(*EVERY_STUDENT, "train"),
    pairs=lambda lay: lay.supervised_pairs,
)
