"""Knowledge distillation baselines: token-level KD with a live teacher, and sequence-level KD.

``method: kd`` trains the student on the same filtered pairs as EKT with

    loss = alpha * CE + (1 - alpha) * tau^2 * D(teacher || student)

over the program tokens, the teacher run live on every batch (frozen, no
gradient, on its own device and dtype). CE is the usual next-token
cross-entropy on the target tokens (``loss_on``), D is averaged over the
program tokens, both per token over the whole accumulated batch.

Defaults (alpha 0.5, tau 1) give 0.5 * (CE + KL): the published "plain LM loss
plus KL at temperature 1" times one half. AdamW's update does not depend on a
constant factor on the loss (up to its epsilon), so this is the published
objective except that gradient clipping at ``max_grad_norm`` 1.0 acts like
clipping the unhalved loss at 2.0. ``alpha = 1`` is plain fine-tuning (the
teacher is not even run).

D depends on whether the two models share a vocabulary:

* same tokenizer (same token -> id map): token-level KL(p_T || p_S) at
  temperature tau, position by position (``loss: kl``);
* different tokenizers, as with the two embedded presets (SmolLM2's 49k
  vocabulary, Gemma 3's 262k): the **universal logit distillation (ULD)
  loss** of Boizard et al. 2024, "Towards Cross-Tokenizer Distillation: the
  Universal Logit Distillation Loss for LLMs" (``loss: uld``). Each side's
  next-token probability vector is sorted in decreasing order, the shorter
  one is padded with zeros, and D is the L1 distance between the two sorted
  vectors (the closed form of the Wasserstein distance the paper derives when
  token identities are ignored). The i-th program token of the student's
  tokenisation is paired with the i-th program token of the teacher's, up to
  the shorter of the two, as in the paper. ``loss: auto`` (default) picks KL
  when the vocabularies match and ULD otherwise.

The teacher sees the same text as the student, in its own tokenisation: the
student prompt (the bare question ending in ``def solution():``) and the
program. ``teacher_prompt: few-shot`` gives it its few-shot prompt instead
(closer to how it wrote the programs, ~4x the teacher compute); the program
tokens, and so the pairing, are the same either way.

The methods that use it, ``kd`` and ``seq-kd``, are ``ekt.methods.kd`` and
``ekt.methods.seqkd``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from ekt.data.prompt_format import PromptFormat, load_format
from ekt.errors import EktError
from ekt.models import load_model
from ekt.records import TrainPair
from ekt.training.config import KDConfig
from ekt.training.packing import (
    IGNORE,
    can_pack,
    collate,
    enable_packing,
    kept_logits,
    loss_positions,
    supports_logits_to_keep,
)
from ekt.training.train import (
    _trainer_class,
    encode_pair,
    local_device,
    pair_ids,
)

LOSS_NAMES = {
    "kl": "token-level KL(teacher || student)",
    "uld": "universal logit distillation (ULD; Boizard et al. 2024)",
}


# -- the distances (pure tensor functions) -----------------------------------


def kl_per_position(student_logits: Any, teacher_logits: Any, tau: float = 1.0) -> Any:
    """KL(p_T || p_S) per row at temperature ``tau``; rows are positions, columns token ids.

    When the two logit vectors differ in length (embedding matrices padded
    past the shared tokenizer), both are cut to the shorter.
    """
    import torch

    v = min(student_logits.shape[-1], teacher_logits.shape[-1])
    log_s = torch.log_softmax(student_logits[:, :v].float() / tau, dim=-1)
    log_t = torch.log_softmax(teacher_logits[:, :v].float() / tau, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(-1)


def top_probs(logits: Any, tau: float, m: int) -> tuple[Any, Any]:
    """Each row's ``m`` largest probabilities at temperature ``tau``, in decreasing order, and
    the sum of the others: all that ULD needs of the longer vocabulary (``uld_from_top``).

    The same values as the first ``m`` of the whole row sorted, and the same sum of the rest up
    to the order of summation. On CPU the order comes from numpy's vectorised sorts, several
    times faster than torch's there (``benchmarks/uld_speed.py``); the gradient, where one is
    needed, flows through a gather at those positions.
    """
    import torch

    probs = torch.softmax(logits.float() / tau, dim=-1)
    v = probs.shape[-1]
    m = min(m, v)
    if probs.device.type != "cpu" or not bool(torch.isfinite(probs).all()):
        top, idx = probs.topk(m, dim=-1)
        return top, probs.scatter(-1, idx, 0.0).sum(-1)
    if not probs.requires_grad:  # the teacher: values only
        x = probs.numpy()
        part = np.partition(x, v - m, axis=-1) if m < v else x
        top = np.sort(part[:, v - m :], axis=-1)[:, ::-1]
        tail = part[:, : v - m].sum(-1, dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(top)), torch.from_numpy(tail)
    order = torch.from_numpy(_descending_order(probs.detach().numpy()))
    top = probs.gather(-1, order[:, :m])
    return top, probs.gather(-1, order[:, m:]).sum(-1)


def _descending_order(x: Any) -> Any:
    """Column indices of each row of non-negative float32 ``x`` in decreasing value order.

    Non-negative floats order as their bit patterns do, so a value's bits above its column
    index make one int64 key; numpy sorts those keys with its vectorised integer sort.
    """
    keys = x.view(np.int32).astype(np.int64) << 32
    keys |= np.arange(x.shape[-1], dtype=np.int64)
    keys.sort(axis=-1)
    return np.ascontiguousarray((keys & 0xFFFFFFFF)[:, ::-1])


def uld_from_top(student: tuple[Any, Any], teacher: tuple[Any, Any]) -> Any:
    """ULD per row from each side's ``top_probs`` at the same ``m`` (the smaller vocabulary):
    the L1 distance of the two sorted heads plus both tails, the shorter side zero-padded."""
    (s_top, s_tail), (t_top, t_tail) = student, teacher
    return (s_top - t_top).abs().sum(-1) + s_tail + t_tail


def uld_per_position(
    student_logits: Any, teacher_logits: Any, tau: float = 1.0, chunk: int = 64
) -> Any:
    """Universal logit distillation distance (Boizard et al. 2024) per aligned position.

    Rows of the two logit matrices are aligned positions; their vocabularies
    may differ in size and meaning. Computed ``chunk`` rows at a time, the
    teacher side without gradient. Only the ``m`` largest probabilities of each
    side are sorted (``m`` the smaller vocabulary): past ``m`` the shorter side
    is zero-padded, so the longer side's rest counts only as its sum.
    """
    import torch

    m = min(student_logits.shape[-1], teacher_logits.shape[-1])
    out = []
    for i in range(0, student_logits.shape[0], chunk):
        with torch.no_grad():
            t_top, t_tail = top_probs(teacher_logits[i : i + chunk], tau, m)
        t = (t_top.to(student_logits.device), t_tail.to(student_logits.device))
        out.append(uld_from_top(top_probs(student_logits[i : i + chunk], tau, m), t))
    if not out:
        return student_logits.new_zeros(0, dtype=torch.float32)
    return torch.cat(out)


def distance(kind: str, student_logits: Any, teacher_logits: Any, tau: float) -> Any:
    if kind == "kl":
        return kl_per_position(student_logits, teacher_logits.to(student_logits.device), tau)
    return uld_per_position(student_logits, teacher_logits, tau)


def kd_objective(ce: Any, dist: Any, alpha: float, tau: float) -> Any:
    """alpha * CE + (1 - alpha) * tau^2 * D, from per-token means of each. Pure."""
    return alpha * ce + (1 - alpha) * tau**2 * dist if alpha < 1 else alpha * ce


# -- examples and batches ---------------------------------------------------


def _teacher_ids(
    t_tok: Any,
    question: str,
    program: str,
    prompt_kind: str,
    n_program: int,
    fmt: PromptFormat | None = None,
) -> tuple[list[int], int]:
    """Teacher tokens for the same pair in the same layout (its own tokenizer; a chat layout
    with its own chat template), program cut to ``n_program``."""
    if t_tok.eos_token_id is None:
        raise EktError("the teacher's tokenizer has no EOS token")
    view = "student" if prompt_kind == "student" else "teacher"
    p_ids, b_ids = pair_ids(t_tok, fmt or load_format(), question, program, view)
    return p_ids + b_ids[: max(n_program, 1)], len(p_ids)


class KDCollator:
    """Student batch (packed or padded) plus the teacher's batch and the aligned positions.

    ``kd_student_pos`` and ``kd_teacher_pos`` are flat (row-major) positions of
    the logits that predict the i-th program token of each example, for i up to
    the shorter program of the two tokenisations.
    """

    def __init__(self, pad_id: int, packed: bool, t_pad_id: int, t_packed: bool):
        self.pad_id, self.packed = pad_id, packed
        self.t_pad_id, self.t_packed = t_pad_id, t_packed

    def __call__(self, feats: list[dict]) -> dict:
        import torch

        student = [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in feats]
        batch, s_off = collate(student, self.packed, self.pad_id)
        teacher = [{"input_ids": f["t_input_ids"]} for f in feats]
        t_batch, t_off = collate(teacher, self.t_packed, self.t_pad_id)
        s_pos: list[int] = []
        t_pos: list[int] = []
        for f, so, to in zip(feats, s_off, t_off):
            n = min(len(f["input_ids"]) - f["n_prompt"], len(f["t_input_ids"]) - f["t_n_prompt"])
            if n > 0:
                s0, t0 = so + f["n_prompt"] - 1, to + f["t_n_prompt"] - 1
                s_pos.extend(range(s0, s0 + n))
                t_pos.extend(range(t0, t0 + n))
        batch.update({f"t_{k}": v for k, v in t_batch.items()})
        batch["kd_student_pos"] = torch.tensor(s_pos, dtype=torch.long)
        batch["kd_teacher_pos"] = torch.tensor(t_pos, dtype=torch.long)
        batch["n_targets"] = int((batch["labels"][:, 1:] != IGNORE).sum())
        batch["n_distill"] = len(s_pos)
        batch["n_tokens"] = sum(len(f["input_ids"]) for f in feats)
        return batch


def teacher_logits(teacher: Any, batch: dict, use_logits_to_keep: bool) -> Any:
    """The teacher's logits (no gradient) at ``kd_teacher_pos``, in that order."""
    import torch

    device = next(teacher.parameters()).device
    t_batch = {
        k[2:]: v.to(device) if hasattr(v, "to") else v
        for k, v in batch.items()
        if k.startswith("t_")
    }
    flat = torch.zeros(t_batch["input_ids"].numel(), dtype=torch.bool, device=device)
    flat[batch["kd_teacher_pos"].to(device)] = True  # ascending, so the order is kept
    with torch.no_grad():
        return kept_logits(teacher, t_batch, flat.view_as(t_batch["input_ids"]), use_logits_to_keep)


def student_distill_logits(logits: Any, keep: Any, positions: Any) -> Any:
    """Rows of ``logits`` (kept at ``keep``, row-major) for the flat ``positions``."""
    rank = keep.flatten().cumsum(0) - 1
    return logits[rank[positions]]


@functools.cache
def _kd_trainer_class() -> Any:
    import torch

    class KDTrainer(_trainer_class()):  # type: ignore[misc]
        """EktTrainer whose loss adds the distance to a live, frozen teacher (see module doc)."""

        ekt_teacher: Any = None
        ekt_kd: KDConfig = KDConfig()
        ekt_distance = "kl"
        ekt_teacher_logits_to_keep = False
        ekt_distill_items = 0

        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self._parts = [0.0, 0.0]  # ce and distill since the last log
            self._parts_since = 0

        def compute_loss(
            self,
            model: Any,
            inputs: dict,
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            cfg = self.ekt_kd
            keep, targets = loss_positions(inputs["labels"])
            logits = kept_logits(model, inputs, keep, self.ekt_logits_to_keep)
            ce = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
            ce_part = ce * self._scale(num_items_in_batch, targets.numel())
            dist_part = torch.zeros((), device=ce.device)
            pos = inputs["kd_student_pos"]
            if cfg.alpha < 1 and pos.numel():
                s = student_distill_logits(logits, keep, pos)
                t = teacher_logits(self.ekt_teacher, inputs, self.ekt_teacher_logits_to_keep)
                d = distance(self.ekt_distance, s, t, cfg.temperature)
                dist_part = d.sum() * self._scale(self.ekt_distill_items, d.numel())
            loss = kd_objective(ce_part, dist_part, cfg.alpha, cfg.temperature)
            self._parts[0] += float(ce_part.detach())
            self._parts[1] += float(dist_part.detach())
            return (loss, {"logits": logits}) if return_outputs else loss

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            """Adds ``ce`` and ``distill`` (per-token means since the last log) to loss logs."""
            if "loss" in logs:
                steps = max(self.state.global_step - self._parts_since, 1)
                logs["ce"] = round(self._parts[0] / steps, 6)
                logs["distill"] = round(self._parts[1] / steps, 6)
                self._parts = [0.0, 0.0]
                self._parts_since = self.state.global_step
            super().log(logs, start_time)

    return KDTrainer


class Distiller:
    """The teacher plug-in ``train_student`` takes (``distill=``): examples, batches, loss."""

    def __init__(self, teacher_spec: str, cfg: KDConfig | None = None, device: str | None = None):
        self.spec = teacher_spec
        self.cfg = cfg or KDConfig()
        self.cfg.validate()
        self.device = self.cfg.teacher_device or device
        self.model: Any = None
        self.tok: Any = None
        self.packed = False
        self.kind: str | None = None

    def load(self) -> None:
        if self.model is not None:
            return
        # Under DDP/FSDP/ZeRO every rank holds a frozen teacher replica on its own GPU, next
        # to the student shard it teaches: its logits never cross devices or processes.
        device = local_device(self.device)
        model, tok = load_model(self.spec, device=device, dtype=self.cfg.teacher_dtype)
        model.requires_grad_(False)
        model.eval()
        self.packed = can_pack(model)
        if self.packed:
            enable_packing(model)
        self.model, self.tok = model, tok

    def resolve_kind(self, student_tok: Any) -> str:
        same = student_tok.get_vocab() == self.tok.get_vocab()
        if self.cfg.loss == "kl" and not same:
            raise EktError(
                f"kd.loss kl needs a shared vocabulary, but {self.spec}'s tokenizer differs "
                "from the student's; use kd.loss uld (or auto)"
            )
        return ("kl" if same else "uld") if self.cfg.loss == "auto" else self.cfg.loss

    def fingerprint(self) -> dict:
        settings = {k: v for k, v in asdict(self.cfg).items() if k != "teacher_device"}
        return {"teacher": self.spec, **settings}

    def build_examples(
        self,
        tok: Any,
        pairs: Sequence[TrainPair],
        max_length: int,
        loss_on: str,
        prompt_format: PromptFormat | None = None,
    ) -> tuple[list[dict], int]:
        """The student's examples in its layout (``prompt_format``; a chat layout in its chat
        template), each with the teacher's tokens of the same pair in the same layout."""
        self.load()
        self.kind = self.resolve_kind(tok)
        fmt = prompt_format or load_format()
        examples = []
        for p in pairs:
            ex = encode_pair(tok, p.question, p.program, max_length, loss_on, fmt)
            if all(x == IGNORE for x in ex["labels"]):
                continue
            n_prompt = min(len(pair_ids(tok, fmt, p.question, p.program)[0]), len(ex["input_ids"]))
            n_program = len(ex["input_ids"]) - n_prompt
            t_ids, t_n_prompt = _teacher_ids(
                self.tok, p.question, p.program, self.cfg.teacher_prompt, n_program, fmt
            )
            ex.update(n_prompt=n_prompt, t_input_ids=t_ids, t_n_prompt=t_n_prompt)
            examples.append(ex)
        print(
            f"kd: teacher {self.spec} live ({LOSS_NAMES[self.kind]}, alpha {self.cfg.alpha}, "
            f"temperature {self.cfg.temperature}, {self.cfg.teacher_prompt} prompt)"
        )
        return examples, len(pairs) - len(examples)

    def collator(self, pad_id: int, packed: bool) -> KDCollator:
        t_pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        return KDCollator(pad_id, packed, t_pad, self.packed)

    def trainer_class(self) -> Any:
        return _kd_trainer_class()

    def attach(self, trainer: Any) -> None:
        trainer.ekt_teacher = self.model
        trainer.ekt_kd = self.cfg
        trainer.ekt_distance = self.kind
        trainer.ekt_teacher_logits_to_keep = supports_logits_to_keep(self.model)

    def summary(self) -> dict:
        used = LOSS_NAMES[self.kind or "kl"]
        return {"teacher": self.spec, "loss_used": used, **asdict(self.cfg)}
