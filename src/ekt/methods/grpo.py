"""GRPO with the sandbox as the reward, on TRL's ``GRPOTrainer``.

The student is prompted zero-shot (its prompt format's ``student`` layout, what it is
evaluated on) with each training question; TRL samples ``num_generations`` completions
per question, and the reward of each is the task's grader on what its program returns:

* the program is extracted from the completion as the generate stage does
  (``ekt.data.extract.extract``);
* all the programs of a batch run in one warm :class:`~ekt.sandbox.pool.Sandbox` pool,
  opened once and kept for the whole training (never one pool per call);
* reward 1.0 when the task's grader accepts the value, else 0.0. A completion without a
  program (nothing extractable) gets 0.0 too, as a wrong answer: it is not run, and its
  record says ``status: no_program`` so it is counted apart.

Every rollout and its execution is appended to ``rollouts.jsonl``
(:class:`~ekt.records.Rollout`: step, problem id, completion, program, status, value,
reward), so every reward can be traced; TRL's own log lines (``reward``, ``reward_std``,
``kl``...) go to ``train_log.jsonl``.

Rollouts (:class:`GRPOOptions`): by default ekt's ``TransformersSampler`` samples them
through TRL's ``rollout_func`` (:class:`EktRollouts`): it stops a completion at the
format's stop strings, heals the prompt and prefills each question once for its group.
TRL's own ``generate`` (``rollouts: trl``) has no stop strings on its transformers path:
every completion runs to EOS or ``max_completion_length``, and the tokens after the
program are trained with its advantage; the reward reads it cut at the first stop string
either way. ``benchmarks/grpo_rollouts.py`` measures the two.

Settings are TRL's ``GRPOConfig`` (group size ``num_generations``, KL coefficient
``beta``, ``max_steps``, ``max_completion_length``, ...); :func:`grpo_config` only sets
defaults that fit a CPU (:data:`EKT_DEFAULTS`).

Completion layouts end their prompt with ``def solution():\\n``; BPE tokenizers merge
that newline with the next line's indentation, so a prompt ending on a bare newline
token is one the model never saw before an indented line (see the sampler's token
healing, ``ekt.generation.backends.torch_sampler``). The prompt given to TRL therefore ends at the
``:`` and the completion is read from after its first newline, as the healed sampler
reads it.

Resume: checkpoints go to ``checkpoints/`` every ``save_steps``; a rerun with the same
model, problems and settings resumes from the last complete one through TRL's
``resume_from_checkpoint``, and drops the rollout records and log lines of the steps
after it (they are redone). Checkpoints left by other settings are cleared. A folder
with ``summary.json`` is done and is not trained again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ekt.data.extract import extract, runnable
from ekt.data.prompt_format import PromptFormat, load_format
from ekt.errors import EktError
from ekt.generation.backends.torch_sampler import TransformersSampler
from ekt.generation.config import SamplingParams
from ekt.generation.sampler import truncate_at_stop
from ekt.methods.base import (
    EVERY_STUDENT,
    OWN_ROLLOUTS,
    Context,
    Cost,
    Fitted,
    Method,
    model_named,
)
from ekt.models import load_model
from ekt.records import (
    Execution,
    JsonlWriter,
    Problem,
    Rollout,
    read_jsonl,
    write_json_atomic,
    write_jsonl_atomic,
)
from ekt.sandbox.pool import Sandbox, SandboxConfig
from ekt.training.train import (
    _last_complete_checkpoint,
    _log_callback,
    _mixed_precision,
    _prepare_checkpoints,
    _trim_log,
    console_output,
)
from ekt.verification.verify import NO_PROGRAM, _deny_task_data

ROLLOUTS = "rollouts.jsonl"
TRAIN_LOG = "train_log.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
MODEL = "model"

# Trainer settings ekt changes for a CPU run of minutes, for GRPO and on-policy distillation
# alike (ekt.methods.onpolicy); every other setting is TRL's.
CPU_DEFAULTS: dict[str, Any] = {
    "per_device_train_batch_size": 8,  # completions per step (GRPO: 2 questions x 4)
    "max_completion_length": 96,  # a procedural task's program is 30-80 tokens
    "max_steps": 20,
    "learning_rate": 5e-6,
    "lr_scheduler_type": "constant",
    "temperature": 0.8,
    "gradient_checkpointing": False,  # TRL's default True trades CPU time for memory
    "logging_steps": 1,
    "save_steps": 5,
    "save_total_limit": 2,
    "report_to": "none",
    "seed": 0,
    "disable_tqdm": True,
}
# GRPOConfig defaults ekt changes
EKT_DEFAULTS: dict[str, Any] = {
    **CPU_DEFAULTS,
    "num_generations": 4,  # group size
    "beta": 0.0,  # TRL's default: no KL term, so no reference model to run
}
# trainer fields that do not change the training trajectory (a resume may change them)
NOT_FINGERPRINTED = {
    "output_dir", "logging_dir", "logging_steps", "save_steps", "save_total_limit",
    "report_to", "disable_tqdm", "log_completions", "num_completions_to_print",
    "logging_first_step", "logging_strategy", "save_strategy", "dataloader_num_workers",
    "gradient_checkpointing",
}  # fmt: skip


# the GRPO log entries printed on the console (train_log.jsonl keeps all of TRL's)
CONSOLE_KEYS = ("loss", "reward", "reward_std", "frac_reward_zero_std", "completions/mean_length",
                "learning_rate", "step_time", "train_runtime")  # fmt: skip


def trl_config(cls: Any, defaults: dict[str, Any], out_dir: str | Path, device: str | None,
               overrides: dict[str, Any]) -> Any:  # fmt: skip
    """A TRL config ``cls`` with ``defaults``, checkpoints under ``out_dir/checkpoints`` and
    the precision ekt picks for the device; ``overrides`` are its fields."""
    use_cpu, bf16, fp16 = _mixed_precision(device)
    kw = {**defaults, "use_cpu": use_cpu, "bf16": bf16, "fp16": fp16, **overrides}
    kw["output_dir"] = str(Path(out_dir) / CHECKPOINTS)
    return cls(**kw)


def finished(out: Path, what: str) -> dict | None:
    """The summary of a run already finished in ``out`` (said in one line), else None."""
    if not (out / SUMMARY).exists():
        return None
    got = json.loads((out / SUMMARY).read_text(encoding="utf-8"))
    print(f"{what}: {out} is done ({got['steps']} steps); skipping")
    return got


def grpo_config(out_dir: str | Path, device: str | None = None, **overrides: Any) -> Any:
    """TRL's ``GRPOConfig`` with ekt's defaults (:data:`EKT_DEFAULTS`), checkpoints under
    ``out_dir/checkpoints`` and the precision ekt picks for the device; ``overrides`` are
    GRPOConfig fields."""
    from trl import GRPOConfig

    return trl_config(GRPOConfig, EKT_DEFAULTS, out_dir, device, overrides)


@dataclass
class GRPOResult:
    model: str  # the trained student (an HF checkpoint folder)
    steps: int
    rollouts: int  # completions sampled and rewarded
    executions: int  # programs run in the sandbox
    completion_tokens: int  # student tokens generated
    mean_reward: list[float]  # per step, from the rollout records
    seconds: float
    resumed_from: str | None = None


def student_prompts(fmt: PromptFormat, problems: Sequence[Problem]) -> tuple[list[Any], bool]:
    """The zero-shot prompt of each problem as TRL is given it, and whether the completion
    layout's final newline was moved out of the prompt (the module doc, healing)."""
    prompts = [fmt.student(p) for p in problems]
    if fmt.is_chat:
        return prompts, False
    healed = all(isinstance(p, str) and p.endswith("\n") for p in prompts)
    return ([p[:-1] for p in prompts] if healed else prompts), healed


def completion_program(text: str, fmt: PromptFormat, healed: bool) -> tuple[str, str]:
    """(program, why none) of one completion: what the generate stage would extract from
    the same reply: cut before the format's first stop string, as the sampler cuts it (a
    healed prompt's newline is the completion's first character)."""
    if healed:
        if not text.startswith("\n"):
            return "", "the completion does not continue the def line on a new line"
        text = text[1:]
    text, _ = truncate_at_stop(text, fmt.stop)
    got = extract(text, fmt.entry_point, fmt.header)
    return got.program, got.error


@dataclass
class GRPOOptions:
    """ekt's settings of a GRPO run beyond TRL's ``GRPOConfig``."""

    rollouts: str = (
        "ekt"  # ekt: ekt's TransformersSampler samples the rollouts | trl: TRL's generate
    )
    sampler_batch_size: int = 64  # rows ekt's sampler decodes together

    def validate(self) -> None:
        if self.rollouts not in ("ekt", "trl"):
            raise EktError(f"grpo rollouts must be ekt or trl, got {self.rollouts!r}")
        if self.sampler_batch_size < 1:
            raise EktError(f"grpo sampler_batch_size must be >= 1, got {self.sampler_batch_size}")


class EktRollouts:
    """TRL ``rollout_func``: the batch's completions sampled by ekt's ``TransformersSampler``
    from the model being trained (stop strings, token healing, one prefill per question).

    TRL's batch holds each question ``num_generations`` times in a row; each run of equal
    prompts is one request of that many samples, seeded by the step and the run's position
    (``derive_seed``), so a resumed step draws what it drew before. A completion's ids are
    its text re-tokenised, with the stop string that ended it (or EOS) kept, so the policy
    is trained on what it sampled up to where sampling stopped, and not beyond.
    """

    def __init__(self, tok: Any, fmt: PromptFormat, healed: bool, cfg: Any, batch_size: int):
        self.tok, self.fmt, self.healed, self.cfg = tok, fmt, healed, cfg
        self.batch_size = batch_size
        self.sampler: TransformersSampler | None = None

    def __call__(self, prompts: Sequence[Any], trainer: Any) -> dict[str, Any]:
        import torch

        model = trainer.accelerator.unwrap_model(trainer.model)
        if self.sampler is None or self.sampler.model is not model:
            self.sampler = TransformersSampler(model, self.tok, self.batch_size, progress=False)
        runs: list[tuple[Any, int]] = []  # (prompt, repeats), in batch order
        for p in prompts:
            if runs and runs[-1][0] == p:
                runs[-1] = (p, runs[-1][1] + 1)
            else:
                runs.append((p, 1))
        step = trainer.state.global_step
        got: dict[tuple[str, int], Any] = {}
        for n in sorted({k for _, k in runs}):
            requests = [(f"{step}/{i}", p + "\n" if self.healed else p)
                        for i, (p, k) in enumerate(runs) if k == n]  # fmt: skip
            params = SamplingParams(
                n=n, temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                max_new_tokens=self.cfg.max_completion_length, stop=self.fmt.stop,
                seed=self.cfg.seed,
            )  # fmt: skip
            was_training = model.training
            model.eval()
            with torch.no_grad():
                for c in self.sampler.sample(requests, params):
                    got[(c.problem_id, c.sample_idx)] = c
            model.train(was_training)
        prompt_ids, completion_ids = [], []
        for i, (p, k) in enumerate(runs):
            ids = self._prompt_ids(p)
            for j in range(k):
                prompt_ids.append(ids)
                completion_ids.append(self._completion_ids(got[(f"{step}/{i}", j)]))
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    def _prompt_ids(self, prompt: Any) -> list[int]:
        if isinstance(prompt, str):
            return list(self.tok(prompt).input_ids)
        from ekt.generation.sampler import chat_ids

        return chat_ids(self.tok, prompt)

    def _completion_ids(self, c: Any) -> list[int]:
        text = ("\n" if self.healed else "") + c.text + c.stop
        ids = list(self.tok(text, add_special_tokens=False).input_ids)
        eos = self.tok.eos_token_id
        if not c.stop and c.n_tokens < self.cfg.max_completion_length and eos is not None:
            ids.append(eos)  # ended by EOS
        return ids[: self.cfg.max_completion_length]


class SandboxReward:
    """TRL reward function: each completion's program, run in one warm sandbox pool and
    graded by the task; writes one :class:`~ekt.records.Rollout` per completion."""

    __name__ = "sandbox"  # TRL logs this reward as rewards/sandbox/mean

    def __init__(
        self,
        box: Any,
        task: Any,
        problems: Sequence[Problem],
        fmt: PromptFormat,
        healed: bool,
        out: str | Path,
    ):
        self.box = box
        self.task = task
        self.problems = {p.id: p for p in problems}
        self.fmt = fmt
        self.healed = healed
        self.out = Path(out)
        self.executions = 0

    def score(
        self, completions: Sequence[Any], problem_ids: Sequence[str], step: int,
        n_tokens: Sequence[int] | None = None,
    ) -> list[Rollout]:  # fmt: skip
        """The graded rollout of each completion (a plain function of the sandbox's
        results: the reward is 1.0 exactly when the task's grader accepts the value)."""
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        found = [completion_program(t, self.fmt, self.healed) for t in texts]
        entry = self.fmt.entry_point
        results = self.box.run(runnable(p, entry) for p, _ in found if p)
        out = []
        rows = zip(texts, found, problem_ids, strict=True)
        for i, (text, (program, why), pid) in enumerate(rows):
            r = Rollout(step=step, problem_id=pid, completion=text, program=program,
                        status=NO_PROGRAM, error=why, index=i,
                        n_tokens=int(n_tokens[i]) if n_tokens is not None else 0)  # fmt: skip
            if program:
                ex = next(results)
                ex = ex if isinstance(ex, Execution) else Execution(**ex)
                self.executions += 1
                r.status, r.value, r.error = ex.status, ex.value, ex.error
                r.correct = bool(self.task.grade(ex, self.problems[pid]))
                r.reward = 1.0 if r.correct else 0.0
            out.append(r)
        return out

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        problem_id: Sequence[str] | None = None,
        trainer_state: Any = None,
        **_: Any,
    ) -> list[float]:
        if problem_id is None:
            raise EktError("the GRPO dataset needs a problem_id column")
        step = (trainer_state.global_step if trainer_state is not None else 0) + 1
        lengths = [len(c) for c in completion_ids] if completion_ids is not None else None
        rollouts = self.score(completions, problem_id, step, lengths)
        with JsonlWriter(self.out) as w:
            for r in rollouts:
                w.write(r)
        return [r.reward for r in rollouts]


def epoch_order(rows: Sequence[dict], cfg: Any) -> list[dict]:
    """The questions in training order: every epoch a seeded shuffle of its own, laid end to
    end as one long epoch covering ``max_steps``.

    TRL shuffles each epoch with one generator drawn again per epoch; a resumed run starts a
    fresh generator, so after an epoch boundary it would see other questions than an
    uninterrupted one. Within one long epoch the trainer's own batch skipping is exact.
    """
    import random

    per_step = (cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
                * max(cfg.world_size, 1)) // max(getattr(cfg, "num_generations", 1), 1)  # fmt: skip
    if cfg.max_steps > 0:
        epochs = math.ceil(cfg.max_steps * max(per_step, 1) / len(rows)) + 1
    else:
        epochs = max(math.ceil(cfg.num_train_epochs), 1)
        cfg.num_train_epochs = 1  # the epochs are laid end to end
    out: list[dict] = []
    for e in range(epochs):
        order = list(rows)
        if cfg.shuffle_dataset:
            random.Random(f"{cfg.seed}:{e}").shuffle(order)
        out += order
    return out


def _fingerprint(student: str, problems: Sequence[Problem], fmt: PromptFormat, cfg: Any) -> dict:
    digest = hashlib.sha256()
    for p in problems:
        digest.update(f"{p.id}\x00{p.question}\x00{p.answer}\x00".encode())
    settings = {k: v for k, v in cfg.to_dict().items() if k not in NOT_FINGERPRINTED}
    return json.loads(json.dumps({
        "model": student, "problems_sha256": digest.hexdigest(), "prompt_format": fmt.label,
        "config": settings,
    }, default=str))  # fmt: skip


def _trim_rollouts(path: Path, max_step: int) -> None:
    """Keep the rollouts of steps up to ``max_step`` (the checkpoint a resume starts from)."""
    if path.exists():
        keep = [obj for _, obj in read_jsonl(path) if obj.get("step", 0) <= max_step]
        write_jsonl_atomic(path, keep)


def mean_reward_by_step(path: str | Path) -> dict[int, float]:
    """The mean reward of each step's rollouts, from ``rollouts.jsonl``."""
    sums: dict[int, list[float]] = {}
    for _, obj in read_jsonl(path):
        s = sums.setdefault(int(obj["step"]), [0.0, 0.0])
        s[0] += float(obj["reward"])
        s[1] += 1
    return {k: v[0] / v[1] for k, v in sorted(sums.items())}


def train_grpo(
    student: str,
    problems: Sequence[Problem],
    task: Any,
    out_dir: str | Path,
    config: Any = None,
    sandbox_config: SandboxConfig | None = None,
    prompt_format: str | PromptFormat | None = None,
    device: str | None = None,
    callbacks: Sequence[Any] = (),
    options: GRPOOptions | None = None,
) -> GRPOResult:
    """GRPO-train ``student`` on ``problems`` (see the module doc); ``config``: a TRL
    ``GRPOConfig`` (default :func:`grpo_config`), whose ``output_dir`` is replaced by
    ``out_dir/checkpoints``; ``callbacks``: more ``TrainerCallback``s."""
    from datasets import Dataset
    from trl import GRPOTrainer

    if not problems:
        raise EktError("GRPO needs at least one training question")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = finished(out, "grpo")
    if done is not None:
        return GRPOResult(**done)
    opts = options or GRPOOptions()
    opts.validate()
    cfg = copy.deepcopy(config) if config is not None else grpo_config(out, device)
    cfg.output_dir = str(out / CHECKPOINTS)
    fmt = load_format(prompt_format)
    prompts, healed = student_prompts(fmt, problems)

    ckpt_dir = out / CHECKPOINTS
    run = {**_fingerprint(student, problems, fmt, cfg), "options": asdict(opts)}
    last = _prepare_checkpoints(ckpt_dir, run, resume=True)  # a run of the same settings resumes
    if last is not None:
        last = _last_complete_checkpoint(ckpt_dir, True)
    rollouts_path, log_path = out / ROLLOUTS, out / TRAIN_LOG
    if last is None:  # a fresh start: nothing of an earlier try counts
        rollouts_path.unlink(missing_ok=True)
        log_path.unlink(missing_ok=True)
    else:
        step = int(Path(last).name.rsplit("-", 1)[-1])
        print(f"grpo: resuming from {last}")
        _trim_rollouts(rollouts_path, step)
        _trim_log(log_path, step)

    model, tok = load_model(student, device=device, dtype="float32")
    tok.padding_side = "left"
    rows = [{"prompt": pr, "problem_id": p.id} for pr, p in zip(prompts, problems, strict=True)]
    data = Dataset.from_list(epoch_order(rows, cfg))
    cfg.shuffle_dataset = False  # ekt's order (epoch_order) is the one resumed exactly
    t0 = time.time()
    box_cfg = _deny_task_data(sandbox_config or SandboxConfig(), task, rollouts_path)
    with Sandbox(box_cfg) as box:
        reward = SandboxReward(box, task, problems, fmt, healed, rollouts_path)
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward,
            args=cfg,
            train_dataset=data,
            processing_class=tok,
            callbacks=[_log_callback(log_path), *callbacks],
            rollout_func=(
                EktRollouts(tok, fmt, healed, cfg, opts.sampler_batch_size)
                if opts.rollouts == "ekt"
                else None
            ),
        )
        console_output(trainer, CONSOLE_KEYS)
        trainer.train(resume_from_checkpoint=last)
        trainer.save_model(str(out / MODEL))
        tok.save_pretrained(str(out / MODEL))
    rewards = mean_reward_by_step(rollouts_path)
    n_tokens = executions = n = 0
    for _, obj in read_jsonl(rollouts_path):
        n += 1
        n_tokens += int(obj.get("n_tokens", 0))
        executions += obj["status"] != NO_PROGRAM
    result = GRPOResult(
        model=str(out / MODEL),
        steps=int(trainer.state.global_step),
        rollouts=n,
        executions=executions,
        completion_tokens=n_tokens,
        mean_reward=[round(v, 4) for v in rewards.values()],
        seconds=round(time.time() - t0, 1),
        resumed_from=last,
    )
    write_json_atomic(out / SUMMARY, asdict(result))
    return result


# -- the method -----------------------------------------------------------------------------


def check_trl_keys(cls_path: str, block: str, keys: dict[str, Any]) -> None:
    """Refuse a key of ``block.trl`` that is no field of TRL's config ``cls_path``."""
    if not keys:
        return  # nothing to check: TRL stays unimported
    import dataclasses
    import importlib

    module, name = cls_path.rsplit(".", 1)
    fields = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
    unknown = sorted(set(keys) - fields)
    if unknown:
        raise EktError(f"{block}.trl: {', '.join(unknown)}: not a field of {cls_path}")
    if "output_dir" in keys:
        raise EktError(f"{block}.trl.output_dir: set by ekt (<student folder>/checkpoints)")


@dataclass
class GRPOSettings(GRPOOptions):
    """``grpo:`` block of a run config."""

    start: str | None = None
    """the model GRPO starts from: None: the run's student; a method listed before grpo
    (e.g. ekt): that method's trained student (RL after fine-tuning); else a model spec"""
    trl: dict[str, Any] = field(default_factory=dict)
    """TRL GRPOConfig fields over ekt's CPU defaults (ekt.methods.grpo.EKT_DEFAULTS), e.g.
    {num_generations: 8, beta: 0.04, max_steps: 40, max_completion_length: 96}"""

    def validate(self) -> None:
        super().validate()
        check_trl_keys("trl.GRPOConfig", "grpo", self.trl)


def summary_tokens(log: Path) -> int:
    """Tokens the trainer processed (TRL's cumulative ``num_tokens`` in its log)."""
    return max((int(obj.get("num_tokens", 0)) for _, obj in read_jsonl(log)), default=0)


def fit(ctx: Context, problems: Sequence[Problem], pairs: Path | None) -> Fitted:
    cfg, out = ctx.cfg, ctx.layout.student("grpo")
    start, said = model_named(ctx, cfg.grpo.start, cfg.student)
    if start is None:
        print(f"grpo: its start, {said}, was not trained; this method is skipped")
        return Fitted(None, skipped=f"grpo.start: {cfg.grpo.start} was skipped")
    with ctx.stage(f"grpo: {said} learns from the sandbox's reward on its rollouts"):
        res = train_grpo(
            start, problems, ctx.task, out,
            config=grpo_config(out, cfg.device, **cfg.grpo.trl),
            sandbox_config=ctx.sandbox, prompt_format=cfg.student_prompt_format,
            device=cfg.device, options=cfg.grpo,
        )  # fmt: skip
        print(f"grpo: {res.steps} steps, {res.rollouts} rollouts, mean reward per step "
              f"{res.mean_reward}")  # fmt: skip
    cost = Cost(student_tokens_generated=res.completion_tokens,
                training_tokens=summary_tokens(out / TRAIN_LOG),
                sandbox_executions=res.executions)  # fmt: skip
    return Fitted(res.model, None, cost)


METHOD = Method(
    name="grpo",
    summary="RL from the sandbox's verdict on its own rollouts (TRL's GRPOTrainer)",
    consumes=(OWN_ROLLOUTS,),
    fit=fit,
    settings_key="grpo",
    settings=GRPOSettings,
    builds_on="grpo.start",
    # started from another method's student (grpo.start), it is stale with that student too
    # (ekt.pipeline.run.stale_outputs follows builds_on)
    invalidated_by=(*EVERY_STUDENT, "grpo"),
    harmless=tuple(f"grpo.trl.{k}" for k in sorted(NOT_FINGERPRINTED)),
)
