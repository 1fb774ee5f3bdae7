"""Run configuration: nested dataclasses loaded from YAML, one key per CLI flag.

Unknown keys and wrong types stop with a message naming the key, so a typo in
a config never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ekt.errors import EktError
from ekt.evaluation.evaluate import EvalConfig
from ekt.generation.backends import BackendConfig
from ekt.pipeline.distributed import RayCluster
from ekt.pipeline.expert_iteration import ExpertIterationConfig
from ekt.training.kd import KDConfig
from ekt.training.train import TrainConfig

# ekt: the teacher's verified programs; supervised: GSM8K reference programs;
# kd: the ekt pairs plus a live teacher's distribution (ekt.training.kd); seq-kd: every teacher
# sample, unverified; expert-iteration: the student's own programs (ekt.pipeline.expert_iteration)
METHODS = ("ekt", "supervised", "kd", "seq-kd", "expert-iteration")


@dataclass
class TeacherSampling:
    n: int = 4
    temperature: float = 0.6
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0
    batch_size: int = 16
    # which engine samples the teacher (transformers | vllm | openai; see ekt.generation.backends)
    backend: BackendConfig = field(default_factory=BackendConfig)
    # the teacher's prompt layout: function (few-shot completion, the default), chat
    # (messages; chat/instruct teachers), tinygsm, or a YAML file (ekt.data.prompt_format)
    prompt_format: str = "function"


@dataclass
class SandboxSettings:
    workers: int | None = None
    timeout: float = 5.0
    memory_mb: int = 1024
    isolation: str = "standard"


@dataclass
class RunConfig:
    name: str = "run"
    task: str = "gsm8k"
    data_dir: str | None = None
    dev_size: int = 0
    dev_seed: int = 0
    teacher: str = "gemma3-270m"
    student: str = "smollm2-135m"
    # A matrix: every teacher x every student x every method, one data and evaluation budget.
    # When given, these lists replace ``teacher`` / ``student`` (see ekt.pipeline.matrix).
    teachers: list[str] = field(default_factory=list)
    students: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=lambda: ["ekt"])
    train_split: str = "train"
    train_limit: int | None = None  # first N training questions (None: all)
    keep: str = "first"  # first | all  (correct programs kept per question)
    # the layout the student is trained and evaluated in: function (the default) or chat
    # (an instruct student, on its own chat template), tinygsm, or a YAML file
    student_prompt_format: str = "function"
    device: str | None = None
    teacher_sampling: TeacherSampling = field(default_factory=TeacherSampling)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)
    kd: KDConfig = field(default_factory=KDConfig)  # method kd
    expert_iteration: ExpertIterationConfig = field(default_factory=ExpertIterationConfig)
    # generation and verification on a Ray cluster (the ``--ray`` flags)
    ray: RayCluster | None = None
    evaluate_teacher: bool = True
    evaluate_base_student: bool = True
    note: str = ""  # free text printed with the results (what this run is)

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
            if m not in METHODS:
                raise EktError(f"methods: unknown method {m!r}; available: {', '.join(METHODS)}")
        if self.keep not in ("first", "all"):
            raise EktError(f"keep: must be first or all, got {self.keep!r}")
        if self.teacher_sampling.n < 1:
            raise EktError("teacher_sampling.n must be >= 1")
        if self.teacher_sampling.temperature < 0:
            raise EktError("teacher_sampling.temperature must be >= 0")
        try:
            self.teacher_sampling.backend.validate()
        except EktError as e:
            raise EktError(f"teacher_sampling: {e}") from None
        if self.eval.backend.name == "openai":
            raise EktError(
                "eval.backend: openai cannot serve the students this run trains; use "
                "transformers or vllm (the teacher's few-shot evaluation uses "
                "teacher_sampling.backend)"
            )
        from ekt.data.prompt_format import load_format

        for key, spec in (
            ("teacher_sampling.prompt_format", self.teacher_sampling.prompt_format),
            ("student_prompt_format", self.student_prompt_format),
        ):
            try:
                load_format(spec)
            except EktError as e:
                raise EktError(f"{key}: {e}") from None
        if self.ray is not None:
            self.ray.validate()
        if self.sandbox.isolation not in ("strict", "standard", "none"):
            raise EktError("sandbox.isolation must be strict, standard or none")
        for block in ("eval", "train", "kd", "expert_iteration"):  # messages name the block
            try:
                getattr(self, block).validate()
            except EktError as e:
                raise EktError(f"{block}: {e}") from None


def _build(cls: type, data: Any, where: str) -> Any:
    at = f"{where}: " if where else ""
    if not isinstance(data, dict):
        raise EktError(f"{at}expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(data) - names))
    if unknown:
        raise EktError(
            f"{at}unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(hints[key], value, f"{where}.{key}" if where else key)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value or {}, where)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if origin is list:
        if not isinstance(value, list):
            value = [value]
        return [_coerce(args[0], v, where) for v in value]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and type(value) is not tp:
        raise EktError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
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
    try:
        cfg = _build(RunConfig, data or {}, "")
        cfg.validate()
    except EktError as e:
        raise EktError(f"{path}: {e}") from None
    return cfg


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


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
