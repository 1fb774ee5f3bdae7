"""Run configuration: one tree of dataclasses, read from YAML and overridden from flags.

Every setting is a typed field of the dataclass of the part that uses it, declared once:
``SamplingParams`` (ekt.generation.sampling), ``BackendConfig`` (ekt.generation.backends),
``SandboxConfig`` (ekt.sandbox.pool), ``TrainConfig`` (``transformers.TrainingArguments``,
ekt.training.config), ``KDConfig``, ``EvalConfig``, ``ExpertIterationConfig``,
``RayCluster``. ``RunConfig`` nests them; the YAML reader and every CLI flag are generated
from the fields by jsonargparse (``config_parser``), so a run config's keys, ``ekt run
CONFIG --train.learning_rate 2e-5`` overrides and the stage commands' flags are the same
names.

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
import inspect
import io
import json
import re
import tokenize
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonargparse
import yaml

from ekt.data.prompt_format import load_format
from ekt.data.tasks import Task, get_task
from ekt.errors import EktError
from ekt.evaluation.evaluate import EvalConfig
from ekt.generation.backends import BackendConfig
from ekt.generation.sampling import SamplingParams
from ekt.pipeline.distributed import RayCluster
from ekt.pipeline.expert_iteration import ExpertIterationConfig
from ekt.sandbox.pool import SandboxConfig
from ekt.training.config import TrainConfig
from ekt.training.kd import KDConfig, SeqKDConfig

jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)

# ekt: the teacher's verified programs; supervised: GSM8K reference programs;
# kd: the ekt pairs plus a live teacher's distribution (ekt.training.kd); seq-kd: every teacher
# sample, unverified; expert-iteration: the student's own programs (ekt.pipeline.expert_iteration)
METHODS = ("ekt", "supervised", "kd", "seq-kd", "expert-iteration")
Method = typing.Literal["ekt", "supervised", "kd", "seq-kd", "expert-iteration"]


@dataclass(frozen=True)
class TeacherSampling(SamplingParams):
    """How the teacher samples: ``SamplingParams`` plus the engine and its batch."""

    n: int = 4
    """samples per question"""
    batch_size: int = 16
    """sequences decoded together (transformers backend)"""
    backend: BackendConfig = field(default_factory=BackendConfig)
    """engine that samples the teacher (see ekt.generation.backends)"""
    prompt_format: str = "function"
    """the teacher's prompt layout: function (few-shot completion, the default), chat
    (messages; chat/instruct teachers), tinygsm, or a YAML file (ekt.data.prompt_format)"""
    budget: typing.Literal["full", "adaptive"] = "full"
    """full: n samples for every question (the published protocol); adaptive: sample indices
    in rounds of round_size, a question leaving once it has what the filter keeps (keep: first:
    one correct program, the same pairs as full; keep: all: target distinct correct programs)"""
    round_size: int = 4
    """adaptive: sample indices drawn per question per round"""
    target: int = 4
    """adaptive with keep: all: distinct correct programs after which a question leaves"""
    give_up_after: int = 0
    """adaptive: stop a question with no correct program after this many samples (0: never;
    changes the pairs, so off by default)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.budget not in ("full", "adaptive"):
            raise EktError(f"teacher_sampling.budget must be full or adaptive, got {self.budget!r}")
        for key in ("round_size", "target"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise EktError(f"teacher_sampling.{key} must be an integer >= 1, got {value!r}")
        if not isinstance(self.give_up_after, int) or self.give_up_after < 0:
            raise EktError(
                "teacher_sampling.give_up_after must be an integer >= 0 (0: never), "
                f"got {self.give_up_after!r}"
            )


@dataclass
class TaskConfig:
    """Which questions: a run config's top-level task keys and every stage command's flags."""

    task: str = "gsm8k"
    """a built-in task (`ekt tasks`: gsm8k, svamp, asdiv, mawps, gsm-hard, math, math-500; the
    procedural leg_counting, letter_counting, basic_arithmetic, time_intervals, gsm_symbolic,
    procedural_mix) or the path of a task file (YAML: name, data, question, answer,
    answer_format, id, splits, exemplars; or source: reasoning-gym, generator, config, seed,
    size)"""
    data_dir: str | None = None
    """folder with one file per split (<split>.jsonl/.csv/.parquet; GSM8K: train.jsonl and
    test.jsonl); None: the task's own data ($EKT_DATA_DIR for gsm8k), else the HF dataset"""
    dev_size: int = 0
    """training questions held out as the dev split (published: 500)"""
    dev_seed: int = 0
    """seed choosing the dev questions"""

    def load_task(self, prompt_formats: tuple[str, ...] = ()) -> Task:
        """The task; questions used as exemplars by ``prompt_formats`` are left out too."""
        formats = tuple(f for f in prompt_formats if f and f != "function")
        return get_task(self.task, self.data_dir, self.dev_size, self.dev_seed, formats)


@dataclass
class RunConfig(TaskConfig):
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
    keep: typing.Literal["first", "all"] = "first"
    """correct programs kept per question: the first, or all unique ones"""
    student_prompt_format: str = "function"
    """the layout the student is trained and evaluated in: function (the default), chat (an
    instruct student, on its own chat template), tinygsm, or a YAML file"""
    device: str | None = None
    """cpu | cuda | cuda:N (None: cuda if present)"""
    teacher_sampling: TeacherSampling = field(default_factory=TeacherSampling)
    """how the teacher samples"""
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
            if m not in METHODS:
                raise EktError(f"methods: unknown method {m!r}; available: {', '.join(METHODS)}")
        if self.keep not in ("first", "all"):
            raise EktError(f"keep: must be first or all, got {self.keep!r}")
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
        blocks = ("teacher_sampling.backend", "sandbox", "ray", "eval", "train", "kd", "seq_kd")
        for block in (*blocks, "expert_iteration"):  # messages name the block
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


def _comments(cls: type) -> dict[str, str]:
    """``field: type = default  # comment`` -> {field: comment}, for fields without docstrings."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    pending: str | None = None  # a comment on the lines above a field
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            m = re.match(r"\s*(\w+)\s*:", tok.line)
            if m and tok.line.strip() and not tok.line.strip().startswith("#"):
                out.setdefault(m.group(1), text)
                pending = None
            else:
                pending = f"{pending} {text}" if pending else text
        elif tok.type == tokenize.NAME and pending and tok.line.strip().startswith(tok.string):
            if re.match(rf"\s*{tok.string}\s*:", tok.line):
                out.setdefault(tok.string, pending)
            pending = None
    return out


def _helps(cls: type, prefix: str = "") -> dict[str, str]:
    """Help text of every (dotted) key from the fields' comments, walking nested dataclasses."""
    out: dict[str, str] = {}
    hints = typing.get_type_hints(cls)
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            out.update({f"{prefix}{k}": v for k, v in _comments(klass).items()})
    for f in dataclasses.fields(cls):
        if f.metadata.get("help"):  # TrainingArguments documents its fields so
            out[f"{prefix}{f.name}"] = " ".join(str(f.metadata["help"]).split())
        for tp in (hints.get(f.name), *typing.get_args(hints.get(f.name))):
            if isinstance(tp, type) and dataclasses.is_dataclass(tp):
                out.update(_helps(tp, f"{prefix}{f.name}."))
    return out


def add_dataclass(parser: jsonargparse.ArgumentParser, cls: type, key: str | None) -> None:
    """``cls``'s fields as options of ``parser`` (under ``key.`` unless None), with help."""
    parser.add_class_arguments(cls, key, fail_untyped=True, sub_configs=True)
    helps = _helps(cls, f"{key}." if key else "")
    for action in parser._actions:
        text = action.help or ""
        if action.dest in helps and (not text or text.startswith(("(type", "---"))):
            kind = text[text.index("(type") :] if "(type" in text else ""
            action.help = f"{helps[action.dest]} {kind}".strip()


@functools.cache
def config_parser() -> jsonargparse.ArgumentParser:
    """RunConfig's keys as options: YAML blocks are read and ``--a.b`` flags parsed by it."""
    parser = jsonargparse.ArgumentParser(prog="ekt run", exit_on_error=False)
    add_dataclass(parser, RunConfig, None)
    return parser


def parse_error(e: Exception) -> str:
    """jsonargparse's message in one line, in ekt's words."""
    text = " ".join(str(e).split())
    text = re.sub(r'Parser key "([^"]+)":', r"\1:", text)
    text = re.sub(r"Expected a <class '(\w+)'>\. Got value: (.*)", r"expected \1, got \2", text)
    text = re.sub(
        r"Expected a typing\.Literal\[(.*?)\]\. Got value: (.*)",
        lambda m: f"expected one of {m.group(1).replace(chr(39), '')}, got {m.group(2)}",
        text,
    )
    return text


def check_keys(cls: type, data: Any, where: str = "") -> None:
    """Refuse unknown keys of a YAML mapping, naming the keys the block knows."""
    at = f"{where}: " if where else ""
    if not isinstance(data, dict):
        raise EktError(f"{at}expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = set(inspect.signature(cls).parameters)
    unknown = sorted(map(str, set(data) - names))
    if unknown:
        known = ", ".join(sorted(n for n in names if not n.startswith("_")))
        raise EktError(f"{at}unknown key(s) {', '.join(unknown)}; known: {known}")
    for key, value in data.items():
        tp = hints.get(key)
        inner = [a for a in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(a)]
        if inner and value is not None:
            check_keys(inner[0], value, f"{where}.{key}" if where else str(key))
        elif typing.get_origin(tp) is list and isinstance(value, str | int | float):
            data[key] = [value]  # a single value where a list is expected: a list of one


def build_config(data: dict, overrides: list[str] = ()) -> RunConfig:  # type: ignore[assignment]
    """The RunConfig of a parsed YAML mapping and ``--key value`` overrides, validated."""
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
            raise EktError(f"command line: {parse_error(e)}") from None
    cfg = instantiate(RunConfig, ns)
    cfg.validate()
    return cfg


def instantiate(cls: type, ns: Any, where: str = "") -> Any:
    """``cls`` built from a parsed namespace, nested dataclasses first; a value a class refuses
    raises EktError naming its key (``eval: --n must be >= 1``)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in vars(ns).items():
        if isinstance(value, jsonargparse.Namespace):
            tp = hints[key]
            inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
            kwargs[key] = instantiate(inner[0] if inner else tp, value, f"{where}{key}.")
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except EktError as e:
        raise EktError(name_key(str(e), cls, where)) from None


def name_key(message: str, cls: type, where: str) -> str:
    """A class's message about one of its fields, with the field's dotted key:
    ``--n must be >= 1`` or ``sandbox timeout must ...`` -> ``eval.n must be >= 1``."""
    m = re.match(r"(?:--|\w+[ .])([\w-]+)(.*)", message, re.S)
    names = set(inspect.signature(cls).parameters)
    if m and m.group(1).replace("-", "_") in names:
        return f"{where}{m.group(1).replace('-', '_')}{m.group(2)}"
    return f"{where.rstrip('.')}: {message}" if where else message


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:  # type: ignore[assignment]
    """The run config in the YAML file ``path``, with command-line ``overrides`` on top."""
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
    data = data or {}
    if not isinstance(data, dict):
        raise EktError(f"{path}: expected a mapping, got {type(data).__name__}")
    try:
        return build_config(data, overrides)
    except EktError as e:
        raise EktError(f"{path}: {e}") from None


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


# -- flags as users type them -> canonical dotted keys (the CLI) --------------------------


def leaf_keys(cls: type, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> type of every setting of ``cls`` (an optional block is a key too)."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if dataclasses.is_dataclass(tp):
            out.update(leaf_keys(tp, key + "."))
        elif inner:
            out[key] = tp
            out.update(leaf_keys(inner[0], key + "."))
        else:
            out[key] = tp
    for name, init in getattr(cls, "__dataclass_fields__", {}).items():
        if isinstance(init.type, dataclasses.InitVar) or "InitVar" in str(init.type):
            out[f"{prefix}{name}"] = typing.Any
    return out


def aliases(keys: dict[str, Any]) -> dict[str, str]:
    """Every accepted spelling (underscores for dashes) -> its key; ambiguous ones left out."""
    claims: dict[str, set[str]] = {}
    for key in keys:
        parts = key.split(".")
        names = {key, key.replace(".", "_"), parts[-1]}
        if parts[-1] == "name" and len(parts) > 1:
            names.add(parts[-2])
            names.add(key.rsplit(".", 1)[0])
        for n in names:
            claims.setdefault(n, set()).add(key)
    out = {n: next(iter(ks)) for n, ks in claims.items() if len(ks) == 1}
    out.update({k: k for k in keys})  # a full key always means itself
    return out


def _is(tp: Any, kind: type) -> bool:
    return tp is kind or kind in typing.get_args(tp) or typing.get_origin(tp) is kind


def normalize(argv: list[str], keys: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """``argv`` in canonical flags (``--a.b=value``), and each key's flag as the user typed it."""
    names = aliases(keys)
    out: list[str] = []
    typed: dict[str, str] = {}
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if not tok.startswith("--") or tok == "--":
            out.append(tok)
            continue
        name, eq, value = tok[2:].partition("=")
        norm = name.replace("-", "_")
        negated = norm.startswith("no_") and names.get(norm[3:]) in keys
        key = names.get(norm[3:] if negated else norm)
        if key is None or key not in keys:
            out.append(tok)
            continue
        tp = keys[key]
        typed[key] = f"--{name}"
        if negated:
            if not _is(tp, bool):
                out.append(tok)
                continue
            out.append(f"--{key}=false")
            continue
        has_value = bool(eq) or (i < len(argv) and not argv[i].startswith("--"))
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if inner:  # an optional block given bare or with one value: its first field
            first = dataclasses.fields(inner[0])[0].name
            if not eq and has_value and not argv[i].startswith("-"):
                value = argv[i]
                i += 1
            out.append(f"--{key}.{first}=" + (value if value else "null"))
            continue
        if _is(tp, bool):
            if not eq and i < len(argv) and argv[i].lower() in ("true", "false", "yes", "no"):
                value = argv[i]
                i += 1
            out.append(f"--{key}=" + (value or "true"))
            continue
        if _is(tp, list) and not eq:
            items: list[str] = []
            while i < len(argv) and not argv[i].startswith("--"):
                items += [x for x in argv[i].split(",") if x.strip()]
                i += 1
            out.append(f"--{key}=" + json.dumps(items))
            continue
        if _is(tp, list) and eq and not value.startswith("["):
            value = json.dumps([x for x in value.split(",") if x.strip()])
        out.append(f"--{key}" + (f"={value}" if eq else ""))
    return out, typed
