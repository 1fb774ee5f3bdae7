"""On-policy distillation across tokenizers: TRL's ``DistillationTrainer`` (the student
samples; generation, batching, checkpoints and logs are TRL's) with its loss replaced by
ekt's ULD distance (``ekt.training.kd.uld_per_position``).

Each completion the student sampled is decoded to text and read by the teacher in its own
tokenisation: the student's prompt text (with the teacher's BOS) and the completion text
tokenised on its own, the teacher's EOS appended where the student's completion ended with
its EOS. The i-th completion token of the student is paired with the i-th completion token
of the teacher, up to the shorter of the two (as ekt's offline ``kd`` pairs them; Boizard
et al. 2024). The loss is the ULD distance of each pair at temperature 1 (each side's
distribution sorted, the L1 distance of the two; it ignores token identity, so it has no
direction: no reverse-KL analogue exists without a token map), summed over the pairs and
divided by TRL's count of completion tokens in the step (``num_items_in_batch``): a
per-student-token mean in which a token past the teacher's shorter tokenisation counts 0.

Only the teacher's logits at the paired positions are projected (its 262k-token head is most
of its cost); the teacher runs without gradient.
"""

from __future__ import annotations

from typing import Any

from ekt.training.kd import uld_per_position

TEACHER_TOKENS = "teacher/tokens"  # the log key: teacher tokens scored so far (cumulative)


def teacher_view(
    s_tok: Any, t_tok: Any, prompt_ids: list[int], completion_ids: list[int]
) -> tuple[list[int], int]:
    """(teacher token ids of prompt + completion, number of completion tokens among them) for
    one sample given as the student's ids (pads already dropped)."""
    eos = s_tok.eos_token_id
    ended = bool(completion_ids) and completion_ids[-1] == eos
    body = completion_ids[:-1] if ended else completion_ids
    dec = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
    prompt_text = s_tok.decode(prompt_ids, **dec)
    text = s_tok.decode(body, **dec)
    p = t_tok(prompt_text, add_special_tokens=True)["input_ids"]
    c = t_tok(text, add_special_tokens=False)["input_ids"] if text else []
    if ended and t_tok.eos_token_id is not None:
        c = [*c, t_tok.eos_token_id]
    return p + c, len(c)


def uld_trainer_class() -> Any:
    """A subclass of TRL's ``DistillationTrainer`` whose teacher may have another tokenizer
    (built on first use: TRL is imported only here)."""
    import torch
    from trl import DistillationTrainer
    from trl.trainer.utils import pad

    class ULDDistillationTrainer(DistillationTrainer):
        """``DistillationTrainer`` with ``teacher_tokenizer`` and the ULD loss (module doc)."""

        def __init__(self, *args: Any, teacher_model: Any, teacher_tokenizer: Any,
                     teacher_tokens: int = 0, **kwargs: Any):  # fmt: skip
            # TRL refuses a teacher of another vocabulary size: it is attached after the check
            super().__init__(*args, teacher_model=None, **kwargs)
            self.teacher_model = self.accelerator.prepare_model(teacher_model, evaluation_mode=True)
            self.teacher_tokenizer = teacher_tokenizer
            # teacher tokens read so far (prompt and completion; a resumed run passes the count
            # its log had), logged as the cumulative TEACHER_TOKENS like TRL's num_tokens
            self.teacher_tokens_scored = teacher_tokens

        def _compute_loss(self, unwrapped_student: Any, inputs: dict, num_items_in_batch: Any):
            prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
            completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
            n_comp = completion_ids.size(1)
            logits = unwrapped_student(
                input_ids=torch.cat([prompt_ids, completion_ids], dim=1),
                attention_mask=torch.cat([prompt_mask, completion_mask], dim=1),
                logits_to_keep=n_comp + 1,
                use_cache=False,
            ).logits[:, :-1, :]  # row j predicts completion token j

            rows, n_t = [], []
            for i in range(prompt_ids.size(0)):
                ids, n = teacher_view(
                    self._tokenizer,
                    self.teacher_tokenizer,
                    prompt_ids[i][prompt_mask[i].bool()].tolist(),
                    completion_ids[i][completion_mask[i].bool()].tolist(),
                )
                rows.append(torch.tensor(ids, dtype=torch.long))
                n_t.append(n)
            self.teacher_tokens_scored += sum(len(r) for r in rows)
            if self.model.training:
                self._metrics["train"][TEACHER_TOKENS] = [self.teacher_tokens_scored]
            t_pad = self.teacher_tokenizer.pad_token_id or 0
            device = next(self.teacher_model.parameters()).device
            # left-padded: every completion ends in the last column, so the rows that predict
            # completion tokens are within the last max(n_t) + 1
            t_ids = pad(rows, padding_value=t_pad, padding_side="left").to(device)
            t_mask = pad([torch.ones_like(r) for r in rows], padding_value=0,
                         padding_side="left").to(device)  # fmt: skip
            keep = max(max(n_t), 1)
            self.teacher_model.eval()
            with torch.no_grad():
                t_logits = self.teacher_model(
                    input_ids=t_ids, attention_mask=t_mask, logits_to_keep=keep + 1, use_cache=False
                ).logits[:, :-1, :]  # row keep - n + j predicts teacher completion token j

            s_rows, t_rows = [], []
            n_s = completion_mask.sum(1).tolist()
            for i in range(len(rows)):
                n = min(int(n_s[i]), n_t[i])
                if n > 0:
                    s_rows.append(logits[i, :n])
                    t_rows.append(t_logits[i, keep - n_t[i] : keep - n_t[i] + n])
            total = num_items_in_batch if num_items_in_batch is not None else sum(n_s)
            if s_rows:
                dist = uld_per_position(torch.cat(s_rows), torch.cat(t_rows).to(logits.device))
                loss = dist.sum() / total
            else:
                loss = logits.sum() * 0.0
            with torch.no_grad():
                logp = torch.log_softmax(logits.float(), dim=-1)
                ent = -(logp.exp() * logp).sum(-1)
                mask = completion_mask.to(ent.dtype)
                entropy_sum, n_valid = (ent * mask).sum(), mask.sum()
            return loss, entropy_sum.detach(), n_valid

    return ULDDistillationTrainer
