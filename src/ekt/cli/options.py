"""Each ``ekt`` subcommand's options: a dataclass whose fields nest the settings' own
dataclasses; ``COMMAND_OPTIONS`` says which class, help and positional arguments a command
has. A field marked ``required(...)`` must be given on the command line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ekt.commands import COMMAND_HELP
from ekt.evaluation.config import EvalConfig
from ekt.options import DeviceOption, PromptFormatOption, required
from ekt.pipeline.distributed import RayCluster
from ekt.pipeline.flags import TaskConfig, TeacherSampling
from ekt.records import Keep
from ekt.sandbox.config import SandboxConfig

# Only the options' classes above are imported here: each command imports its own work (the
# stages, models, data) when it runs, so building any parser (``ekt COMMAND --help``) loads
# no torch, transformers, datasets, ray or trl and none of the stages' modules.

# -- each subcommand's options ------------------------------------------------------------


@dataclass
class GenerateOptions(TaskConfig, DeviceOption):
    """`ekt generate` options."""

    model: str = required(default="")
    """teacher: HF hub id, local HF folder, .gguf file or preset (required)"""
    out: str = required(default="")
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
    programs: str = required(default="")
    """JSONL file, shard folder or `ekt generate --out` (required)"""
    out: str = required(default="")
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
    executions: list[str] = required(default_factory=list)
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
    model: str = required(default="")
    """model spec (required)"""
    out: str = required(default="")
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


def options_class(command: str) -> type:
    """The options dataclass of ``command`` (imported now when named by path)."""
    cls = COMMAND_OPTIONS[command][0]
    if isinstance(cls, str):
        import importlib

        module, _, name = cls.partition(":")
        cls = getattr(importlib.import_module(module), name)
    return cls


def required_keys(command: str) -> tuple[str, ...]:
    """The fields of ``command``'s options marked ``required``."""
    import dataclasses

    return tuple(f.name for f in dataclasses.fields(options_class(command))
                 if f.metadata.get("required"))  # fmt: skip
