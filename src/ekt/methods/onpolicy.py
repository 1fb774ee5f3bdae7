"""On-policy distillation: the student samples, and the teacher's per-token distribution on
those samples is the target (reverse KL, the student's own mistakes are what it is corrected
on).

Same tokenizer (teacher and student share a vocabulary): TRL's ``DistillationTrainer``
(TRL 1.16; always on-policy: every step generates completions from the current student
and scores each of their tokens with the teacher). ``beta`` of its ``DistillationConfig``
selects the divergence of the generalised Jensen-Shannon family: 1.0, ekt's default and
TRL's, is the reverse KL.

Different tokenizers (the embedded pair: a Gemma-3 teacher, a SmolLM2 student): the
teacher's distribution is over another vocabulary, so no per-token KL exists. The route is
the same ``DistillationTrainer`` (same sampling, settings, checkpoints and log) with its
loss replaced by ekt's ULD distance (``ekt.training.onpolicy_uld``): each completion is
re-tokenised for the teacher and the i-th completion token of each side is paired, as
ekt's offline ``kd`` pairs them. ULD ignores token identity, so it has no direction:
``beta`` does not apply, and the distance is taken at temperature 1 (``temperature``
still sets the sampling). The same ``on_policy.trl`` keys (DistillationConfig fields)
serve both routes.

Why this route and not TRL's experimental ``GOLDTrainer`` (measured on the embedded pair,
3 steps each, ``benchmarks/onpolicy_cross_tokenizer.py``; README "GRPO and on-policy
distillation"): GOLD's default, byte-offset alignment (``use_extended_uld``), cannot run
with Gemma's tokenizer (``NotImplementedError: Cross-tokenizer ULD currently supports only
ByteLevel BPE tokenizers``); its positional ULD runs and ends at about the same distance to
the teacher, but took 254.6 s a step against this route's 36.5 s (its hybrid loss 245.8 s,
and a larger distance). Its ULD alone, forward and backward, took 3.6 times ekt's (it
sorts both whole distributions, the student's padded to the teacher's 262k tokens, where
ekt sorts only the 49k largest of each), and it projects every position through both
models' heads where this route projects only the completion's (GOLD's run had its
config's gradient checkpointing on; with it off, as ekt's route has it: 192.8 s a step).
GOLD is therefore not wired in; the benchmark keeps the comparison runnable.

Prompts are the student's zero-shot prompts in its prompt format, healed as GRPO's
(``ekt.methods.grpo.student_prompts``). Layout under ``out_dir``: ``checkpoints/``,
``train_log.jsonl`` (TRL's log lines; the cross-tokenizer route adds the cumulative
``teacher/tokens``), ``model/`` (the student), ``summary.json`` (written last; a folder
with it is done). A rerun with the same settings resumes from the last complete
checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ekt.data.prompt_format import PromptFormat, load_format
from ekt.errors import EktError
from ekt.methods.base import (
    BUDGET,
    EVERY_STUDENT,
    LIVE_TEACHER,
    OWN_ROLLOUTS,
    TEACHER_SAMPLING,
    Context,
    Cost,
    Fitted,
    Method,
    model_named,
)
from ekt.methods.grpo import (
    CHECKPOINTS,
    CPU_DEFAULTS,
    MODEL,
    NOT_FINGERPRINTED,
    SUMMARY,
    TRAIN_LOG,
    check_trl_keys,
    epoch_order,
    finished,
    student_prompts,
    summary_tokens,
    trl_config,
)
from ekt.models import load_model
from ekt.records import Problem, read_jsonl, write_json_atomic
from ekt.training.onpolicy_uld import TEACHER_TOKENS, uld_trainer_class
from ekt.training.train import _log_callback, _prepare_checkpoints, _trim_log, console_output

# DistillationConfig defaults ekt changes (a CPU run of minutes); every other setting is TRL's.
EKT_DEFAULTS: dict[str, Any] = {**CPU_DEFAULTS, "beta": 1.0}  # beta 1: reverse KL


def onpolicy_config(out_dir: str | Path, device: str | None = None, **overrides: Any) -> Any:
    """TRL's ``DistillationConfig`` with ekt's defaults (:data:`EKT_DEFAULTS`), checkpoints
    under ``out_dir/checkpoints``; ``overrides`` are DistillationConfig fields."""
    from trl import DistillationConfig

    return trl_config(DistillationConfig, EKT_DEFAULTS, out_dir, device, overrides)


@dataclass
class OnPolicyResult:
    model: str
    steps: int
    tokens_seen: int  # prompt and completion tokens trained on (TRL's count)
    final_loss: float | None
    seconds: float
    resumed_from: str | None = None
    # teacher tokens read (prompts and completions in its own tokenisation); None: the
    # teacher shares the student's tokenizer and reads the tokens trained on (tokens_seen)
    teacher_tokens: int | None = None


def same_vocabulary(student_tok: Any, teacher_tok: Any) -> bool:
    """Whether the two tokenizers map every token to the same id (a per-token KL is defined)."""
    return student_tok.get_vocab() == teacher_tok.get_vocab()


def train_onpolicy(
    student: str,
    teacher: str,
    problems: Sequence[Problem],
    out_dir: str | Path,
    config: Any = None,
    prompt_format: str | PromptFormat | None = None,
    device: str | None = None,
    callbacks: Sequence[Any] = (),
    *,
    teacher_budget: int | None = None,
) -> OnPolicyResult:
    """Distil ``teacher`` into ``student`` on the student's own samples of ``problems``; with
    ``teacher_budget``, the training ends before its teacher has scored more tokens than
    that (:func:`budget_stop`). A run of the same settings resumes its last checkpoint."""
    from datasets import Dataset
    from trl import DistillationTrainer

    if not problems:
        raise EktError("on-policy distillation needs at least one training question")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = finished(out, "on-policy distillation")
    if done is not None:
        return OnPolicyResult(**done)
    cfg = copy.deepcopy(config) if config is not None else onpolicy_config(out, device)
    cfg.output_dir = str(out / CHECKPOINTS)
    fmt = load_format(prompt_format)
    model, tok = load_model(student, device=device, dtype="float32")
    t_model, t_tok = load_model(teacher, device=device, dtype="float32")
    cross = not same_vocabulary(tok, t_tok)
    tok.padding_side = "left"
    prompts, _ = student_prompts(fmt, problems)

    digest = hashlib.sha256()
    for p in problems:
        digest.update(f"{p.id}\x00{p.question}\x00".encode())
    settings = {k: v for k, v in cfg.to_dict().items() if k not in NOT_FINGERPRINTED}
    run = json.loads(json.dumps({"student": student, "teacher": teacher, "problems":
                                 digest.hexdigest(), "prompt_format": fmt.label,
                                 "config": settings}, default=str))  # fmt: skip
    ckpt_dir = out / CHECKPOINTS
    if teacher_budget is not None:
        run["teacher_token_budget"] = teacher_budget  # it decides where the training ends
    last = _prepare_checkpoints(ckpt_dir, run, True)
    log_path = out / TRAIN_LOG
    if last is None:
        log_path.unlink(missing_ok=True)
    else:
        print(f"on-policy distillation: resuming from {last}")
        _trim_log(log_path, int(Path(last).name.rsplit("-", 1)[-1]))
    if cross:
        print(f"on-policy distillation: {teacher} has another tokenizer than {student}: ULD loss")

    rows = [{"prompt": pr, "problem_id": p.id} for pr, p in zip(prompts, problems, strict=True)]
    data = Dataset.from_list(epoch_order(rows, cfg))  # exact on resume (see grpo)
    cfg.shuffle_dataset = False
    t0 = time.time()
    stops = []
    if teacher_budget is not None:
        most = step_bound(tok, t_tok if cross else None, prompts, cfg)
        if most > teacher_budget:
            raise BudgetTooSmall(
                f"teacher_token_budget {teacher_budget:,} cannot pay for one step of on-policy "
                f"distillation (up to {most:,} teacher tokens: {rows_per_step(cfg)} completions "
                "of prompt and max_completion_length)"
            )
        stops.append(budget_stop(teacher_budget, most, lambda state: (
            trainer.teacher_tokens_scored if cross else state.num_input_tokens_seen)))  # fmt: skip
    common = {"model": model, "args": cfg, "train_dataset": data, "processing_class": tok,
              "callbacks": [_log_callback(log_path), *callbacks, *stops]}  # fmt: skip
    if cross:  # the count so far comes back from the (trimmed) log of a resumed run
        trainer = uld_trainer_class()(teacher_model=t_model, teacher_tokenizer=t_tok,
                                      teacher_tokens=logged_max(log_path, TEACHER_TOKENS),
                                      **common)  # fmt: skip
    else:
        trainer = DistillationTrainer(teacher_model=t_model, **common)
    console_output(trainer)
    trainer.train(resume_from_checkpoint=last)
    trainer.save_model(str(out / MODEL))
    tok.save_pretrained(str(out / MODEL))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = OnPolicyResult(
        model=str(out / MODEL),
        steps=int(trainer.state.global_step),
        tokens_seen=int(trainer.state.num_input_tokens_seen),
        final_loss=float(losses[-1]) if losses else None,
        seconds=round(time.time() - t0, 1),
        resumed_from=last,
        teacher_tokens=int(trainer.teacher_tokens_scored) if cross else None,
    )
    write_json_atomic(out / SUMMARY, asdict(result))
    return result


class BudgetTooSmall(EktError):
    """The teacher-token budget cannot pay for a single training step."""


def step_bound(s_tok: Any, t_tok: Any | None, prompts: Sequence[str], cfg: Any) -> int:
    """The most teacher tokens one optimizer step may score: every completion of the step
    with the longest prompt and ``max_completion_length`` tokens. With the student's own
    tokenizer (``t_tok`` None) that is exact. Across tokenizers the completion's teacher
    tokens are predicted: ``max_completion_length`` times the largest ratio of teacher to
    student tokens among the prompts (the same kind of text), plus its EOS."""
    s_len = [len(s_tok(p, add_special_tokens=True)["input_ids"]) for p in prompts]
    completion = int(cfg.max_completion_length)
    if t_tok is None:
        return rows_per_step(cfg) * (max(s_len) + completion)
    t_len = [len(t_tok(p, add_special_tokens=True)["input_ids"]) for p in prompts]
    ratio = max(t / max(s, 1) for t, s in zip(t_len, s_len, strict=True))
    return rows_per_step(cfg) * (max(t_len) + math.ceil(completion * ratio) + 1)


def budget_stop(limit: int, step_most: int, scored: Callable[[Any], int]) -> Any:
    """A ``TrainerCallback`` that ends the training after a step when one more step, at
    ``step_most`` teacher tokens, could take the tokens scored so far (``scored(state)``:
    counts a checkpoint restores) past ``limit``: a resumed run stops where an uninterrupted
    one does."""
    from transformers import TrainerCallback

    class StopWithinBudget(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if scored(state) + step_most > limit:
                control.should_training_stop = True
            return control

    return StopWithinBudget()


def logged_max(log: Path, key: str) -> int:
    """The largest value of ``key`` in a train log (0 when none)."""
    if not log.exists():
        return 0
    return max((int(obj.get(key, 0)) for _, obj in read_jsonl(log)), default=0)


# -- the method -----------------------------------------------------------------------------


@dataclass
class OnPolicySettings:
    """``on_policy:`` block of a run config."""

    teacher: str | None = None
    """the teacher that grades the student's samples: None: the run's teacher; a method
    listed before on-policy (e.g. ekt): that method's trained student; else a model spec.
    With another tokenizer than the student's, the loss is ekt's ULD (module doc)"""
    trl: dict[str, Any] = field(default_factory=dict)
    """TRL DistillationConfig fields over ekt's CPU defaults (ekt.methods.onpolicy.EKT_DEFAULTS)"""

    def validate(self) -> None:
        check_trl_keys("trl.DistillationConfig", "on_policy", self.trl)


def fit(ctx: Context, problems: Sequence[Problem], pairs: Path | None) -> Fitted:
    cfg, out = ctx.cfg, ctx.layout.student("on-policy")
    teacher, said = model_named(ctx, cfg.on_policy.teacher, cfg.teacher)
    if teacher is None:
        print(f"on-policy: its teacher, {said}, was not trained; this method is skipped")
        return Fitted(None, skipped=f"on_policy.teacher: {cfg.on_policy.teacher} was skipped")
    budget = cfg.teacher_token_budget
    with ctx.stage(f"on-policy distillation: {cfg.student} samples, {teacher} grades"):
        try:
            res = train_onpolicy(
                cfg.student, teacher, problems, out,
                config=onpolicy_config(out, cfg.device, **cfg.on_policy.trl),
                prompt_format=cfg.student_prompt_format, device=cfg.device,
                teacher_budget=budget,
            )  # fmt: skip
        except BudgetTooSmall as e:
            print(f"on-policy: {e}; this method is skipped")
            return Fitted(None, skipped=str(e))
    log = out / TRAIN_LOG
    per_step = [obj for _, obj in read_jsonl(log) if "completions/mean_length" in obj]
    rows = rows_per_step(onpolicy_config(out, cfg.device, **cfg.on_policy.trl))
    generated = round(sum(o["completions/mean_length"] * rows for o in per_step))
    tokens = summary_tokens(log) or res.tokens_seen
    # same tokenizer: the teacher reads every trained sequence; else its own tokens of them
    scored = tokens if res.teacher_tokens is None else res.teacher_tokens
    if budget is not None and scored > budget:  # a completion the prediction underrated
        print(f"on-policy: its teacher scored {scored:,} tokens, {scored - budget:,} over the "
              "teacher_token_budget (across tokenizers a step's teacher tokens are predicted)")
    cost = Cost(student_tokens_generated=generated, training_tokens=tokens,
                teacher_tokens_scored=scored)  # fmt: skip
    return Fitted(res.model, None, cost)


def rows_per_step(trl_cfg: Any) -> int:
    """Completions per logged step: one per row of the effective batch."""
    return int(trl_cfg.per_device_train_batch_size * trl_cfg.gradient_accumulation_steps)


METHOD = Method(
    name="on-policy",
    summary="the student samples, the teacher scores every token (reverse KL; TRL)",
    consumes=(OWN_ROLLOUTS, LIVE_TEACHER),
    fit=fit,
    settings_key="on_policy",
    settings=OnPolicySettings,
    builds_on="on_policy.teacher",
    # the teacher may be another method's student: what makes that stale makes this stale
    invalidated_by=(*EVERY_STUDENT, "train", *TEACHER_SAMPLING, "keep", "on_policy", BUDGET),
    harmless=tuple(f"on_policy.trl.{k}" for k in sorted(NOT_FINGERPRINTED)),
)
