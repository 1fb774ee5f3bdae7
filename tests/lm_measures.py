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


def weights_moved(before: Any, after: Any) -> float:
    """The summed absolute change of every parameter between two model folders (or specs
    ``from_pretrained`` loads): above 0 when a training changed the model."""
    from transformers import AutoModelForCausalLM

    a, b = (AutoModelForCausalLM.from_pretrained(str(d)) for d in (before, after))
    return sum(float((p - q).abs().sum()) for p, q in
               zip(b.parameters(), a.parameters(), strict=True))  # fmt: skip


def kill_at_step(step: int) -> Any:
    """A TrainerCallback that dies (KeyboardInterrupt) at the end of optimizer step ``step``,
    as a killed process would, leaving the checkpoints saved before it."""
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            if state.global_step == step:
                raise KeyboardInterrupt

    return Kill()
