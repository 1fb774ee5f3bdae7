"""The ``ekt`` command: one subcommand per stage, plus ``run`` and ``demo`` for whole experiments.

Every subcommand's options are a dataclass (``GenerateOptions``, ...) whose fields nest the
settings' own dataclasses (``TeacherSampling``, ``SandboxConfig``, ``TrainConfig``...);
jsonargparse turns the fields into flags, their attribute docstrings (or ``# comments``)
into help text and ``Literal`` types into checked choices. A new field of any of those
classes is a new flag with no code here (see ``ekt.pipeline.config`` for how to add one).

A setting's canonical flag is its dotted key (``--sampling.temperature``,
``--sandbox.timeout``); the short spellings of earlier ekt versions are derived from the
keys, not listed: the last part of the key when no other key ends the same way
(``--temperature``, ``--timeout``), a ``name`` field by its block (``--backend vllm``), dots
as underscores (``--kd-alpha``, ``--ray-replicas``), dashes as underscores
(``--learning-rate``), ``--no-X`` for a false boolean, comma- or space-separated lists
(``--k 1,10``) and ``--ray [ADDRESS]`` for an optional block. ``ekt run CONFIG`` takes any
run-config key as an override (``--train.learning_rate 2e-5 --eval.n 8``), recorded in the
run folder's ``config.yaml``.

Errors a user can fix (bad input, bad options) print one line naming the flag as typed and
exit 2; add ``--debug`` for the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jsonargparse

from ekt import __version__, helpcache
from ekt.commands import COMMAND_HELP, usage
from ekt.errors import EktError, user_message
from ekt.evaluation.config import EvalConfig
from ekt.generation.backends import BackendConfig
from ekt.options import DeviceOption, PromptFormatOption
from ekt.pipeline.distributed import RayCluster
from ekt.pipeline.flags import (
    TaskConfig,
    TeacherSampling,
    add_dataclass,
    aliases,
    instantiate,
    leaf_keys,
    name_key,
    normalize,
    parse_error,
    suggest_flags,
)
from ekt.records import Keep
from ekt.sandbox.config import SandboxConfig

# Only the options' classes above are imported here: each command imports its own work (the
# stages, models, data) when it runs, so building any parser (``ekt COMMAND --help``) loads
# no torch, transformers, datasets, ray or trl and none of the stages' modules.

# -- each subcommand's options ------------------------------------------------------------


@dataclass
class GenerateOptions(TaskConfig, DeviceOption):
    """`ekt generate` options."""

    model: str = ""
    """teacher: HF hub id, local HF folder, .gguf file or preset (required)"""
    out: str = ""
    """output folder of the sample shards (required)"""
    split: str = "train"
    """questions sampled: train | dev | test"""
    limit: int | None = None
    """the first N questions only"""
    prompt: Literal["teacher", "student"] = "teacher"
    """teacher: few-shot prompt; student: the bare question"""
    shard_size: int = 100
    """questions per resumable shard"""
    force: bool = False
    """discard earlier samples in --out"""
    sampling: TeacherSampling = field(default_factory=TeacherSampling)
    """how to sample"""
    keep: Keep = "first"
    """--sampling.budget adaptive: what `ekt filter --keep` will keep (first: a question leaves
    with one correct program; all: with --sampling.target distinct ones)"""
    executions: str = ""
    """--sampling.budget adaptive: the graded rounds, as `ekt verify` writes them ('': OUT/
    executions.jsonl; `ekt filter` reads it)"""
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    """--sampling.budget adaptive: where each round's programs run"""
    ray: RayCluster | None = None
    """on a Ray cluster (--ray [ADDRESS]; pip install 'ekt[ray]')"""


@dataclass
class VerifyOptions(TaskConfig, PromptFormatOption):
    """`ekt verify` options."""

    task: str | None = None
    """the task the programs answer: a built-in task (`ekt tasks`) or a task file (YAML: name,
    data, question, answer, answer_format, id, splits: {train: FILE-SPLIT, test: ...},
    exemplars); None: the task the problem ids (<task>/<split>/<id>) name, its file found
    from the generate.json beside the programs"""
    programs: str = ""
    """JSONL file, shard folder or `ekt generate --out` (required)"""
    out: str = ""
    """output JSONL (appended; reruns skip done lines) (required)"""
    split: str | None = None
    """refuse programs for questions outside this split"""
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    """where programs run"""
    ray: RayCluster | None = None
    """verifier actors on a Ray cluster (--ray [ADDRESS])"""


@dataclass
class FilterOptions(TaskConfig):
    """`ekt filter` options."""

    task: str | None = None
    """the task the verdicts belong to: a built-in task (`ekt tasks`) or a task file (YAML:
    name, data, question, answer, answer_format, id, splits: {train: FILE-SPLIT, test: ...},
    exemplars); None: the task the problem ids (<task>/<split>/<id>) name, its file found from
    the generate.json or config.yaml near the records"""
    executions: list[str] = field(default_factory=list)
    """`ekt verify` output file(s) (required)"""
    out: str = "train_pairs.jsonl"
    """the training pairs"""
    keep: Keep = "first"
    """first correct program per question (published) or all unique ones"""
    decontaminate: str = "test"
    """drop questions that also appear in this split's file ('' to disable)"""


@dataclass
class EvaluateOptions(TaskConfig, PromptFormatOption, DeviceOption):
    """`ekt evaluate` options."""

    task: str | None = None
    """the task evaluated: a built-in task (`ekt tasks`) or a task file (YAML: name, data,
    question, answer, answer_format, id, splits: {train: FILE-SPLIT, test: ...}, exemplars);
    None: the task of --out's earlier records or of the pairs --model was trained on, else
    gsm8k"""
    model: str = ""
    """model spec (required)"""
    out: str = ""
    """output folder (required)"""
    prompt: Literal["teacher", "student"] = "student"
    """teacher: few-shot prompt; student: bare question"""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """the evaluation budget"""
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    """where programs run"""
    ray: RayCluster | None = None
    """on a Ray cluster (--ray [ADDRESS])"""


@dataclass
class RunOptions:
    """`ekt run CONFIG` options (any run-config key is a flag too)."""

    out: str | None = None
    """run folder (None: runs/<name>)"""
    force: bool = False
    """redo stages whose settings changed"""
    dry_run: bool = False
    """print the plan (every stage's prompts, samples, tokens, cost, time and memory) and exit:
    loads no model (tokenizers only), writes nothing (see ekt.pipeline.plan)"""
    json: bool = False
    """with --dry-run: print the plan as JSON instead of text"""
    show: bool = False
    """print the resolved config (every key: the file, the defaults and the overrides, as
    config.yaml will hold it) and exit; also --print_config"""


@dataclass
class ReportOptions:
    """`ekt report RUN_DIR...` options."""

    out: str | None = None
    """HTML file (None: RUN_DIR/report.html for one run, ./report.html for several)"""
    reference: str = "ekt"
    """method paired differences are taken against"""
    questions: int = 200
    """questions whose programs are embedded in the drill-down"""
    samples: int = 4
    """sampled programs shown per model and question"""
    resamples: int = 2000
    """bootstrap resamples"""
    seed: int = 0
    """bootstrap seed"""
    update_results: bool = False
    """also rewrite each run's results.json/results.md with intervals"""


@dataclass
class DemoOptions:
    """`ekt demo` options."""

    out: str | None = None
    """run folder (None: runs/demo)"""


@dataclass
class ModelsOptions:
    """`ekt models [SPEC]` takes no options."""


@dataclass
class TasksOptions(PromptFormatOption):
    """`ekt tasks [TASK]` options."""

    data_dir: str | None = None
    """with TASK: its folder of <split>.jsonl/.csv/.parquet files (as --data-dir elsewhere)"""


@dataclass
class ExportOptions:
    """`ekt export RUN_DIR` options."""

    format: Literal["messages", "prompt-completion", "hf"] = "messages"
    """messages (TRL chat JSONL), prompt-completion (JSONL), hf (a datasets folder)"""
    out: str | None = None
    """the JSONL file or dataset folder to write (required but with --push-to-hub)"""
    method: str = "ekt"
    """whose training pairs: a method that trains on pairs (ekt.methods.registry)"""
    push_to_hub: str | None = None
    """also upload the dataset (or, with --checkpoint, the student) to this hub repo"""
    checkpoint: bool = False
    """push the method's trained student instead of the pairs"""
    prompt_format: str | None = None
    """the layout of the exported pairs: function, chat, tinygsm or a YAML file (None: the one
    the student was trained in, as the run recorded it)"""


# (options, help, positional arguments: (name, argparse keywords)); options named by
# "module:Class" are imported when that command is parsed (torch and transformers stay out of
# every other command's start-up)
COMMAND_OPTIONS: dict[str, tuple[type | str, str, tuple[tuple[str, dict], ...]]] = {
    "generate": (GenerateOptions, COMMAND_HELP["generate"], ()),
    "verify": (VerifyOptions, COMMAND_HELP["verify"], ()),
    "filter": (FilterOptions, COMMAND_HELP["filter"], ()),
    "train": ("ekt.training.options:TrainOptions", COMMAND_HELP["train"], ()),
    "evaluate": (EvaluateOptions, COMMAND_HELP["evaluate"], ()),
    "run": (RunOptions, COMMAND_HELP["run"], (("config", {"help": "YAML file (see configs/)"}),)),
    "demo": (DemoOptions, COMMAND_HELP["demo"], ()),
    "report": (ReportOptions, COMMAND_HELP["report"],
               (("runs", {"nargs": "+", "metavar": "RUN_DIR", "help": "run folders"}),)),
    "models": (ModelsOptions, COMMAND_HELP["models"],
               (("spec", {"nargs": "?", "help": "model spec to resolve"}),)),
    "tasks": (TasksOptions, COMMAND_HELP["tasks"],
              (("task", {"nargs": "?", "help": "a task file (YAML) or a built-in name"}),)),
    "export": (ExportOptions, COMMAND_HELP["export"],
               (("run_dir", {"help": "the run folder"}),)),
}  # fmt: skip
REQUIRED = {"generate": ("model", "out"), "verify": ("programs", "out"), "filter": ("executions",),
            "train": ("student", "pairs", "out"), "evaluate": ("model", "out")}  # fmt: skip


# -- from the dataclass fields to flags -------------------------------------------------------


def options_class(command: str) -> type:
    """The options dataclass of ``command`` (imported now when named by path)."""
    cls = COMMAND_OPTIONS[command][0]
    if isinstance(cls, str):
        import importlib

        module, _, name = cls.partition(":")
        cls = getattr(importlib.import_module(module), name)
    return cls


# `ekt COMMAND --help` lists the common options; `--help-all` lists every one (all are accepted
# either way). Hidden from --help: the keys of these blocks but those in HELP_COMMON, the keys
# in HELP_MORE, and a block's own loader flags (--sampling CONFIG, --ray.help).
HELP_MORE_BLOCKS = ("backend", "sandbox", "ray")
HELP_COMMON = {"sampling.backend.name", "sampling.backend.base_url", "sampling.backend.api",
               "sampling.backend.served_model", "eval.backend.name", "eval.backend.base_url",
               "sandbox.workers", "sandbox.timeout", "ray"}  # fmt: skip
HELP_MORE = {"dev_size", "dev_seed", "shard_size", "keep", "executions", "sampling.stop",
             "sampling.round_size", "sampling.target", "sampling.give_up_after", "eval.stop",
             "eval.task_data", "train.output_dir", "train.adam_beta1", "train.adam_beta2",
             "train.adam_epsilon", "train.gradient_accumulation_steps", "train.data_seed",
             "train.torch_compile", "train.report_to", "train.lora_alpha", "train.lora_dropout",
             "train.lora_target_modules",
             "kd.teacher_device", "kd.teacher_dtype"}  # fmt: skip


def _rarely_used(dest: str, keys: dict[str, Any]) -> bool:
    if dest not in keys:  # a block's loader (--sandbox CONFIG) or class help (--ray.help)
        return "." in dest or any(k.startswith(dest + ".") for k in keys)
    if dest in HELP_COMMON:
        return False
    return dest in HELP_MORE or any(b in HELP_MORE_BLOCKS for b in dest.split("."))


def command_parser(
    command: str, helps: bool = True, full: bool = True
) -> jsonargparse.ArgumentParser:
    """The parser of ``command``; ``helps=False``: for parsing only (no help text read from
    the sources' comments, which costs start-up time); ``full=False``: its --help page lists
    the common options only (``_rarely_used``), and says how to see the rest."""
    _, text, positional = COMMAND_OPTIONS[command]
    cls = options_class(command)
    parser = jsonargparse.ArgumentParser(
        prog=f"ekt {command}", description=text, exit_on_error=False
    )
    for name, kwargs in positional:
        parser.add_argument(name, **kwargs)
    add_dataclass(parser, cls, None, helps)
    names = aliases(leaf_keys(cls))
    short: dict[str, list[str]] = {}
    for n, key in names.items():
        if n != key and (n != key.replace(".", "_") or key.count(".") == 1):
            short.setdefault(key, []).append("--" + n.replace("_", "-"))
    for action in parser._actions:
        if action.dest in short:
            action.help = f"{action.help or ''} [also {', '.join(sorted(short[action.dest]))}]"
    if not full:
        keys, hidden = leaf_keys(cls), 0
        for action in parser._actions:
            if action.option_strings and _rarely_used(action.dest, keys):
                hidden += action.dest in keys
                action.help = argparse.SUPPRESS
        if hidden:
            parser.epilog = (
                f"{hidden} more options (the engine's, the sandbox's, Ray's and rarely changed "
                f"settings), all accepted here: ekt {command} --help-all"
            )
    return parser


def parse(command: str, argv: list[str]) -> tuple[Any, jsonargparse.Namespace]:
    """The options of ``command`` (a dataclass) and the positional arguments."""
    cls = options_class(command)
    keys = leaf_keys(cls)
    canonical, typed = normalize(argv, keys)
    parser = command_parser(command, helps=False)
    try:
        ns = parser.parse_args(canonical)
    except (jsonargparse.ArgumentError, TypeError, ValueError) as e:
        message = suggest_flags(parse_error(e), keys)
        for key, flag in sorted(typed.items(), key=lambda kv: -len(kv[0])):
            message = re.sub(rf"(?<![\w.-])(--)?{re.escape(key)}(?![\w.])", flag, message)
        raise UsageError(command, message) from None
    positional = {name: ns.pop(name) for name, _ in COMMAND_OPTIONS[command][2]}
    try:
        options = instantiate(cls, ns)
        for f in dataclasses.fields(options):  # every block checks its values
            block = getattr(options, f.name)
            if dataclasses.is_dataclass(block) and hasattr(block, "validate"):
                try:
                    block.validate()
                except EktError as e:
                    raise EktError(name_key(str(e), type(block), f"{f.name}.")) from None
    except EktError as e:  # the key in the message, as the user typed its flag
        message = str(e)
        for key in sorted(keys, key=len, reverse=True):
            if message.startswith(key):
                flag = typed.get(key, "--" + key.rsplit(".", 1)[-1].replace("_", "-"))
                message = flag + message[len(key) :]
                break
        raise EktError(message) from None
    for key in REQUIRED.get(command, ()):
        if not getattr(options, key):
            raise UsageError(command, f"the following arguments are required: --{key}")
    return options, jsonargparse.Namespace(**positional)


class UsageError(Exception):
    def __init__(self, command: str, message: str):
        super().__init__(message)
        self.command = command


# -- the commands -------------------------------------------------------------------------


def _cluster(ray: RayCluster | None, backend: BackendConfig | None, workers: int | None):
    """The Ray cluster the flags ask for (vLLM replicas get their GPUs), validated, or None."""
    if ray is None:
        return None
    from ekt.pipeline.distributed import import_ray

    import_ray()  # a missing Ray is a one-line error before any work
    if ray.gpus_per_replica < 0 and backend is not None and backend.name == "vllm":
        gpus = backend.tensor_parallel_size * backend.data_parallel_size
        ray = dataclasses.replace(ray, gpus_per_replica=gpus)
    if not ray.cpus_per_verifier and workers:
        ray = dataclasses.replace(ray, cpus_per_verifier=workers)
    ray.validate()
    return ray


def _limited(problems: list, limit: int | None) -> list:
    return problems[:limit] if limit else problems


# Commands whose --out is a stage's output: one process at a time writes it (ekt.locks).
_WRITERS = ("generate", "verify", "filter", "train", "evaluate")


def _one_writer(command: str, options: Any) -> contextlib.AbstractContextManager:
    from ekt.locks import output_lock

    out = getattr(options, "out", None)
    return output_lock(out) if out and command in _WRITERS else contextlib.nullcontext()


def cmd_generate(o: GenerateOptions, _: Any) -> None:
    from ekt.data.prompt_format import load_format
    from ekt.generation.backends import make_sampler
    from ekt.generation.budget import adaptive_budget
    from ekt.generation.generate import format_stops, generate
    from ekt.models import model_fingerprint
    from ekt.verification.verify import RoundJudge

    backend = o.sampling.backend
    backend.validate()
    task = o.load_task((o.sampling.prompt_format,))
    fmt = load_format(task.prompt_format(o.sampling.prompt_format))
    _check_format_and_api(fmt, backend)
    problems = _limited(task.load(o.split), o.limit)
    if backend.name == "openai":  # the weights are the server's: name them by where they live
        fingerprint = f"openai:{backend.base_url}:{backend.served_model or o.model}"
    else:
        fingerprint = model_fingerprint(o.model)
    settings = {"model": o.model, "model_fingerprint": fingerprint, "task": o.task,
                "split": o.split, "dev_size": o.dev_size,
                **_where_task(task, o.data_dir)}  # fmt: skip
    budget = adaptive_budget(o.sampling, o.keep)
    cluster = _cluster(o.ray, backend, o.sandbox.workers if budget else None)
    with contextlib.ExitStack() as stack:
        judge = None
        if budget is not None:  # each round verified before the next is drawn
            executions = Path(o.executions or Path(o.out) / "executions.jsonl")
            if o.force:  # the grades of the samples --force discards
                executions.unlink(missing_ok=True)
            judge = stack.enter_context(
                RoundJudge(o.out, executions, task, o.sandbox, cluster=cluster,
                           prompt_format=o.sampling.prompt_format)  # fmt: skip
            )
        summary = generate(
            make_sampler(o.model, o.device, o.sampling.batch_size, backend),
            problems,
            o.out,
            format_stops(o.sampling.sampling_params(), fmt),
            prompt=o.prompt,
            shard_size=o.shard_size,
            settings=settings,
            force=o.force,
            cluster=cluster,
            prompt_format=fmt,
            price=backend.price,
            budget=budget,
            judge=judge,
        )
    print(summary.line())
    if budget is not None:
        print(f"graded rounds: {executions} (ekt filter --executions {executions})")


def _where_task(task: Any, data_dir: str | None) -> dict[str, str | None]:
    """Where later stages find the task without --task (``ekt.data.discover``)."""
    return {"task_file": str(Path(task.spec.path).resolve()) if task.spec.path else None,
            "data_dir": str(Path(data_dir).resolve()) if data_dir else None}  # fmt: skip


def _check_format_and_api(fmt: Any, backend: BackendConfig) -> None:
    """A chat format needs the chat API; a completion format on the chat API gets a note."""
    if backend.name != "openai":
        return
    if fmt.is_chat and backend.api != "chat":
        raise EktError(
            f"--prompt-format {fmt.name} gives chat messages; the openai backend sends them "
            "only with --api chat"
        )
    if not fmt.is_chat and backend.api == "chat":
        print(
            f"note: --api chat with the completion format {fmt.name!r} sends each few-shot "
            "prompt as one user message; chat models answer better with --prompt-format chat",
            file=sys.stderr,
        )


def _task_from_records(o: Any, ids: Any, near: list[Any], what: str) -> None:
    """``--task`` (and ``--data-dir``) from the records' problem ids when not given."""
    if o.task is not None:
        return
    from ekt.data.discover import find_task

    ids = [i for i in ids if isinstance(i, str)]
    if not ids:  # no records: the stage itself says what is wrong with its input
        o.task = "gsm8k"
        return
    found = find_task(ids, near, what)
    o.task = found.task
    if o.data_dir is None and found.data_dir:
        o.data_dir = found.data_dir


def cmd_verify(o: VerifyOptions, _: Any) -> None:
    from ekt.verification.verify import iter_inputs, verify

    o.sandbox.validate()
    if next(iter_inputs(o.programs, o.prompt_format), None) is None:
        raise EktError(f"{o.programs}: no programs to verify (empty input)")
    if o.task is None:
        ids = (obj["problem_id"] for _, _, obj in iter_inputs(o.programs, o.prompt_format))
        _task_from_records(o, ids, [o.programs, o.out], f"--programs {o.programs}")
    cluster = _cluster(o.ray, None, o.sandbox.workers)
    summary = verify(o.programs, o.out, o.load_task((o.prompt_format,)), o.split, o.sandbox,
                     cluster=cluster, prompt_format=o.prompt_format)  # fmt: skip
    print(summary.line())


def cmd_filter(o: FilterOptions, _: Any) -> None:
    from ekt.records import read_jsonl
    from ekt.verification.filtering import filter_stage

    if o.task is None:
        ids = (obj.get("problem_id") for path in o.executions for _, obj in read_jsonl(path))
        _task_from_records(o, ids, list(o.executions), f"--executions {' '.join(o.executions)}")
    summary = filter_stage(o.executions, o.out, o.load_task(), keep=o.keep,
                           decontaminate=o.decontaminate or None, require_records=True)  # fmt: skip
    print(summary.line())


def cmd_train(o: Any, _: Any) -> None:
    from ekt.methods.kd import train_kd
    from ekt.training.train import train_student

    try:
        if o.method == "kd":
            if not o.teacher:
                raise EktError("--method kd needs --teacher")
            o.kd.validate()
            result = train_kd(o.student, o.teacher, o.pairs, o.out, o.train, o.kd, True, o.device)
        else:
            result = train_student(o.student, o.pairs, o.out, o.train, device=o.device,
                                   prompt_format=o.prompt_format)  # fmt: skip
        if result is None:
            print(f"train: no training pairs in {o.pairs}; nothing to train")
    finally:
        _end_process_group()


def _end_process_group() -> None:
    """Under ``accelerate launch``: wait for every rank, then tear the process group down.
    Left to interpreter exit, gloo's threads can abort a rank after its work is done."""
    import sys as _sys

    if "torch" not in _sys.modules:  # nothing was trained in this process
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def _evaluated_ids(o: EvaluateOptions) -> list[str]:
    """Problem ids an evaluation can take its task from: --out's earlier samples, else the
    training pairs of the student --model names (its train_summary.json)."""
    from ekt.records import read_jsonl

    samples = sorted(Path(o.out).glob("*/samples/*.jsonl")) if o.out else []
    for path in samples:
        for _, obj in read_jsonl(path):
            return [obj.get("problem_id", "")]
    try:
        summary = json.loads((Path(o.model) / "train_summary.json").read_text())
        for _, obj in read_jsonl(summary["pairs_file"]):
            return [obj.get("problem_id", "")]
    except (OSError, ValueError, KeyError, TypeError, EktError):
        pass
    return []


def cmd_evaluate(o: EvaluateOptions, _: Any) -> None:
    from ekt.evaluation.evaluate import evaluate, score_line
    from ekt.generation.backends import make_sampler

    cfg = o.eval
    cfg.validate()
    o.sandbox.validate()
    if o.task is None:
        ids = _evaluated_ids(o)
        if ids:
            _task_from_records(o, ids, [o.out, o.model], f"the records of {o.out or o.model}")
        else:  # nothing recorded yet: the default task
            o.task = "gsm8k"
    task = o.load_task((o.prompt_format,))
    scores = evaluate(
        make_sampler(o.model, o.device, cfg.batch_size, cfg.backend),
        _limited(task.load(cfg.split), cfg.limit),
        o.out,
        cfg,
        task,
        prompt=o.prompt,
        sandbox=o.sandbox,
        settings={"model": o.model, **_where_task(task, o.data_dir)},
        prompt_format=task.prompt_format(o.prompt_format)
        if o.prompt == "teacher"
        else o.prompt_format,
        cluster=_cluster(o.ray, cfg.backend, o.sandbox.workers),
    )
    print(score_line(o.model, scores))


def cmd_run(o: RunOptions, args: Any, overrides: list[str] = ()) -> None:  # type: ignore[assignment]
    if o.json and not o.dry_run:
        raise EktError("--json prints the plan: use it with --dry-run")
    from ekt.pipeline.config import load_config
    from ekt.pipeline.experiment import run_experiment
    from ekt.pipeline.plan import plan_experiment, render

    cfg = load_config(args.config, list(overrides))
    if o.show:
        from ekt.pipeline.config import dump_config

        print(dump_config(cfg), end="")
        return
    if cfg.ray is not None:
        cfg = dataclasses.replace(
            cfg, ray=_cluster(cfg.ray, cfg.teacher_sampling.backend, cfg.sandbox.workers)
        )
    if o.dry_run:
        plan = plan_experiment(cfg, o.out)
        print(plan.to_json() if o.json else render(plan, f"ekt run {args.config} --dry-run"))
        return
    run_experiment(cfg, o.out, force=o.force)


def _own_flags(cls: type) -> tuple[set[str], set[str]]:
    """The flags of a command's own options (every spelling), and those that take a value."""
    own, valued = {"-h", "--help"}, set()
    for f in dataclasses.fields(cls):
        names = {f"--{f.name}", f"--{f.name.replace('_', '-')}"}
        own |= names
        if f.type not in ("bool", bool):
            valued |= names
    return own, valued


def demo_config_path() -> Path:
    here = Path(__file__).resolve()
    for base in (Path.cwd(), *here.parents):
        p = base / "configs" / "demo.yaml"
        if p.is_file():
            return p
    raise EktError("configs/demo.yaml not found; run from the ekt repository")


DEMO_BANNER = """\
ekt demo: a SMALL REAL run of explicit knowledge transfer on this machine ({path}).
  Task {task}: procedural program-aided problems at the embedded models' scale (chosen by
  scripts/calibrate_procedural.py on training questions). Teacher {teacher}, few-shot, writes
  programs for {train} training questions; the sandbox keeps those that return the answer;
  student {student} is fine-tuned on them (ekt) and, on the same budget, by live distillation
  (kd), on every teacher sample (seq-kd) and on its own verified programs (expert-iteration).
  Every model is scored on {test} held-out questions; results.md ends with the paper's claims
  (EKT vs KD, EKT vs expert iteration, best student vs teacher) checked on those records.
  The GSM8K version, where these models solve almost nothing: ekt run configs/demo_gsm8k.yaml
  Full scale: `ekt run configs/paper.yaml` on GPUs.
"""


def cmd_demo(o: DemoOptions, _: Any) -> None:
    from ekt.pipeline.config import load_config
    from ekt.pipeline.experiment import run_experiment

    path = demo_config_path()
    cfg = load_config(path)
    print(DEMO_BANNER.format(path=path, task=cfg.task, teacher=cfg.teacher, student=cfg.student,
                             train=cfg.train_limit or "all", test=cfg.eval.limit or "all"))
    run_experiment(cfg, o.out)


def cmd_report(o: ReportOptions, args: Any) -> None:
    from ekt.report.build import add_statistics, build_report
    from ekt.report.claims import run_claims
    from ekt.report.load import analyse, load_run
    from ekt.report.tables import claims_lines

    for key in ("questions", "samples", "resamples"):
        if getattr(o, key) < 1:
            raise EktError(f"--{key} must be >= 1, got {getattr(o, key)}")
    if o.update_results:
        for d in args.runs:
            add_statistics(d, reference=o.reference, resamples=o.resamples, seed=o.seed)
            print(f"report: intervals written to {d}/results.json and results.md")
    path = build_report(args.runs, o.out, reference=o.reference, resamples=o.resamples,
                        seed=o.seed, max_questions=o.questions, max_samples=o.samples)  # fmt: skip
    if len(args.runs) > 1:  # the claims of the runs side by side, from their records
        sections = [(Path(d).name, run_claims(analyse(load_run(d), o.reference, o.resamples,
                                                      o.seed, curves=False)))
                    for d in args.runs]  # fmt: skip
        print("\n".join(claims_lines(sections)).strip())
    print(f"report: {path}")


def cmd_models(o: ModelsOptions, args: Any) -> None:
    from ekt.models import PRESETS, resolve_model

    if args.spec:
        print(resolve_model(args.spec))
        return
    for name, info in PRESETS.items():
        print(f"{name}\t{info}")


def cmd_tasks(o: TasksOptions, args: Any) -> None:
    if not args.task:
        from ekt.data.tasks import task_table

        print(task_table())
        return
    print(check_task(args.task, o.data_dir, o.prompt_format))


def check_task(spec: str, data_dir: str | None, prompt_format: str) -> str:
    """`ekt tasks TASK`: every split loaded (each row's question and gold answer checked),
    then the teacher's and the student's prompt for the first training question."""
    from ekt.data.prompt_format import load_format

    task = TaskConfig(task=spec, data_dir=data_dir).load_task((prompt_format,))
    lines = [f"task {task.name}: source {task.source}; answer format {task.answer_format}"]
    first = None
    for split in task.spec.splits:
        problems = task.load_file(split)
        lines.append(f"  {split}: {len(problems)} problems (ids {problems[0].id} .. "
                     f"{problems[-1].id})" if problems else f"  {split}: no problems")  # fmt: skip
        if first is None and problems and split == "train":
            first = problems[0]
    if first is None:
        return "\n".join([*lines, "  (no training split: no prompt to show)"])
    teacher = load_format(task.prompt_format(prompt_format))
    student = load_format(prompt_format)

    def show(prompt: Any) -> str:
        if isinstance(prompt, str):
            return prompt
        return "\n".join(f"[{m['role']}]\n{m['content']}" for m in prompt)

    rule = "-" * 72
    lines += [f"teacher prompt ({teacher.label}) for {first.id}, gold answer {first.answer!r}:",
              rule, show(teacher.teacher(first)).rstrip("\n"), rule,
              f"student prompt ({student.label}) for {first.id}:", rule,
              show(student.student(first)).rstrip("\n"), rule]  # fmt: skip
    return "\n".join(lines)


def cmd_export(o: ExportOptions, args: Any) -> None:
    from ekt.pipeline.export import export, push_to_hub, student_folder

    if o.checkpoint:
        if not o.push_to_hub:
            raise EktError("--checkpoint pushes a student: give --push-to-hub REPO")
        folder = student_folder(Path(args.run_dir), o.method)
        print(f"export: pushed {folder} -> {push_to_hub(folder, o.push_to_hub, 'model')}")
        return
    if o.push_to_hub and o.format != "hf":
        raise EktError("--push-to-hub uploads a dataset: use it with --format hf")
    if not o.out and not o.push_to_hub:
        raise EktError("--out PATH is required (or --format hf with --push-to-hub REPO)")
    out = o.out or tempfile.mkdtemp(prefix="ekt-export-")
    print(export(args.run_dir, o.format, out, o.method, o.prompt_format).line())
    if o.push_to_hub:
        print(f"export: pushed {out} -> {push_to_hub(out, o.push_to_hub, 'dataset')}")


COMMANDS: dict[str, Callable[..., None]] = {
    "generate": cmd_generate,
    "verify": cmd_verify,
    "filter": cmd_filter,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "run": cmd_run,
    "demo": cmd_demo,
    "report": cmd_report,
    "models": cmd_models,
    "tasks": cmd_tasks,
    "export": cmd_export,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = False
    while argv and argv[0].startswith("-"):
        flag = argv.pop(0)
        if flag == "--debug":
            debug = True
        elif flag == "--version":
            print(f"ekt {__version__}")
            return 0
        elif flag in ("-h", "--help"):
            print(usage(), end="")
            return 0
        else:
            print(f"ekt: error: unrecognized arguments: {flag} (see `ekt --help`)", file=sys.stderr)
            return 2
    if not argv or argv[0] not in COMMANDS:
        what = f"invalid command {argv[0]!r}" if argv else "a command is required"
        print(f"ekt: error: {what}; choose from {', '.join(COMMANDS)} (see `ekt --help`)",
              file=sys.stderr)  # fmt: skip
        return 2
    command, rest = argv[0], argv[1:]
    topic = helpcache.help_topic([command, *rest])
    if topic in (command, f"{command}{helpcache.ALL}"):  # rendered once, then kept
        text = command_parser(command, full=topic != command).format_help()
        helpcache.store(topic, text)
        print(text, end="")
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    options: Any = None
    try:
        overrides: list[str] = []
        if command == "run":  # its own flags here, the rest are run-config keys
            rest = ["--show" if t in ("--print_config", "--print-config") else t for t in rest]
            own, valued = _own_flags(RunOptions)
            mine, i = [], 0
            while i < len(rest):
                tok = rest[i]
                if tok.split("=")[0] in own or not tok.startswith("-"):
                    mine.append(tok)
                    if tok in valued and i + 1 < len(rest):
                        mine.append(rest[i + 1])
                        i += 1
                else:
                    overrides.append(tok)
                    while i + 1 < len(rest) and not rest[i + 1].startswith("--"):
                        overrides.append(rest[i + 1])
                        i += 1
                i += 1
            rest = mine
            if overrides:  # run-config keys: the whole RunConfig (transformers with it)
                from ekt.pipeline.config import RunConfig

                overrides, _ = normalize(overrides, leaf_keys(RunConfig))
        options, positional = parse(command, rest)
        if command == "run":
            cmd_run(options, positional, overrides)
        else:
            with _one_writer(command, options):
                COMMANDS[command](options, positional)
    except UsageError as e:
        print(f"ekt {command}: error: {e} (see `ekt {command} --help`)", file=sys.stderr)
        return 2
    except Exception as e:  # EktError, or the file system refusing (full, read-only...)
        out = getattr(options, "out", None) or "."
        message = None if debug else user_message(e, out)
        if message is None:
            raise
        print(f"ekt {command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ekt {command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
