"""Run configuration: one tree of dataclasses, read from YAML and overridden from flags.

Every setting is a typed field of the dataclass of the part that uses it, declared once:
``SamplingParams`` (ekt.generation.config), ``BackendConfig`` (ekt.generation.backends),
``SandboxConfig`` (ekt.sandbox.pool), ``TrainConfig`` (``transformers.TrainingArguments``,
ekt.training.config), ``EvalConfig``, ``RayCluster``, and each method's own block (its
``settings`` in ``ekt.methods.registry``). ``RunConfig`` nests them; the YAML reader and
every CLI flag are generated from the fields by jsonargparse (``config_parser``), so a run
config's keys, ``ekt run CONFIG --train.learning_rate 2e-5`` overrides and the stage
commands' flags are the same names.

**Adding a setting.** Add a typed field with a default to the dataclass of the part that
uses it, and document it with an attribute docstring (a string literal on the line after
the field) or, failing that, a trailing ``# comment``: that text is the flag's help. Use
``typing.Literal[...]`` for enumerated values (the parser then checks the choice and lists
the choices in ``--help``). Nothing else is needed: the field is a YAML key, a flag of
every command whose options include that dataclass, and is written to the run folder's
``config.yaml``. Check its value in the class's ``validate``/``__post_init__`` and raise
``EktError`` naming the key.

Unknown keys and wrong types stop with a message naming the key (YAML) or the flag, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonargparse
import yaml

from ekt.data.prompt_format import load_format
from ekt.errors import EktError
from ekt.evaluation.evaluate import EvalConfig
from ekt.methods.expert_iteration import ExpertIterationConfig
from ekt.methods.grpo import GRPOSettings
from ekt.methods.onpolicy import OnPolicySettings
from ekt.methods.registry import NAMES, REGISTRY
from ekt.methods.seqkd import SeqKDConfig
from ekt.options import DeviceOption
from ekt.pipeline.distributed import RayCluster
from ekt.pipeline.flags import (  # noqa: F401 - re-exported: the settings' one home
    TaskConfig,
    TeacherSampling,
    _helps,
    add_dataclass,
    check_keys,
    instantiate,
    leaf_keys,
    name_key,
    parse_error,
)
from ekt.records import KEEP, Keep
from ekt.sandbox.pool import SandboxConfig
from ekt.training.config import KDConfig, TrainConfig

jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)

# the methods' names, from their registry (ekt.methods.registry)
Method = typing.Literal[NAMES]  # type: ignore[valid-type]


@dataclass
class RunConfig(TaskConfig, DeviceOption):
    """A whole experiment (``ekt run CONFIG``): every key of a run config."""

    name: str = "run"
    """run name: the run folder is runs/<name> unless --out says otherwise"""
    teacher: str = "gemma3-270m"
    """teacher model: HF hub id, local HF folder, .gguf file or preset"""
    student: str = "smollm2-135m"
    """student model spec"""
    teachers: list[str] = field(default_factory=list)
    """a matrix: these teachers replace `teacher` (see ekt.pipeline.matrix)"""
    students: list[str] = field(default_factory=list)
    """a matrix: these students replace `student`"""
    methods: list[Method] = field(default_factory=lambda: ["ekt"])
    """what the students learn from"""
    train_split: str = "train"
    """split the teacher writes programs for"""
    train_limit: int | None = None
    """first N training questions (None: all)"""
    keep: Keep = "first"
    """correct programs kept per question: the first, or all unique ones"""
    student_prompt_format: str = "function"
    """the layout the student is trained and evaluated in: function (the default), chat (an
    instruct student, on its own chat template), tinygsm, or a YAML file"""
    teacher_sampling: TeacherSampling = field(default_factory=TeacherSampling)
    """how the teacher samples"""
    teacher_token_budget: int | None = None
    """teacher tokens (sampled plus scored) each method may spend. The methods that learn from
    the teacher's samples use the first that fit (every question's sample 0, then sample 1,
    ...: what a smaller teacher_sampling.n would draw); kd counts its teacher's scoring in;
    on-policy distillation stops before its teacher scores more. None: no cap"""
    train: TrainConfig = field(default_factory=TrainConfig)
    """fine-tuning (transformers.TrainingArguments with ekt's defaults)"""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """evaluation budget"""
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    """where programs run (ekt.sandbox.pool.SandboxConfig)"""
    kd: KDConfig = field(default_factory=KDConfig)
    """method kd: the distillation term"""
    seq_kd: SeqKDConfig = field(default_factory=SeqKDConfig)
    """method seq-kd: which teacher samples it learns from"""
    expert_iteration: ExpertIterationConfig = field(default_factory=ExpertIterationConfig)
    """method expert-iteration"""
    grpo: GRPOSettings = field(default_factory=GRPOSettings)
    """method grpo: TRL's GRPOConfig (its trl block) and ekt's rollouts"""
    on_policy: OnPolicySettings = field(default_factory=OnPolicySettings)
    """method on-policy: its teacher and TRL's DistillationConfig (its trl block)"""
    ray: RayCluster | None = None
    """generation and verification on a Ray cluster (None: this machine)"""
    evaluate_teacher: bool = True
    """also evaluate the teacher (few-shot)"""
    evaluate_base_student: bool = True
    """also evaluate the student before training"""
    note: str = ""
    """free text printed with the results (what this run is)"""

    @property
    def is_matrix(self) -> bool:
        return bool(self.teachers or self.students)

    def teacher_list(self) -> list[str]:
        return self.teachers or [self.teacher]

    def student_list(self) -> list[str]:
        return self.students or [self.student]

    def pairs(self) -> list[tuple[str, str]]:
        """(teacher, student) of every cell, teachers outer."""
        return [(t, s) for t in self.teacher_list() for s in self.student_list()]

    def validate(self) -> None:
        for role, specs in (("teachers", self.teachers), ("students", self.students)):
            if len(set(specs)) != len(specs):
                raise EktError(f"{role}: a model is listed twice")
            if any(not x for x in specs):
                raise EktError(f"{role}: empty model spec")
        for m in self.methods:
            if m not in REGISTRY:
                raise EktError(f"methods: unknown method {m!r}; available: {', '.join(NAMES)}")
        if len(set(self.methods)) != len(self.methods):
            raise EktError("methods: a method is listed twice")
        for i, method in enumerate(self.methods):  # a method built on another comes after it
            named = REGISTRY[method].named(self)
            if named in REGISTRY and named not in self.methods[:i]:
                key = REGISTRY[method].builds_on
                raise EktError(f"{key}: {named} must be listed before {method} in methods")
        if self.teacher_token_budget is not None and self.teacher_token_budget <= 0:
            raise EktError(
                f"teacher_token_budget: must be a positive number of tokens (or null for no "
                f"cap), got {self.teacher_token_budget}"
            )
        if self.keep not in KEEP:
            raise EktError(f"keep: must be one of {', '.join(KEEP)}, got {self.keep!r}")
        if self.eval.backend.name == "openai":
            raise EktError(
                "eval.backend: openai cannot serve the students this run trains; use "
                "transformers or vllm (the teacher's few-shot evaluation uses "
                "teacher_sampling.backend)"
            )
        for key, spec in (
            ("teacher_sampling.prompt_format", self.teacher_sampling.prompt_format),
            ("student_prompt_format", self.student_prompt_format),
        ):
            try:
                load_format(spec)
            except EktError as e:
                raise EktError(f"{key}: {e}") from None
        blocks = ("teacher_sampling.backend", "sandbox", "ray", "eval", "train")
        own = tuple(m.settings_key for m in REGISTRY.values() if m.settings_key)
        for block in (*blocks, *own):  # messages name the block
            obj: Any = self
            for part in block.split("."):
                obj = getattr(obj, part)
            if obj is None:
                continue
            try:
                obj.validate()
            except EktError as e:
                raise EktError(name_key(str(e), type(obj), f"{block}.")) from None


# -- the generated parser -------------------------------------------------------------------


@functools.cache
def config_parser() -> jsonargparse.ArgumentParser:
    """RunConfig's keys as options: YAML blocks are read and ``--a.b`` flags parsed by it."""
    parser = jsonargparse.ArgumentParser(prog="ekt run", exit_on_error=False)
    add_dataclass(parser, RunConfig, None)
    return parser


def build_config(
    data: dict, overrides: list[str] = (), explain: Callable[[str], str] = str  # type: ignore[assignment]
) -> RunConfig:
    """The RunConfig of a parsed YAML mapping and ``--key value`` overrides, validated;
    ``explain`` words an override's error for the command line it came from (``ekt.cli``)."""
    parser = config_parser()
    check_keys(RunConfig, data)
    try:
        ns = parser.parse_object(data)
    except (jsonargparse.ArgumentError, TypeError, ValueError) as e:
        raise EktError(parse_error(e)) from None
    if overrides:
        try:
            ns = parser.parse_args(list(overrides), namespace=ns)
        except (jsonargparse.ArgumentError, TypeError, ValueError) as e:
            raise EktError(f"command line: {explain(parse_error(e))}") from None
    cfg = instantiate(RunConfig, ns)
    cfg.validate()
    return cfg


def load_config(
    path: str | Path,
    overrides: list[str] = (),  # type: ignore[assignment]
    explain: Callable[[str], str] = str,
) -> RunConfig:
    """The run config in the YAML file ``path``, with command-line ``overrides`` on top.

    A file may start from another: ``extends: demo.yaml`` (a path relative to the file) reads
    that config first and lays this file's keys over it, block by block (a mapping merges
    into the base's mapping; any other value, a list included, replaces the base's). So a
    variant states only what differs and never restates a setting that could drift.
    """
    path = Path(path)
    data = _read_yaml(path, ())
    try:
        return build_config(data, overrides, explain)
    except EktError as e:
        raise EktError(f"{path}: {e}") from None


def _read_yaml(path: Path, chain: tuple[Path, ...]) -> dict:
    """The mapping in ``path`` with its ``extends`` chain resolved (merged, base first)."""
    if not path.is_file():
        raise EktError(f"{path}: config file not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}" if mark else ""
        raise EktError(f"{path}{at}: invalid YAML ({getattr(e, 'problem', e)})") from None
    except UnicodeDecodeError:
        raise EktError(f"{path}: not valid UTF-8") from None
    data = data or {}
    if not isinstance(data, dict):
        raise EktError(f"{path}: expected a mapping, got {type(data).__name__}")
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise EktError(f"{path}: extends: expected the path of another config file, got {base!r}")
    target = (path.parent / base).resolve()
    here = path.resolve()
    if target in (*chain, here):
        cycle = " -> ".join(str(p) for p in (*chain, here, target))
        raise EktError(f"{path}: extends: a config cannot extend itself ({cycle})")
    try:
        merged = _read_yaml(target, (*chain, here))
    except EktError as e:
        raise EktError(f"{path}: extends: {e}") from None
    return _merge(merged, data)


def _merge(base: dict, over: dict) -> dict:
    """``over`` laid on ``base``: mappings merge key by key, everything else replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def plain(value: Any) -> Any:
    """A config as plain YAML/JSON values: dataclasses as mappings, enums by value."""
    if isinstance(value, TrainConfig):
        return value.settings()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def dump_config(cfg: RunConfig) -> str:
    """The resolved config (every key, overrides included) as written to the run folder."""
    return yaml.safe_dump(plain(cfg), sort_keys=False, allow_unicode=True)


