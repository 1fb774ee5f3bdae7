"""A whole experiment from one config: teacher samples -> verify -> filter -> train -> evaluate.

Run folder (``runs/<name>/`` unless ``--out`` says otherwise)::

    config.yaml  manifest.json
    teacher/samples/*.jsonl  teacher/executions.jsonl
    train_pairs.jsonl                          (EKT: the teacher's verified programs)
    supervised/programs.jsonl  supervised/executions.jsonl  supervised/train_pairs.jsonl
    students/<method>/                         (HF checkpoints + train_log.jsonl)
    eval/<label>/...  scores.json              (see ekt.evaluation.evaluate)
    results.json  results.md

Each stage skips what is complete and resumes what is partial, so rerunning
the same command after a crash finishes the job. ``config.yaml`` and the
manifest's input hashes (dataset files, model fingerprints) guard the folder: a
rerun whose config or inputs differ in a way that would mix incompatible results
is refused with the keys that changed; ``--force`` removes what those changes
invalidate (and only that) and redoes it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
import yaml

from ekt import __version__
from ekt.data.prompt_format import load_format
from ekt.data.provenance import changed_problems, data_sha, stale_line
from ekt.data.tasks import Task, get_task
from ekt.errors import EktError
from ekt.evaluation.evaluate import evaluate, score_line
from ekt.generation.backends import BackendConfig, make_sampler
from ekt.generation.budget import adaptive_budget
from ekt.generation.generate import (
    GenerateSettings,
    budget_usage,
    format_stops,
    generate,
    read_completions,
    usage,
)
from ekt.layout import RunLayout
from ekt.methods import registry, teacher_budget
from ekt.methods.base import Cost, count_lines
from ekt.models import PRESETS, model_fingerprint, resolve_model
from ekt.pipeline.config import RunConfig, dump_config, plain
from ekt.pipeline.eval_pool import cpu_workers, evaluate_side_by_side
from ekt.records import read_jsonl, write_json_atomic, write_text_atomic
from ekt.report.build import finish_run
from ekt.training.train import _NOT_FINGERPRINTED
from ekt.verification.filtering import filter_stage
from ekt.verification.verify import RoundJudge, verify

# (model spec, device, batch size, backend) -> a factory that loads the sampler when called
SamplerFactory = Callable[[str, str | None, int, BackendConfig], Callable[[], Any]]


def run_folder(cfg: RunConfig, out_dir: str | Path | None) -> Path:
    """Where a run writes: ``--out``, else ``runs/<name>``."""
    return RunLayout.of(cfg.name, out_dir).dir


# Config keys that do not change any result (speed, placement, labels, what is reported):
# changing them never blocks a resume. Batch sizes are here like in generate's own check.
HARMLESS_KEYS = frozenset(
    {
        "name",
        "note",
        "device",
        "methods",
        "evaluate_teacher",
        "evaluate_base_student",
        "sandbox.workers",
        "sandbox.pin_workers",
        "teacher_sampling.batch_size",
        "eval.batch_size",
        "eval.parallel",
        "train.output_dir",  # set by ekt for every training (the student's checkpoints folder)
        "train.report_to",  # loggers only ([] and "none" in configs written before ekt declared
        # the TrainingArguments fields it exposes: TrainingArguments' own value after its init)
        "teacher_sampling.backend.concurrency",
        "teacher_sampling.backend.request_timeout",
        "teacher_sampling.backend.max_retries",
        "teacher_sampling.backend.base_url",
        "eval.backend.gpu_memory_utilization",
        "teacher_sampling.backend.gpu_memory_utilization",
        "teacher_sampling.backend.api_key_env",
        "teacher_sampling.backend.requests_per_minute",
        "teacher_sampling.backend.tokens_per_minute",
        "teacher_sampling.backend.price_input_per_mtok",
        "teacher_sampling.backend.price_output_per_mtok",
        *(f"train.{k}" for k in _NOT_FINGERPRINTED),  # what the training's resume ignores
    }
) | registry.harmless_keys()
_ALL = ("teacher", "train_pairs.jsonl", "seq_kd", "supervised", "budget", "students", "eval")
_EXECUTIONS = (
    "teacher/executions.jsonl",
    "train_pairs.jsonl",
    "eval/*/*/executions.jsonl",
    "eval/*/problems.jsonl",
    "eval/*/scores.json",
)
_TEACHER = ("teacher", "train_pairs.jsonl")
# What a changed key invalidates of the stages the methods share (globs in the run folder);
# each method's own outputs come from its registration (ekt.methods.registry). Keys listed
# in neither invalidate all.
_SHARED: dict[str, tuple[str, ...]] = {
    "train_split": _TEACHER,
    "train_limit": _TEACHER,
    "teacher": (*_TEACHER, "eval/teacher"),
    "model:teacher": (*_TEACHER, "eval/teacher"),
    "teacher_sampling": _TEACHER,
    "keep": ("train_pairs.jsonl",),
    "sandbox": _EXECUTIONS,
    "student": ("eval/student-base",),
    "model:student": ("eval/student-base",),
    "student_prompt_format": ("eval/student-base",),
    "eval": ("eval",),
    "eval.k": ("eval/*/scores.json",),  # scored again from the same samples
    "eval.greedy": ("eval/*/scores.json",),
    # the evaluation tasks decontaminate the training data too
    "eval.tasks": ("train_pairs.jsonl", "eval/*/tasks"),
    "eval.task_data": ("train_pairs.jsonl", "eval/*/tasks"),
}
_STALE: dict[str, tuple[str, ...]] = {
    k: _SHARED.get(k, ()) + registry.stale_globs(k)
    for k in sorted(set(_SHARED) | registry.invalidating_keys())
}
TRANSFER = "transfer:"  # input key of an eval.tasks set's data hash: transfer:<task>/<split>
_STALE["transfer"] = _STALE["eval.tasks"]  # a changed transfer set: its evaluations, and the
# training data it decontaminates


def _whole_file(summary: dict) -> dict:
    """A stage summary without what depends on this invocation (its time, its new records)."""
    return {k: v for k, v in summary.items() if k not in ("seconds", "new")}


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_changes(old: dict, new: dict) -> dict[str, tuple]:
    """Dotted keys set in both configs whose values differ, harmless keys left out.

    A key only one side has (a setting added or removed by another ekt version) is
    not a change: its default stands for what the older version did.
    """
    a, b = _flatten(old), _flatten(new)
    return {
        k: (a[k], b[k])
        for k in sorted(set(a) & set(b))
        if a[k] != b[k] and k not in HARMLESS_KEYS and not k.startswith("ray.")  # placement
    }


def stale_outputs(keys: list[str], run_dir: Path, cfg: RunConfig | None = None) -> list[Path]:
    """Existing paths in ``run_dir`` made invalid by changing ``keys`` (and the results); with
    the run's ``cfg``, a method built on a stale method's student (``grpo.start: ekt``) too."""
    globs: set[str] = {"results.json", "results.md", "report.html"}
    for key in keys:
        parts = key.replace(":", ".", 1).split(".")  # transfer:svamp/test -> transfer
        known = [key] + [".".join(parts[:i]) for i in range(len(parts), 0, -1)]
        globs.update(next((_STALE[k] for k in known if k in _STALE), _ALL))
    while cfg is not None:  # until no method is newly stale
        later = {g for name in cfg.methods for g in _built_on_stale(name, cfg, globs)} - globs
        if not later:
            break
        globs |= later
    found = {p for g in globs for p in run_dir.glob(g)}
    # a folder's contents go with it: list only the outermost paths
    return sorted(p for p in found if not any(q in found for q in p.parents))


def _built_on_stale(name: str, cfg: RunConfig, globs: set[str]) -> tuple[str, ...]:
    """The outputs of method ``name`` when the method it builds on has a stale student."""
    method = registry.get(name)
    base = method.base(cfg)
    return method.outputs() if base and f"students/{base}" in globs else ()


def data_splits(task: Task, cfg: RunConfig) -> list[str]:
    """The task's files a run reads: its training and evaluation splits, and test (the
    decontamination set)."""
    wanted = {"train" if s == "dev" else s for s in (cfg.train_split, cfg.eval.split)}
    if task.procedural is not None:
        wanted |= set(task.spec.size)
    wanted |= {"test"} & set(task.spec.splits)
    return sorted(s for s in wanted if s in task.spec.splits)


def input_hashes(task: Task, cfg: RunConfig) -> dict[str, str]:
    """The content hash (ids, questions, gold answers) of every split file the run reads,
    whatever the source (a task file's local files, a data folder, a generator's seed, the
    hub), and fingerprints of the models a run starts from."""
    out: dict[str, str] = {}
    for split in data_splits(task, cfg):
        out[f"data:{task.name}/{split}"] = data_sha(task.load_file(split))
    for name in cfg.eval.tasks:  # the transfer sets every model is evaluated on too
        other = get_task(name, cfg.eval.task_data.get(name))
        split = "test" if "test" in other.splits else other.splits[0]
        out[f"{TRANSFER}{other.name}/{split}"] = data_sha(other.load_file(split))

    for role, spec in (("teacher", cfg.teacher), ("student", cfg.student)):
        try:
            out[f"model:{role}"] = model_fingerprint(spec)
        except (EktError, OSError):
            pass  # not available here; loading it will say why
    return out


def changed_in_folder(run_dir: Path, task: Task) -> dict[str, str]:
    """The problems of ``task`` whose question or gold answer differ from those the run
    folder's samples and verdicts were made with (``ekt.data.provenance``)."""
    files = [*run_dir.glob("teacher/samples/*.jsonl"), *run_dir.glob("teacher/*.jsonl"),
             *run_dir.glob("supervised/*.jsonl"), *run_dir.glob("eval/*/*/executions.jsonl"),
             *run_dir.glob("eval/*/*/samples/*.jsonl")]  # fmt: skip
    prefix = f"{task.name}/"
    records = [obj for f in files if f.is_file() for _, obj in read_jsonl(f)
               if str(obj.get("problem_id", "")).startswith(prefix)]  # fmt: skip
    if not records:
        return {}
    ids = {r["problem_id"] for r in records}
    splits = {i.split("/")[1] for i in ids if i.count("/") >= 2} & set(task.spec.splits)
    problems = {p.id: p for s in sorted(splits) for p in task.load_file(s)}
    return changed_problems(records, problems, task.answer_format)


def _short(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def _check_model_spec(role: str, spec: str) -> None:
    if spec not in PRESETS:  # presets are converted when first loaded; the rest is cheap
        try:
            resolve_model(spec)
        except EktError as e:
            raise EktError(f"{role}: {e}") from None


@dataclass
class MatrixCell:
    """What a matrix cell's run shares with the other cells (``ekt.pipeline.matrix``)."""

    root: Path  # the matrix run's top folder
    redone: set[Path]  # shared stage folders emptied by this invocation, once for all cells
    link: Callable[[], None]  # (re)links the cell's folders to the shared stages


def _count(path: Path) -> int:
    return sum(1 for _ in read_jsonl(path)) if path.exists() else 0


class Runner:
    """One single-pair run. Its collaborators are passed in: ``sampler_factory`` builds every
    sampler (default: ``ekt.generation.backends.make_sampler``; tests give scripted ones), and
    the config's ``sandbox`` and ``ray`` blocks say where programs run and who samples."""

    def __init__(
        self,
        cfg: RunConfig,
        out_dir: str | Path | None = None,
        force: bool = False,
        sampler_factory: SamplerFactory = make_sampler,
        cell: MatrixCell | None = None,
    ):
        """``cell``: this run is one cell of a matrix run (``ekt.pipeline.matrix``)."""
        cfg.validate()
        self.cfg = cfg
        self.layout = RunLayout.of(cfg.name, out_dir)
        self.dir = self.layout.dir
        self.sampler_factory = sampler_factory
        self.cluster = cfg.ray
        # a matrix run: its top folder (shared stages live under it), the shared stage folders
        # this invocation emptied, and how a cell relinks them; a single run shares nothing
        self.root = cell.root if cell else self.dir
        self.redone: set[Path] = cell.redone if cell else set()
        self.link_shared: Callable[[], None] = cell.link if cell else (lambda: None)
        self.force = force
        self.task = cfg.load_task((cfg.teacher_sampling.prompt_format, cfg.student_prompt_format))
        self.stage_summaries: dict[str, dict] = {}  # into results.json (tokens, cost, failures)
        for role, spec in (("teacher", cfg.teacher), ("student", cfg.student)):
            _check_model_spec(role, spec)  # a typo stops here, not after hours of sampling
        self.sandbox = cfg.sandbox
        self.times: dict[str, float] = {}
        self._shared_spent = 0.0  # seconds spent in the stages the methods share
        # the teacher's loaded sampler, kept from its evaluation to its sampling (``_sampler``)
        self._held: tuple[tuple, Any] | None = None
        self._hold: tuple | None = None
        self._shared: dict[str, Any] = {}  # their outcomes, once per run
        self._trained: dict[str, str] = {}  # method -> the student it trained, as they finish

    def stage(self, name: str):
        """A named, timed stage (printed as a heading; its seconds go to the manifest)."""
        return self._stage(name)

    def _stage(self, name: str):
        runner = self

        class _Timer:
            def __enter__(self):
                self.t0 = time.time()
                print(f"\n== {name}", flush=True)

            def __exit__(self, *exc):
                runner.times[name] = round(runner.times.get(name, 0) + time.time() - self.t0, 1)

        return _Timer()

    # -- stages --------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        self.dir.mkdir(parents=True, exist_ok=True)
        self._check_config()
        self.link_shared()  # (a matrix cell: links to shared stages that --force removed)
        train_problems = self.task.load(cfg.train_split)
        if self.task.procedural is not None:
            dropped = self.task.procedural.overlaps.get(cfg.train_split, 0)
            print(f"task {self.task.name}: {self.task.source}; {dropped} training questions "
                  "dropped as they appear in another split")  # fmt: skip
            self.stage_summaries["task"] = {"source": self.task.source,
                                            "overlaps_dropped": dropped}  # fmt: skip
        if cfg.train_limit:
            train_problems = train_problems[: cfg.train_limit]
        eval_problems = self.task.load(cfg.eval.split)
        if cfg.eval.limit:
            eval_problems = eval_problems[: cfg.eval.limit]
        self._write_manifest()

        rows = []
        evaluated: list[tuple[dict, str, str]] = []  # (row, model spec, prompt) per model
        if cfg.evaluate_teacher:  # first: its sampling reuses the loaded model (``_sampler``)
            self._hold = (cfg.teacher, repr(cfg.teacher_sampling.backend))
            rows.append(
                self.eval_model("teacher", cfg.teacher, "teacher", eval_problems, "few-shot")
            )
            evaluated.append((rows[-1], cfg.teacher, "teacher"))

        pairs, students, costs, skipped = self.train_methods(train_problems)

        jobs = [("student-base", cfg.student, "none")] if cfg.evaluate_base_student else []
        jobs += [(f"student-{method}", ckpt, method) for method, ckpt in students.items()]
        for (_, spec, method), row in zip(jobs, self.eval_students(jobs, eval_problems)):
            if method in students:
                if pairs[method] is not None:
                    row["pairs"] = _count(pairs[method])
                row["cost"] = costs[method]
                row["uses_teacher"] = registry.get(method).uses_teacher
                base = registry.get(method).base(cfg)
                if base is not None:
                    row["builds_on"] = base
            rows.append(row)
            evaluated.append((row, spec, "student"))
        for task, split, problems in self.eval_tasks():  # transfer: the same models elsewhere
            for row, spec, prompt in evaluated:
                scores = self.eval_model(
                    row["label"], spec, prompt, problems, row["method"], task=task, split=split
                )
                row.setdefault("tasks", {})[task.name] = {
                    k: v for k, v in scores.items() if k not in ("label", "model", "prompt")
                }
        for method, why in skipped.items():
            rows.append(
                {
                    "label": f"student-{method}",
                    "method": method,
                    "pairs": _count(pairs[method]) if pairs[method] is not None else 0,
                    "skipped": why,
                    "cost": costs[method],
                }
            )
        return finish_run(self.dir, self._write_results(rows))

    def train_methods(
        self, problems: list
    ) -> tuple[dict[str, Path | None], dict[str, str], dict[str, dict], dict[str, str]]:
        """Each method's data (all prepared before any trains), then its student; the pairs,
        checkpoints, costs and reasons for skipping by method (``ekt.methods.registry``)."""
        pairs: dict[str, Path | None] = {}
        costs: dict[str, Cost] = {}
        for name in self.cfg.methods:
            method = registry.get(name)
            pairs[name], costs[name] = None, Cost()
            if method.prepare is not None:
                (pairs[name], cost), own = self._timed(method.prepare, problems)
                costs[name] = cost.add(Cost(seconds=own))
        self._release()  # the teacher's sampler is not kept while students train
        students: dict[str, str] = {}
        skipped: dict[str, str] = {}
        for name in self.cfg.methods:
            method = registry.get(name)
            fitted, own = self._timed(method.fit, problems, pairs[name])
            costs[name] = costs[name].add(fitted.cost).add(Cost(seconds=own))
            base = method.base(self.cfg)
            if base is not None:  # RL after fine-tuning costs the fine-tuning too
                costs[name] = costs[name].add(costs[base])
            pairs[name] = fitted.pairs if fitted.pairs is not None else pairs[name]
            if fitted.model:
                students[name] = self._trained[name] = fitted.model
            else:
                skipped[name] = fitted.skipped
        rounded = {n: {**asdict(c), "seconds": round(c.seconds, 1)} for n, c in costs.items()}
        return pairs, students, rounded, skipped

    def _sampler(self, spec: str, batch_size: int, backend: Any) -> Callable[[], Any]:
        """A factory of ``spec``'s sampler. The model named by ``_hold`` (the teacher, from its
        evaluation to its sampling) is loaded once and kept until ``_release``: the same
        weights, prompts and seeds give the same samples, without a second load of the model
        and its tokenizer (for the embedded GGUF teacher, most of a short stage's time)."""
        key = (spec, repr(backend))

        def make() -> Any:
            if self._held is not None and self._held[0] == key:
                sampler = self._held[1]
            else:
                sampler = self.sampler_factory(spec, self.cfg.device, batch_size, backend)()
                if key == self._hold:
                    self._held = (key, sampler)
            if hasattr(sampler, "batch_size"):
                sampler.batch_size = batch_size
            return sampler

        return make

    def _release(self) -> None:
        """Let go of a kept sampler (its model's memory returns before students train)."""
        if self._held is not None:
            self._held = None
            gc.collect()
        self._hold = None

    def _timed(self, step: Callable, *args: Any) -> tuple[Any, float]:
        """``step(self, *args)`` and its own wall seconds: less the shared stages it ran,
        which are in the cost of every method that uses them."""
        t0, shared0 = time.time(), self._shared_spent
        out = step(self, *args)
        return out, time.time() - t0 - (self._shared_spent - shared0)

    def _check_config(self) -> None:
        """Refuse to resume a run folder made with a config (or data, or model) that differs in
        a way that would mix incompatible results; with ``--force`` remove what it invalidates.
        """
        path = self.layout.config
        text = dump_config(self.cfg)
        self.inputs = input_hashes(self.task, self.cfg)
        changes: dict[str, tuple] = {}
        if path.exists():
            try:
                old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except (yaml.YAMLError, UnicodeDecodeError):
                old = None  # torn by a crash of an older ekt: nothing to compare against
            if isinstance(old, dict):
                changes = config_changes(old, yaml.safe_load(text))
            manifest = self.layout.manifest
            try:
                old_inputs = json.loads(manifest.read_text()).get("inputs", {})
            except (OSError, ValueError, AttributeError):
                old_inputs = {}
            for key, value in self.inputs.items():
                if key in old_inputs and old_inputs[key] != value:
                    changes[key] = (old_inputs[key], value)
        data_changed = any(k.startswith("data:") for k in changes)
        named = changed_in_folder(self.dir, self.task) if data_changed else {}
        if named and not self.force:  # name the problems whose records are stale
            raise EktError(f"{self.dir}: " + stale_line(
                named, "this run folder was made",
                "use --force to redo what depends on it, or another --out",
            ))  # fmt: skip
        if changes:
            stale = stale_outputs(list(changes), self.dir, self.cfg)
            what = "; ".join(f"{k}: {_short(a)} -> {_short(b)}" for k, (a, b) in changes.items())
            if not self.force:
                redo = ", ".join(sorted({str(p.relative_to(self.dir)) for p in stale})) or "none"
                raise EktError(
                    f"{self.dir} holds results of another config ({what}); use another --out, "
                    f"or --force to redo what this changes (removes: {redo})"
                )
            print(f"--force: config changed ({what})")
            for p in stale:
                print(f"--force: removing {p}")
                self._remove(p)
        write_text_atomic(path, text)

    def _remove(self, p: Path) -> None:
        """Remove a stale output. A stage a matrix run shares (a link to a folder under
        ``shared/``) is emptied instead, once per invocation however many cells link it."""
        if p.is_symlink():
            target = p.resolve()
            if target.is_dir() and target not in self.redone:
                self.redone.add(target)
                shutil.rmtree(target)
                target.mkdir(parents=True)
            return
        if p.is_dir():
            for link in [q for q in p.rglob("*") if q.is_symlink()]:
                self._remove(link)
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)

    def teacher_samples(self, problems) -> Cost:
        """The teacher's programs for ``problems`` (once per run; the methods that consume
        them share them), and what they cost."""
        if "samples" not in self._shared:
            t0 = time.time()
            self._sample_teacher(problems)
            seconds = time.time() - t0
            self._shared_spent += seconds
            tokens = self.stage_summaries["teacher_generate"]["completion_tokens"]
            self._shared["samples"] = Cost(teacher_tokens_sampled=tokens, seconds=seconds)
        return self._shared["samples"]

    def _sample_teacher(self, problems) -> None:
        cfg, ts = self.cfg, self.cfg.teacher_sampling
        fmt = load_format(self.task.prompt_format(ts.prompt_format))
        budget = adaptive_budget(ts, cfg.keep)
        how = f" (adaptive budget, rounds of {ts.round_size})" if budget else ""
        with (
            self._stage(
                f"teacher {cfg.teacher}: sample {ts.n} programs x {len(problems)} questions{how}"
            ),
            contextlib.ExitStack() as stack,
        ):
            judge = None
            if budget is not None:  # verification interleaved with sampling, round by round
                judge = stack.enter_context(
                    RoundJudge(
                        self.layout.teacher,
                        self.layout.teacher_executions,
                        self.task,
                        self.sandbox,
                        cluster=self.cluster,
                        prompt_format=ts.prompt_format,
                    )
                )
            s = generate(
                self._sampler(cfg.teacher, ts.batch_size, ts.backend),
                problems,
                self.layout.teacher,
                format_stops(ts.sampling_params(), fmt),
                GenerateSettings(
                    prompt="teacher",
                    settings={"model": cfg.teacher, "task": cfg.task},
                    prompt_format=fmt,
                    price=ts.backend.price,
                    budget=budget,
                ),
                cluster=self.cluster,
                judge=judge,
            )
            print(s.line())
            # results.json holds what the files say, never what this invocation did, so a
            # resumed run writes the results an uninterrupted one writes
            summary = usage(self.dir / "teacher", ts.backend.price)
            summary["samples_full_budget"] = len(problems) * ts.n
            if budget is not None:
                summary["budget"] = "adaptive"
                summary.update(budget_usage(self.dir / "teacher", len(problems), ts.n))
            self.stage_summaries["teacher_generate"] = summary

    def teacher_pairs(
        self, problems, method: str | None = None, scored: Callable[[Path], int] | None = None
    ) -> tuple[Path, Cost]:
        """The teacher's verified, filtered programs (once per run), and what they cost.

        With ``teacher_token_budget`` set, ``method``'s own pairs instead: those of the
        longest prefix of the samples in spending order whose tokens, plus ``scored(pairs)``
        (what its teacher would score training on them), fit the budget
        (``ekt.methods.teacher_budget``); the cost is that prefix's."""
        sampled = self.teacher_samples(problems)
        if "pairs" not in self._shared:
            t0 = time.time()
            self._verify_teacher()
            seconds = time.time() - t0
            self._shared_spent += seconds
            ran = count_lines(self.layout.teacher_executions)
            self._shared["pairs"] = Cost(sandbox_executions=ran, seconds=seconds)
        whole = sampled.add(self._shared["pairs"])
        if self.cfg.teacher_token_budget is None or method is None:
            return self.layout.train_pairs, whole
        return self._budget_pairs(problems, method, scored, whole.seconds)

    def budget_samples(self, problems) -> tuple[frozenset | None, Cost]:
        """The teacher samples (problem id, sample index) a method that reads them unverified
        may use under ``teacher_token_budget`` (None: all, no budget), and their cost."""
        whole = self.teacher_samples(problems)
        if self.cfg.teacher_token_budget is None:
            return None, whole
        order = self._spending_order(problems)
        n = teacher_budget.affordable(order, self.cfg.teacher_token_budget)
        used = teacher_budget.tokens_of(order, n)
        cost = Cost(teacher_tokens_sampled=used, seconds=whole.seconds)
        return teacher_budget.chosen(order, n), cost

    def _spending_order(self, problems) -> list[teacher_budget.Spent]:
        spent = [teacher_budget.Spent(c.problem_id, c.sample_idx, c.n_tokens)
                 for c in read_completions(self.layout.teacher)]  # fmt: skip
        return teacher_budget.spending_order(spent, [p.id for p in problems])

    def _budget_pairs(
        self, problems, method: str, scored: Callable[[Path], int] | None, seconds: float
    ) -> tuple[Path, Cost]:
        limit = self.cfg.teacher_token_budget
        folder = self.layout.budget(method)
        executions, pairs = folder / "executions.jsonl", folder / "train_pairs.jsonl"
        order = self._spending_order(problems)
        against = self.contamination_sets()
        verified = [obj for _, obj in read_jsonl(self.layout.teacher_executions)]  # read once

        def pairs_of(n: int) -> Any:
            keep = teacher_budget.chosen(order, n)
            teacher_budget.write_subset(verified, keep, executions)
            return filter_stage(executions, pairs, self.task, keep=self.cfg.keep, against=against)

        with self._stage(f"{method}: the teacher samples a budget of {limit} tokens buys"):
            def cost_of(k: int) -> int:  # what the teacher would score training on them
                pairs_of(k)
                return scored(pairs) if scored is not None else 0

            n = teacher_budget.affordable(order, limit, cost_of)
            f = pairs_of(n)
            used = teacher_budget.tokens_of(order, n)
            print(f"{method}: {n} of {len(order)} teacher samples ({used} tokens) within the "
                  f"budget of {limit} -> {f.pairs} pairs")  # fmt: skip
        return pairs, Cost(teacher_tokens_sampled=used, sandbox_executions=n, seconds=seconds)

    def _verify_teacher(self) -> None:
        with self._stage("verify teacher programs"):
            v = verify(
                self.layout.teacher,
                self.layout.teacher_executions,
                self.task,
                None,
                self.sandbox,
                prompt_format=self.cfg.teacher_sampling.prompt_format,
                cluster=self.cluster,
            )
            print(v.line())
            self.stage_summaries["teacher_verify"] = {
                **_whole_file(asdict(v)), "no_program": v.no_program
            }  # fmt: skip
        with self._stage("filter"):
            f = filter_stage(
                self.layout.teacher_executions,
                self.layout.train_pairs,
                self.task,
                keep=self.cfg.keep,
                against=self.contamination_sets(),
            )
            print(f.line())
            self.stage_summaries["filter"] = _whole_file(asdict(f))

    def eval_tasks(self) -> list[tuple[Task, str, list]]:
        """``eval.tasks``: (task, split, problems) each, its test split (else its only one)."""
        out = []
        for name in self.cfg.eval.tasks:
            task = get_task(name, self.cfg.eval.task_data.get(name))
            split = "test" if "test" in task.splits else task.splits[0]
            problems = task.load(split)
            out.append((task, split, problems[: self.cfg.eval.limit or None]))
        return out

    def trained(self, method: str) -> str | None:
        return self._trained.get(method)

    def contamination_sets(self) -> dict[str, list[str]]:
        """The questions of every evaluation task (and of the sets they were built from, as
        GSM-Hard from GSM8K test), which no training question may overlap."""
        sets: dict[str, list[str]] = {}
        own = {self.task.spec.name}
        for task, split, _ in self.eval_tasks():
            sets[f"{task.name}/{split}"] = [p.question for p in task.load(split)]
            for parent in task.spec.derived_from:
                if parent in own:  # the run's own test split is checked already
                    continue
                base = get_task(parent, self.cfg.eval.task_data.get(parent))
                base_split = "test" if "test" in base.splits else base.splits[0]
                sets[f"{parent}/{base_split}"] = [p.question for p in base.load(base_split)]
        return sets

    def eval_model(
        self,
        label: str,
        spec: str,
        prompt: str,
        problems,
        method: str,
        task: Task | None = None,
        split: str | None = None,
    ) -> dict:
        name, sampler, kwargs = self._eval_call(label, spec, prompt, problems, task, split)
        with self._stage(name):
            scores = evaluate(self._sampler(*sampler), **kwargs, cluster=self.cluster)
            print(score_line(label, scores))
        return self._eval_row(label, method, prompt, scores)

    def eval_students(self, jobs: list[tuple[str, str, str]], problems) -> list[dict]:
        """The rows of the student models ``jobs`` (label, spec, method): ``eval.parallel`` at
        a time on CPU (``ekt.pipeline.eval_pool``), else one after the other."""
        cfg = self.cfg
        local = (
            self.sampler_factory is make_sampler
            and self.cluster is None
            and cfg.eval.backend.name == "transformers"
        )  # models this process would load itself (not a server, Ray or a test's fake)
        workers = cpu_workers(cfg.eval.parallel, len(jobs), cfg.device, local)
        if workers == 1:
            return [self.eval_model(lab, spec, "student", problems, m) for lab, spec, m in jobs]
        threads = max(1, torch.get_num_threads() // workers)
        calls = [self._eval_call(lab, spec, "student", problems) for lab, spec, _ in jobs]
        for name, _, _ in calls:
            print(f"\n== {name} ({workers} at a time, {threads} thread(s) each)", flush=True)
        side = [(lab, (s, cfg.device, b, be), kw) for (lab, _, _), (_, (s, b, be), kw)
                in zip(jobs, calls)]  # fmt: skip
        rows = []
        for (lab, _, method), (name, _, _), scores in zip(
            jobs, calls, evaluate_side_by_side(side, workers, threads)
        ):
            self.times[name] = scores["seconds"]  # its own time; they overlap
            print(score_line(lab, scores))
            rows.append(self._eval_row(lab, method, "student", scores))
        return rows

    def _eval_call(
        self, label: str, spec: str, prompt: str, problems, task: Task | None = None,
        split: str | None = None,
    ) -> tuple[str, tuple, dict]:
        """One evaluation: its stage name, the sampler's (spec, batch size, backend) and the
        keywords of ``evaluate`` besides the sampler."""
        cfg = self.cfg
        where = f"{task.name} {split}" if task is not None else cfg.eval.split
        name = f"evaluate {label} ({prompt} prompt) on {len(problems)} {where} questions"
        backend = cfg.teacher_sampling.backend if label == "teacher" else cfg.eval.backend
        fmt = (
            (task or self.task).prompt_format(cfg.teacher_sampling.prompt_format)
            if label == "teacher" else cfg.student_prompt_format
        )  # fmt: skip
        kwargs = dict(
            problems=problems,
            out_dir=self.layout.eval(label, task.name if task is not None else None).dir,
            config=cfg.eval,
            task=task if task is not None else self.task,
            prompt=prompt,
            sandbox=self.sandbox,
            settings={"model": self._portable(spec)},
            prompt_format=fmt,
        )
        return name, (spec, cfg.eval.batch_size, backend), kwargs

    def _eval_row(self, label: str, method: str, prompt: str, scores: dict) -> dict:
        model = self.cfg.teacher if label == "teacher" else self.cfg.student
        return {"label": label, "model": model, "method": method, "prompt": prompt, **scores}

    def _portable(self, spec: str) -> str:
        """A student trained in this run folder as ``<run>/students/...``: a moved or copied
        run folder resumes its evaluations instead of seeing another model."""
        for base in (self.dir, self.root):
            try:
                return str(Path("<run>") / Path(spec).resolve().relative_to(base.resolve()))
            except ValueError:
                continue
        return spec

    # -- outputs -------------------------------------------------------------
    def _write_manifest(self) -> None:
        inputs = getattr(self, "inputs", {})  # data sha256 and model fingerprints
        data = {k.removeprefix("data:"): v for k, v in inputs.items() if k.startswith("data:")}
        manifest = {
            "ekt": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "platform": platform.platform(),
            "data": {"source": self.task.source, "sha256": data,
                     "transfer_sha256": {k.removeprefix(TRANSFER): v for k, v in inputs.items()
                                         if k.startswith(TRANSFER)}},  # fmt: skip
            "models": {"teacher": self.cfg.teacher, "student": self.cfg.student},
            "inputs": inputs,
            "seeds": {
                "teacher": self.cfg.teacher_sampling.seed,
                "train": self.cfg.train.seed,
                "eval": self.cfg.eval.seed,
                "dev": self.cfg.dev_seed,
            },
            "stage_seconds": self.times,
        }
        write_json_atomic(self.layout.manifest, manifest)

    def _write_results(self, rows: list[dict]) -> dict:
        self._write_manifest()
        results = {
            "name": self.cfg.name,
            "note": self.cfg.note,
            "teacher": self.cfg.teacher,
            "student": self.cfg.student,
            "task": self.task.name,
            "eval": plain(self.cfg.eval),
            "rows": rows,
            "stage_seconds": self.times,
        }
        if self.stage_summaries:  # token usage, cost and extraction failures of the stages
            results["stages"] = self.stage_summaries
        write_json_atomic(self.layout.results, results)
        return results  # results.md is written once, with intervals, by finish_run


__all__ = ["Runner", "SamplerFactory", "run_folder"]
