"""Measures of a model on training pairs that tests use to see training work (the library
never needs them: training reports its own loss)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ekt.records import TrainPair
from ekt.training.kd import (
    Distiller,
    KDCollator,
    distance,
    student_distill_logits,
    teacher_logits,
)
from ekt.training.packing import kept_logits, loss_positions, supports_logits_to_keep
from ekt.training.train import IGNORE, encode_pair


def lm_loss(model: Any, tok: Any, pairs: Sequence[TrainPair], max_length: int = 400) -> float:
    """Mean per-token cross-entropy of ``model`` on the program tokens of ``pairs``."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for p in pairs:
            ex = encode_pair(tok, p.question, p.program, max_length, "program")
            ids = torch.tensor([ex["input_ids"]], device=model.device)
            labels = torch.tensor([ex["labels"]], device=model.device)[:, 1:]
            logits = model(input_ids=ids).logits[:, :-1].float()
            total += float(
                torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                    ignore_index=IGNORE, reduction="sum",
                )
            )  # fmt: skip
            count += int((labels != IGNORE).sum())
    model.train(was_training)
    return total / max(count, 1)


def kd_distance(d: Distiller, student: Any, tok: Any, pairs: Sequence[TrainPair]) -> float:
    """Mean distillation distance (``d``'s KL or ULD) per aligned program token."""
    examples, _ = d.build_examples(tok, pairs, 400, "program")
    batch = KDCollator(0, False, 0, False)(examples)
    was_training = student.training
    student.eval()
    with torch.no_grad():
        keep, _ = loss_positions(batch["labels"])
        logits = kept_logits(student, batch, keep, supports_logits_to_keep(student))
        s = student_distill_logits(logits, keep, batch["kd_student_pos"])
        t = teacher_logits(d.model, batch, supports_logits_to_keep(d.model))
        dist = distance(d.kind or "kl", s, t, d.cfg.temperature)
    student.train(was_training)
    return float(dist.mean())
