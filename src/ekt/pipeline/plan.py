"""The bill before paying it: ``ekt run CONFIG --dry-run`` plans an experiment without a model.

``plan_experiment(cfg, out_dir)`` lists every stage ``ekt run`` would do (teacher
sampling, verification, supervised reference programs, each method's training, the
live KD teacher's forward passes, expert-iteration rounds, every evaluation) with
its prompts, samples, tokens and cost; ``render`` prints it, ``Plan.to_dict`` is its
JSON form. Nothing is loaded but tokenizers; nothing is written.

* **Prompt tokens** are counted exactly: each question's real prompt (the configured
  prompt format, teacher or student layout) through the model's own tokenizer, as
  the sampler encodes it. A model whose tokenizer is not on this machine (a hosted
  API's model name, a hub id not in the local cache) is estimated at 4 characters a
  token, and the plan says so. Prompt tokens are what is *sent*: per request for
  the openai backend (``backend.n_per_request`` samples each), once per question
  and call for the local engines, which share a prompt's cache between its samples.
* **Completion tokens** are at most ``max_new_tokens`` per sample (the ``max``
  columns). Where a previous run in the run folder sampled the same stage, its
  measured tokens per sample (the records' ``n_tokens``, as
  ``ekt.generation.generate.usage`` sums them) give the ``expected`` columns.
* **The adaptive teacher budget** (``teacher_sampling.budget: adaptive``) is
  projected with ``ekt.generation.budget.expected_samples``: each question's
  success probability is measured from a previous run's verified records
  (``teacher/executions.jsonl``) where there are some, else the projection is shown
  for assumed pass@1 values (``ASSUMED_PASS_AT_1``), labelled as assumptions.
* **Cost** is ``ekt.generation.generate.cost_of`` with the stage's backend price
  table (``price_input_per_mtok``, ``price_output_per_mtok``): the teacher's
  backend for the teacher's sampling and evaluation, ``eval.backend`` for students.
* **A matrix** (``teachers:``/``students:``) lists every cell; a stage the cells
  share (a teacher's samples, a student's base evaluation...) is listed once, as
  ``ekt.pipeline.matrix`` runs it once, and the totals count it once.

A previous run's measurements are used only when its ``config.yaml`` agrees on the
settings that shape them (model, prompt format, temperature, max_new_tokens...);
otherwise the plan says which key differs and falls back to the bounds.

This module is the planner (``plan_experiment``: the stages of each cell and their
bill). What it measures with (tokenizers, a previous run's files, training steps) is
in ``ekt.pipeline.plan_measure``; the ``Stage``/``Plan`` records and the printed table
are in ``ekt.pipeline.plan_render``. Both are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ekt.data.prompt_format import load_format
from ekt.data.supervised import reference_program
from ekt.data.tasks import get_task
from ekt.errors import EktError
from ekt.generation.backends import BackendConfig
from ekt.generation.backends.openai_compat import CHARS_PER_TOKEN
from ekt.generation.budget import expected_samples
from ekt.generation.config import SamplingParams
from ekt.generation.generate import cost_of, prompt_maker
from ekt.layout import RunLayout
from ekt.methods import registry
from ekt.methods.base import TEACHER_PAIRS, TEACHER_SAMPLES
from ekt.methods.grpo import CPU_DEFAULTS
from ekt.models import PRESETS, preset_gguf, resolve_model
from ekt.pipeline.config import RunConfig, dump_config
from ekt.pipeline.matrix import pair_config, slug
from ekt.pipeline.plan_estimate import estimate, previous_seconds
from ekt.pipeline.plan_measure import (
    Measured,
    count_records,
    load_tokenizer,
    measured_usage,
    prompt_lengths,
    results_usage,
    round_attempted,
    success_counts,
    train_steps,
)
from ekt.pipeline.plan_render import Plan, Stage, num, render
from ekt.pipeline.run import config_changes
from ekt.records import Problem

# pass@1 values the adaptive budget is projected at when no previous run measured any
ASSUMED_PASS_AT_1 = (0.05, 0.3, 0.6)

# -- the planner ---------------------------------------------------------------------------

TokenizerLoader = Callable[[str], Any | None]


# The settings a previous run's teacher samples, or evaluations, must share to size a stage.
_TEACHER_KEYS = (
    "teacher", "task", "data_dir", "teacher_sampling.temperature", "teacher_sampling.top_p",
    "teacher_sampling.max_new_tokens", "teacher_sampling.stop", "teacher_sampling.prompt_format",
    "teacher_sampling.backend.served_model",
)
_EVAL_KEYS = (
    "task", "data_dir", "eval.temperature", "eval.top_p", "eval.max_new_tokens", "eval.stop",
    "eval.greedy", "teacher_sampling.prompt_format", "student_prompt_format",
)


@dataclass(frozen=True)
class _Job:
    """What one sampling stage sends: a model's questions, in its prompt and format, to its
    engine."""

    spec: str
    problems: Sequence[Problem]
    prompt: str  # teacher (few-shot) or student (zero-shot)
    fmt: Any  # the prompt format (a name, a path or a PromptFormat)
    backend: BackendConfig


@dataclass(frozen=True)
class _Evaluated:
    """A model evaluated: its label, how it samples, and where its evaluation is shared."""

    label: str
    spec: str
    prompt: str
    fmt: Any
    backend: BackendConfig
    where: str  # the folder shared by the cells that evaluate the same model ("": the cell's)
    ident: str  # what makes the model the same in two cells

    def job(self, problems: Sequence[Problem]) -> _Job:
        return _Job(self.spec, problems, self.prompt, self.fmt, self.backend)


class _Planner:
    def __init__(self, cfg: RunConfig, out_dir: str | Path | None, tokenizer: TokenizerLoader):
        self.cfg = cfg
        self.root = RunLayout.of(cfg.name, out_dir)
        self.tokenizer = tokenizer
        fmts = (cfg.teacher_sampling.prompt_format, cfg.student_prompt_format)
        self.task = cfg.load_task(fmts)
        train = self.task.load(cfg.train_split)
        self.train = train[: cfg.train_limit] if cfg.train_limit else train
        ev = self.task.load(cfg.eval.split)
        self.eval = ev[: cfg.eval.limit] if cfg.eval.limit else ev
        self.transfer = []  # (task name, split, problems) of eval.tasks, as run.py loads them
        for name in cfg.eval.tasks:
            t = get_task(name, cfg.eval.task_data.get(name))
            split = "test" if "test" in t.splits else t.splits[0]
            self.transfer.append((t.name, split, t.load(split)[: cfg.eval.limit or None]))
        self.stages: dict[str, Stage] = {}
        self.notes: list[str] = []
        self.no_tokenizer: list[str] = []  # specs whose prompt tokens are estimated
        self._lengths: dict[tuple, tuple[list[int], bool]] = {}

    # -- helpers -------------------------------------------------------------
    def lengths(self, job: _Job) -> tuple[list[int], bool]:
        key = (job.spec, tuple(p.id for p in job.problems), job.prompt, job.fmt, job.backend.name)
        if key not in self._lengths:
            make = prompt_maker(job.prompt, load_format(job.fmt))
            tok = self.tokenizer(job.spec)
            openai = job.backend.name == "openai"
            lens, exact = prompt_lengths(tok, [make(p) for p in job.problems], openai)
            self._lengths[key] = (lens, exact)
        return self._lengths[key]

    def add(self, stage: Stage) -> None:
        if stage.key not in self.stages:
            self.stages[stage.key] = stage

    def previous_config(self, layout: RunLayout) -> dict | None:
        try:
            old = yaml.safe_load(layout.config.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            return None
        return old if isinstance(old, dict) else None

    def differs(self, layout: RunLayout, pcfg: RunConfig, keys: Sequence[str]) -> str | None:
        """The first of ``keys`` (dotted prefixes) a previous run's config sets otherwise."""
        old = self.previous_config(layout)
        if old is None:
            return None
        changes = config_changes(old, yaml.safe_load(dump_config(pcfg)))
        for k, (a, b) in changes.items():
            if any(k == p or k.startswith(p + ".") for p in keys):
                return f"{k}: {a} -> {b}"
        return None

    def sampling(
        self,
        stage: Stage,
        job: _Job,
        params: SamplingParams,
        *,
        greedy_too: bool = False,
        measured: Measured | None = None,
        expected_per_question: Sequence[float] | None = None,
        round_size: int | None = None,
    ) -> Stage:
        """Fill a sampling stage: ``params.n`` samples per question, ``params.max_new_tokens``
        tokens each at most (plus one greedy per question with ``greedy_too``);
        ``expected_per_question``: adaptive's expected samples each."""
        spec, backend = job.spec, job.backend
        n, max_new_tokens = params.n, params.max_new_tokens
        lens, exact = self.lengths(job)
        q = len(job.problems)
        per_q_max = [float(n)] * q
        per_q_exp = list(expected_per_question) if expected_per_question is not None else per_q_max
        # calls a question's prompt is sent in: one, or one per round of an adaptive budget
        calls_max = [float(math.ceil(n / round_size)) if round_size else 1.0] * q
        calls_exp = calls_max
        if round_size and expected_per_question is not None:
            calls_exp = [e / round_size for e in per_q_exp]  # about: the last round is smaller
        elif expected_per_question is not None:  # one call, made for this share of questions
            calls_exp = [e / n for e in per_q_exp]
        extra = 1 if greedy_too else 0
        stage.api = backend.name == "openai"
        stage.prompts = q
        stage.samples_max = sum(per_q_max) + extra * q
        stage.samples_expected = sum(per_q_exp) + extra * q

        def sent(per_q: list[float], calls: list[float]) -> float:
            total = 0.0
            for length, s, c in zip(lens, per_q, calls, strict=True):
                total += length * (_requests(s, c, backend) + (1 if greedy_too else 0))
            return total

        stage.prompt_tokens_max = sent(per_q_max, calls_max)
        stage.prompt_tokens_expected = sent(per_q_exp, calls_exp)
        if not exact:
            stage.approx_prompt = True
            if spec not in self.no_tokenizer:
                self.no_tokenizer.append(spec)
            if measured is not None and measured.prompt_tokens:
                stage.prompt_tokens_expected = measured.prompt_per_sample * stage.samples_expected
                stage.notes.append("expected prompt tokens: the previous run's billed tokens")
        stage.completion_tokens_max = stage.samples_max * max_new_tokens
        if measured is not None:
            stage.completion_tokens_expected = measured.per_sample * stage.samples_expected
            stage.notes.append(
                f"measured: {measured.per_sample:.1f} completion tokens per sample over "
                f"{num(measured.samples)} samples of the previous run"
            )
        else:
            stage.completion_tokens_expected = stage.samples_expected * max_new_tokens
        price = backend.price
        stage.cost_max = cost_of(stage.prompt_tokens_max, stage.completion_tokens_max, price)
        stage.cost_expected = cost_of(
            stage.prompt_tokens_expected,
            stage.completion_tokens_expected,
            price,
        )
        return stage

    # -- the stages of one cell ----------------------------------------------
    def cell(self, pcfg: RunConfig, layout: RunLayout, label: str, matrix: bool) -> None:
        """Every stage of one (teacher, student) cell: teacher sampling and verification,
        the reference programs, each method's training, and every evaluation."""
        shared = "shared" if matrix else ""
        self.teacher_stages(pcfg, layout, shared)
        pairs_upper = self.pairs_upper(pcfg, shared)
        for method in pcfg.methods:
            if method == "expert-iteration":
                self.expert_iteration(pcfg, layout, label, matrix)
                continue
            if method not in pairs_upper:  # trains on its own rollouts: its steps are set
                self.rollout_stage(pcfg, method, label)
                continue
            self.train_stage(pcfg, layout, method, pairs_upper[method], label, matrix)
        for model in self.eval_models(pcfg, label, shared):
            self.eval_stages(pcfg, layout, model)
        self.budget_note(pcfg)

    def budget_note(self, cfg: RunConfig) -> None:
        """What ``teacher_token_budget`` does to this plan (its stages show the uncapped run)."""
        budget = cfg.teacher_token_budget
        if budget is None:
            return
        capped = [m for m in cfg.methods if registry.get(m).uses_teacher]
        which = ", ".join(capped) or "no method here uses the teacher"
        note = (f"teacher_token_budget {num(budget)}: each method's teacher tokens (sampled "
                f"plus scored) at most that ({which}); the training rows above are upper "
                "bounds")  # fmt: skip
        sampled = [s for k, s in self.stages.items() if k == f"teacher:{cfg.teacher}"]
        most = sum(s.completion_tokens_max for s in sampled)
        if sampled and most < budget:
            note += (f"; the teacher's sampling draws at most {num(most)} tokens, less than the "
                     "budget: raise teacher_sampling.n to spend it")  # fmt: skip
        if note not in self.notes:
            self.notes.append(note)

    def teacher_stages(self, cfg: RunConfig, layout: RunLayout, shared: str) -> None:
        """The teacher's sampling (sized from a previous run of the same settings, if
        any) and the verification of its programs, for the methods that need them."""
        t, ts = cfg.teacher, cfg.teacher_sampling
        consumed = {c for m in cfg.methods for c in registry.get(m).consumes}
        if {TEACHER_PAIRS, TEACHER_SAMPLES} & consumed:
            stage = Stage(f"teacher:{t}", f"teacher sampling ({cfg.train_split})", t, shared)
            why = self.differs(layout, cfg, _TEACHER_KEYS)
            measured = None
            if not why:
                measured = measured_usage(layout.teacher) or results_usage(layout.results)
            counts = {} if why else success_counts(layout.teacher_executions)
            if why:  # a previous run of other settings: its figures would mislead
                stage.notes.append(f"previous run not used: {why}")
            exp, budget = self.budget(counts, stage)
            job = _Job(t, self.train, "teacher", self.task.prompt_format(ts.prompt_format),
                       ts.backend)  # fmt: skip
            self.sampling(
                stage, job, ts, measured=measured, expected_per_question=exp,
                round_size=ts.round_size if ts.budget == "adaptive" else None,
            )  # fmt: skip
            stage.budget = budget
            if measured is not None:  # its throughput: the previous run's time for it
                stage.measured_seconds = previous_seconds(layout.results, "teacher ")
                stage.measured_tokens = measured.completion_tokens
            self.add(stage)
        if TEACHER_PAIRS in consumed:
            v = self.stages[f"teacher:{t}"]
            self.add(Stage(f"verify:{t}", "verify teacher programs (sandbox)", "", shared,
                           prompts=len(self.train), programs=v.samples_expected))  # fmt: skip

    def pairs_upper(self, cfg: RunConfig, shared: str) -> dict[str, int]:
        """At most how many training pairs each method gets; with 'supervised', the stage
        that runs the reference programs."""
        q, ts = len(self.train), cfg.teacher_sampling
        seq_kd_n = min(ts.n, cfg.seq_kd.per_question or ts.n)
        pairs_upper = {"ekt": q if cfg.keep == "first" else q * ts.n, "seq-kd": q * seq_kd_n}
        pairs_upper["kd"] = pairs_upper["ekt"]
        if "supervised" in cfg.methods:
            refs = sum(reference_program(p.solution) is not None for p in self.train)
            self.add(
                Stage(
                    "supervised", "supervised reference programs (sandbox)", "", shared,
                    prompts=q, programs=refs,
                    notes=[f"{num(refs)} of {num(q)} questions have annotations forming a program"],
                )
            )  # fmt: skip
            pairs_upper["supervised"] = refs
        return pairs_upper

    def eval_models(self, cfg: RunConfig, label: str, shared: str) -> list[_Evaluated]:
        """The models evaluated."""
        ts, t, s, e = cfg.teacher_sampling, cfg.teacher, cfg.student, cfg.eval.backend
        sfmt = cfg.student_prompt_format
        models: list[_Evaluated] = []
        if cfg.evaluate_teacher:
            fmt = self.task.prompt_format(ts.prompt_format)
            models.append(_Evaluated("teacher", t, "teacher", fmt, ts.backend, shared, t))
        if cfg.evaluate_base_student:
            models.append(_Evaluated("student-base", s, "student", sfmt, e, shared, s))
        for method in cfg.methods:
            where = label if registry.get(method).uses_teacher else shared
            ident = s if where == shared else f"{t}|{s}"
            models.append(_Evaluated(f"student-{method}", s, "student", sfmt, e, where, ident))
        return models

    def eval_stages(self, cfg: RunConfig, layout: RunLayout, model: _Evaluated) -> None:
        """One model's evaluation on the task's eval split and on each transfer task."""
        ev = cfg.eval
        lab, spec, where, ident = model.label, model.spec, model.where, model.ident
        sets = [(self.task.name, ev.split, self.eval, None)]
        sets += [(n, sp, probs, n) for n, sp, probs in self.transfer]
        for task_name, split, problems, sub in sets:
            stage = Stage(
                f"eval:{lab}:{ident}:{task_name}",
                f"evaluate {lab} ({task_name} {split}, n={ev.n}"
                + (" + greedy)" if ev.greedy else ")"),
                spec,
                where,
            )
            evl = layout.eval(lab, sub)
            why = self.differs(
                layout, cfg, (*_EVAL_KEYS, "teacher" if lab == "teacher" else "student")
            )
            measured = (
                None if why else measured_usage(evl.samples("sampled"), evl.samples("greedy"))
            )
            self.sampling(stage, model.job(problems), ev, greedy_too=ev.greedy, measured=measured)
            if measured is not None:  # its throughput: the previous run's time for it
                stage.measured_seconds = previous_seconds(evl.scores)
                stage.measured_tokens = measured.completion_tokens
            self.add(stage)

    def budget(
        self, counts: dict[str, tuple[int, int]], stage: Stage
    ) -> tuple[list[float] | None, dict[str, Any] | None]:
        """Adaptive's expected samples per question (None: the configured budget is full),
        and the full-against-adaptive comparison shown with the teacher's sampling."""
        cfg, ts = self.cfg, self.cfg.teacher_sampling
        q, n = len(self.train), ts.n
        full = q * n
        args = (n, ts.round_size, cfg.keep, ts.target, ts.give_up_after)
        known = [counts[p.id] for p in self.train if p.id in counts and counts[p.id][1]]
        if not known and ts.budget == "full":
            return None, None
        out: dict[str, Any] = {"configured": ts.budget, "full": full, "round_size": ts.round_size}
        if known:
            mean = sum(c for c, _ in known) / sum(v for _, v in known)
            ps = [
                counts[p.id][0] / counts[p.id][1] if p.id in counts and counts[p.id][1] else mean
                for p in self.train
            ]
            per_q = [expected_samples(p, *args) for p in ps]
            out.update(
                adaptive=round(sum(per_q), 1),
                measured_questions=len(known),
                mean_pass_at_1=round(mean, 4),
            )
            if len(known) < q:
                stage.notes.append(
                    f"{q - len(known)} of {q} questions unmeasured: projected at "
                    f"the measured mean pass@1 {mean:.3f}"
                )
            return (per_q if ts.budget == "adaptive" else None), out
        out["assumed"] = {
            str(p): round(q * expected_samples(p, *args), 1) for p in ASSUMED_PASS_AT_1
        }
        stage.notes.append(
            "adaptive: no previous run measured pass@1; the projections are "
            "ASSUMPTIONS, the totals count the full budget (its ceiling)"
        )
        return None, out

    def rollout_stage(self, cfg: RunConfig, method: str, label: str) -> None:
        """A method learning from its own rollouts (grpo, on-policy): its TRL settings say
        its steps and the completions it samples (one per row of each step's batch)."""
        trl = getattr(cfg, registry.get(method).settings_key or "", None)
        trl = {**CPU_DEFAULTS, **getattr(trl, "trl", {})}
        steps = int(trl["max_steps"])
        rows = steps * int(trl["per_device_train_batch_size"])
        self.add(Stage(
            f"train:{method}:{cfg.student}", f"train {method} (its own rollouts)", cfg.student,
            label, prompts=len(self.train), samples_max=rows, samples_expected=rows,
            completion_tokens_max=rows * int(trl["max_completion_length"]),
            completion_tokens_expected=rows * int(trl["max_completion_length"]),
            programs=rows if method == "grpo" else 0, steps=steps,
        ))  # fmt: skip

    def train_stage(
        self, cfg: RunConfig, layout: RunLayout, method: str, upper: int, label: str, matrix: bool
    ) -> None:
        own = registry.get(method).uses_teacher  # depends on both models: the cell's own
        key = f"train:{method}:{cfg.teacher if own else ''}|{cfg.student}"
        where = label if own or not matrix else "shared"
        pairs = count_records(registry.get(method).pairs(layout))  # type: ignore[misc]
        if self.differs(
            layout,
            cfg,
            (
                "teacher",
                "teacher_sampling",
                "keep",
                "train_split",
                "train_limit",
                "task",
                "sandbox",
            ),
        ):
            pairs = None
        exact = pairs is not None
        n_pairs = pairs if exact else upper
        stage = Stage(
            key,
            f"train {method}",
            cfg.student,
            where,
            pairs=n_pairs,
            steps=train_steps(n_pairs, cfg.train),
            exact_pairs=exact,
        )
        self.add(stage)
        if method == "kd":
            examples = (
                cfg.train.max_steps * cfg.train.batch_size
                if cfg.train.max_steps > 0
                else math.ceil(n_pairs * cfg.train.num_train_epochs)
            )
            self.add(
                Stage(
                    f"kd-teacher:{cfg.teacher}|{cfg.student}",
                    "kd: live teacher forward passes",
                    cfg.teacher,
                    where,
                    samples_max=0,
                    programs=0,
                    pairs=examples,
                    notes=[
                        f"one teacher forward pass per training example seen, at most "
                        f"{cfg.train.max_length} tokens each (kd.teacher_prompt "
                        f"{cfg.kd.teacher_prompt})"
                    ],
                )
            )

    def expert_iteration(self, cfg: RunConfig, layout: RunLayout, label: str, matrix: bool) -> None:
        """The rounds: the student samples every training question few-shot, then only those
        still unsolved. A previous run of the same settings says how many each round took."""
        ei = cfg.expert_iteration
        sp = ei.sampling(cfg.teacher_sampling)
        rounds, q = ei.rounds, len(self.train)
        el = layout.expert_iteration()
        why = self.differs(layout, cfg, ("student", "student_prompt_format", "expert_iteration",
                                         "teacher_sampling", "train", "train_split", "train_limit",
                                         "task", "sandbox"))  # fmt: skip
        finished = not why and el.rounds.is_file()  # a previous run's rounds, all of them
        for r in range(1, rounds + 1):
            prompt = "teacher" if r == 1 or ei.later_rounds_prompt == "few-shot" else "student"
            stage = Stage(
                f"ei:{cfg.student}:{r}",
                f"expert iteration round {r}/{rounds}" + (" (unsolved only)" if r > 1 else ""),
                cfg.student,
                "shared" if matrix else "",
            )
            rl = el.round(r)
            attempted = None if why else round_attempted(rl.record)
            expected = None
            if attempted is not None:
                expected = [sp.n * attempted / q] * q if q else []
                stage.notes.append(f"the previous run sampled {num(attempted)} questions here")
            elif finished and r > 1:
                expected = [0.0] * q
                stage.notes.append("the previous run stopped before this round")
            measured = None if why else measured_usage(rl.dir)
            job = _Job(cfg.student, self.train, prompt, "function", cfg.eval.backend)
            self.sampling(stage, job, sp, measured=measured, expected_per_question=expected)
            if r == 1:
                most = q * (1 if ei.keep == "first" else sp.n)
                stage.notes.append(
                    f"{cfg.student} samples few-shot; each round then trains on the pairs so far "
                    f"(at most {num(most)} pairs, {num(train_steps(most, cfg.train))} steps); "
                    "later rounds sample the questions still unsolved (at most all)"
                )
            self.add(stage)


def _requests(samples: float, calls: float, backend: BackendConfig) -> float:
    """How often a question's prompt is sent for ``samples`` samples in ``calls`` calls: per
    request of ``n_per_request`` samples (openai; 0: all of a call's in one), else once per
    call (local engines prefill a prompt once and share it between its samples)."""
    if backend.name == "openai" and backend.n_per_request > 0:
        k = backend.n_per_request
        return samples / k if k > 1 else samples
    return calls


def plan_experiment(
    cfg: RunConfig,
    out_dir: str | Path | None = None,
    tokenizer: TokenizerLoader = load_tokenizer,
) -> Plan:
    """Every stage ``ekt run`` would do for ``cfg`` in ``out_dir``, with its bill. Checks the
    config as a run does (models, data) first; loads tokenizers only, writes nothing."""
    cfg.validate()
    for role, spec in (("teacher", t) for t in cfg.teacher_list()):
        _check_spec(role, spec)
    for spec in cfg.student_list():
        _check_spec("student", spec)
    planner = _Planner(cfg, out_dir, tokenizer)
    root = planner.root
    cells = []
    for t, s in cfg.pairs():
        if cfg.is_matrix:
            name = f"{slug(t)}--{slug(s)}"
            pcfg, layout = pair_config(cfg, t, s), RunLayout(root.pair(name))
        else:
            name, pcfg, layout = "", cfg, root
        cells.append(name or f"{t} -> {s}")
        planner.cell(pcfg, layout, name, cfg.is_matrix)
    notes = [
        "prompt tokens: sent per request (openai backend) or prefilled once per question and "
        "call (local engines share a prompt between its samples)",
        "a method's student is trained and evaluated only if it gets training pairs; "
        "'<=' pairs are upper bounds until the teacher's programs are filtered",
    ]
    if planner.no_tokenizer:
        notes.append(
            f"prompt tokens marked ~ are estimated at {CHARS_PER_TOKEN} characters a token: no "
            f"local tokenizer for {', '.join(planner.no_tokenizer)} (not in the local HF cache, "
            "or an API model)"
        )
    if root.config.is_file():
        notes.append(
            f"previous run found in {root.dir}: its measurements are used where its settings match"
        )
    else:
        notes.append(f"no previous run in {root.dir}: nothing measured, expected = at most")
    stages = list(planner.stages.values())
    estimate(stages, cfg)  # time and memory, measured or at a stated rate
    notes.append(
        "time/memory: a stage's own line says what each rests on (a previous run's "
        "throughput, or an assumed rate: ekt.pipeline.plan_estimate)"
    )
    return Plan(cfg.name, str(root.dir), cells, stages, [*notes, *planner.notes])


def _check_spec(role: str, spec: str) -> None:
    """A model spec a run would refuse, refused here (without converting any weights)."""
    try:
        if spec in PRESETS:
            preset_gguf(spec)
        elif Path(spec).expanduser().suffix.lower() == ".gguf":
            if not Path(spec).expanduser().is_file():
                raise EktError(f"--model {spec}: no such .gguf file")
        else:
            resolve_model(spec)
    except EktError as e:
        raise EktError(f"{role}: {e}") from None


__all__ = [
    "ASSUMED_PASS_AT_1",
    "Measured",
    "Plan",
    "Stage",
    "load_tokenizer",
    "measured_usage",
    "plan_experiment",
    "prompt_lengths",
    "render",
    "results_usage",
    "success_counts",
    "train_steps",
]
