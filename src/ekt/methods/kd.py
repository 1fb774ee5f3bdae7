"""KD: the EKT pairs, with a live teacher's token distribution as a second target.

The loss (KL on a shared vocabulary, ULD across two) is ``ekt.training.kd``; this is the
method: what it trains on and which settings it reads (the ``kd:`` block, ``KDConfig``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ekt.data.prompt_format import PromptFormat
from ekt.methods.base import (
    BUDGET,
    EVERY_STUDENT,
    LIVE_TEACHER,
    TEACHER_PAIRS,
    TEACHER_SAMPLING,
    Context,
    Cost,
    Fitted,
    Method,
    train_on_pairs,
)
from ekt.records import Problem, TrainPair, read_records
from ekt.training.kd import Distiller, KDConfig
from ekt.training.train import TrainConfig, build_examples, train_student


def prepare(ctx: Context, problems: Sequence[Problem]) -> tuple[Path | None, Cost]:
    # the same filtered pairs as ekt; under a teacher-token budget, fewer: its teacher's
    # scoring is paid from the same budget
    return ctx.teacher_pairs(problems, "kd", scored_tokens(ctx))


def scored_tokens(ctx: Context) -> Callable[[Path], int]:
    """What kd's teacher scores training on a pairs file, as ``fit`` bills it
    (:func:`training_tokens`)."""
    from transformers import AutoTokenizer

    from ekt.models import resolve_model

    c = ctx.cfg
    tok = AutoTokenizer.from_pretrained(resolve_model(c.student))
    fmt = ctx.task.prompt_format(c.student_prompt_format)
    return lambda path: training_tokens(tok, read_records(path, TrainPair), c.train, fmt)


def training_tokens(
    tok: Any, pairs: Sequence[TrainPair], train: TrainConfig, fmt: str | PromptFormat | None
) -> int:
    """The input tokens (padding excluded) a training on ``pairs`` processes: every example,
    every epoch. With ``train.max_steps``, which examples the last, partial epoch draws
    depends on the shuffle: then an upper bound (its rows the longest examples)."""
    examples, _ = build_examples(tok, pairs, train.max_length, train.loss_on, fmt)
    sizes = sorted((len(e["input_ids"]) for e in examples), reverse=True)
    if train.max_steps > 0 and sizes:
        rows = train.max_steps * train.batch_size
        whole, part = divmod(rows, len(sizes))
        return whole * sum(sizes) + sum(sizes[:part])
    return math.ceil(train.num_train_epochs * sum(sizes))


def fit(ctx: Context, problems: Sequence[Problem], pairs: Path | None) -> Fitted:
    c = ctx.cfg
    got = train_on_pairs(ctx, "kd", pairs, lambda out: train_student(
        c.student, pairs, out, c.train, device=c.device,
        distill=Distiller(c.teacher, c.kd, c.device),
        prompt_format=ctx.task.prompt_format(c.student_prompt_format),
    ))  # fmt: skip
    # the teacher reads every token the student trains on (one forward pass each)
    got.cost.teacher_tokens_scored = got.cost.training_tokens
    return got


METHOD = Method(
    name="kd",
    summary="the ekt pairs plus a live teacher's distribution (KL or ULD)",
    consumes=(TEACHER_PAIRS, LIVE_TEACHER),
    prepare=prepare,
    fit=fit,
    settings_key="kd",
    settings=KDConfig,
    writes=("budget/kd",),
    invalidated_by=(*EVERY_STUDENT, "train", *TEACHER_SAMPLING, "keep", "kd", BUDGET),
    pairs=lambda lay: lay.train_pairs,
)
