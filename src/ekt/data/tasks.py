"""Tasks: where problems come from and how a returned value is graded.

A task is data: a :class:`TaskSpec` read from a YAML file (the built-in ones live in
``ekt/data/task_files/``; ``ekt tasks`` lists them) names the dataset (an HF dataset id or
local files with a ``{split}`` placeholder), the question field or a Jinja template over the
fields, the answer field and its format, and an optional id field. :class:`Task` loads it:
``load(split) -> list[Problem]``, ``by_id(ids)``, ``grade(execution, problem) -> bool``.

Answer formats: ``number`` (a number, or a string holding one, thousands separators and a
trailing unit in parentheses allowed), ``gsm8k`` (text ending in ``#### <number>``), ``math``
(a symbolic answer: the last ``\\boxed{...}`` of the field when it has one, else the whole
field; graded by :mod:`ekt.data.symbolic`).

Problem ids are ``<name>/<split>/<id>``: the id field when the task names one, else the
0-based line (row) index of the split's file, so every record can be traced back to a row.
A ``dev`` split is held out of ``train`` (``dev_size`` problems chosen by ``dev_seed``);
dev problems keep their ``train`` ids. Questions used as few-shot exemplars are removed
from every split.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import yaml

from ekt.data.grading import grade_value
from ekt.data.procedural import SOURCE, Generator, ProceduralSource
from ekt.data.prompt_format import squash, with_task_exemplars
from ekt.data.prompts import is_exemplar
from ekt.data.provenance import gold_sha
from ekt.data.symbolic import boxed_answer, grade_symbolic
from ekt.errors import EktError
from ekt.records import Execution, Problem, iter_lines, read_jsonl

ANSWER_FORMATS = ("number", "gsm8k", "math", "procedural")
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")

_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
_GROUPED = re.compile(r"^[-+]?\d{1,3}(,\d{3})+(\.\d*)?$")  # 1,234,567.5
_UNIT = re.compile(r"\s*\([^()]*\)\s*$")  # "9 (apples)"


def parse_number(text: str) -> int | float:
    """A number written as text: ``1,234.5``, ``$12``, ``-3``, ``50%`` (as 50), ``9 (apples)``.

    Integral values without a decimal point come back as ``int``. Anything else raises ValueError.
    """
    raw = text
    text = _UNIT.sub("", text.strip()).replace("$", "").strip()
    if text.endswith("%"):
        text = text[:-1].strip()
    if "," in text:
        if not _GROUPED.match(text.rstrip(".")):
            raise ValueError(f"gold answer {raw.strip()!r} is not a number (misplaced ',')")
        text = text.replace(",", "")
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1]
    if not _NUMBER.match(text):
        raise ValueError(f"gold answer {raw.strip()!r} is not a number")
    value = float(text)
    if value.is_integer() and not any(c in text for c in ".eE"):
        return int(text)
    return value


def parse_gold(answer_text: str) -> int | float:
    """The number after the last ``####`` of a GSM8K answer (see :func:`parse_number`)."""
    if "####" not in answer_text:
        raise ValueError("no '####' marker in the answer")
    return parse_number(answer_text.rsplit("####", 1)[1])


def parse_answer(value: Any, answer_format: str) -> int | float | str:
    """The gold answer of one row in a task's ``answer_format``; ValueError when unparsable."""
    if answer_format == "math":
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"expected a string or a number, got {type(value).__name__}")
        text = boxed_answer(str(value)) if isinstance(value, str) else str(value)
        if not text.strip():
            raise ValueError("empty answer")
        return text.strip()
    if answer_format == "gsm8k":
        if not isinstance(value, str):
            raise TypeError("must be a string")
        try:
            return parse_gold(value)
        except ValueError:
            if "####" in value:
                raise
            try:  # a plain number without the marker ("72") is read as it is
                return parse_number(value)
            except ValueError:
                raise ValueError("no '####' marker in the answer") from None
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"gold answer {value!r} is not finite")
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if not isinstance(value, str):
        raise ValueError(f"expected a string or a number, got {type(value).__name__}")
    number = parse_number(value)
    return parse_answer(number, answer_format) if isinstance(number, float) else number


@dataclass(frozen=True)
class TaskSpec:
    """One task, as written in its YAML file (the keys are these field names)."""

    name: str
    # an HF dataset id ("openai/gsm8k"), or local files: a path with a {split} placeholder
    # (JSONL, CSV or Parquet), relative to the task file
    data: str = ""
    question: str = ""  # a field name, or a Jinja template over the fields: "{{ Body }} {{ Q }}"
    answer: str = ""  # the field holding the gold answer
    answer_format: str = "number"  # number | gsm8k | math | procedural (set by source)
    id: str | None = None  # the field holding a row's id; else the 0-based row index
    # ekt split -> the dataset's split name (e.g. {test: validation}); train/test by default
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "test": "test"})
    subset: str | None = None  # the HF dataset's configuration name ("main" for openai/gsm8k)
    description: str = ""
    # tasks whose questions this one was built from (GSM-Hard from GSM8K test): a training set
    # is decontaminated against them too when this task is evaluated
    derived_from: tuple[str, ...] = ()
    # worked question -> program examples (JSONL: question, program[, source_id]) the teacher's
    # prompt shows for this task instead of its prompt format's own; relative to the task file
    exemplars: str | None = None
    # procedural tasks (ekt.data.procedural): problems from a seeded generator, no data file
    source: str = ""  # "" (data files or the hub) | reasoning-gym
    generator: str | None = None  # one generator's name, with its `config`
    config: dict[str, Any] = field(default_factory=dict)
    generators: tuple[Generator, ...] = ()  # or several: [{name, config, weight}, ...]
    seed: int = 0
    size: dict[str, int] = field(default_factory=dict)  # problems per split: {train: N, test: M}
    path: str = ""  # where the spec was read from (filled in by the loader)

    def __post_init__(self) -> None:
        where = self.path or self.name
        if self.answer_format not in ANSWER_FORMATS:
            raise EktError(
                f"{where}: answer_format {self.answer_format!r} is not one of "
                f"{', '.join(ANSWER_FORMATS)}"
            )
        if not self.splits or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.splits.items()
        ):
            raise EktError(f"{where}: 'splits' must map ekt split names to dataset split names")
        if "dev" in self.splits:
            raise EktError(f"{where}: 'dev' is held out of train by dev_size; do not list it")
        if self.is_procedural and self.answer_format != "procedural":
            raise EktError(f"{where}: a procedural task's answers are graded by its generator; "
                           "leave answer_format out")  # fmt: skip

    @property
    def is_procedural(self) -> bool:
        return self.source == SOURCE

    @property
    def is_local(self) -> bool:
        return "{split}" in self.data or self.data.endswith(LOCAL_SUFFIXES)

    @property
    def template(self) -> jinja2.Template | None:
        if "{{" not in self.question and "{%" not in self.question:
            return None
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
        return env.from_string(self.question)


_SPEC_KEYS = {f.name for f in fields(TaskSpec)} - {"path"}
_REQUIRED = ("name", "data", "question", "answer")
_PROCEDURAL_KEYS = {"generator", "config", "generators", "seed", "size"}


def read_spec(path: str | Path) -> TaskSpec:
    """A :class:`TaskSpec` from a YAML task file; every error names the file and the key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise EktError(f"{path}: cannot read the task file ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        raise EktError(f"{path}{at}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise EktError(f"{path}: a task file is a YAML mapping of {', '.join(_REQUIRED)}, ...")
    unknown = sorted(set(raw) - _SPEC_KEYS)
    if unknown:
        raise EktError(
            f"{path}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"a task file has {', '.join(sorted(_SPEC_KEYS))}"
        )
    if "source" in raw:
        if raw["source"] != SOURCE:
            raise EktError(f"{path}: key 'source' must be {SOURCE!r} (or left out for data files)")
        return _read_procedural(path, raw)
    used = sorted(set(raw) & _PROCEDURAL_KEYS)
    if used:
        raise EktError(f"{path}: key(s) {', '.join(map(repr, used))} need 'source: {SOURCE}'")
    for key in _REQUIRED:
        if key not in raw:
            raise EktError(f"{path}: missing key {key!r}")
        if not isinstance(raw[key], str) or not raw[key].strip():
            raise EktError(f"{path}: key {key!r} must be a non-empty string")
    for key in ("id", "subset", "description"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise EktError(f"{path}: key {key!r} must be a string")
    if "splits" in raw and not isinstance(raw["splits"], dict):
        raise EktError(f"{path}: key 'splits' must map ekt split names to dataset split names")
    if isinstance(raw.get("derived_from"), str):
        raw["derived_from"] = [raw["derived_from"]]
    raw["derived_from"] = tuple(raw.get("derived_from") or ())
    raw["exemplars"] = _exemplars_path(path, raw.get("exemplars"))
    spec = TaskSpec(**raw, path=str(path))
    if spec.is_local and not Path(spec.data).is_absolute():  # relative to the task file
        spec = TaskSpec(**{**raw, "data": str(path.resolve().parent / spec.data)}, path=str(path))
    try:
        spec.template  # noqa: B018 - compiles the question template once, to report errors here
    except jinja2.TemplateSyntaxError as e:
        raise EktError(f"{path}: key 'question': bad Jinja template ({e.message})") from None
    return spec


def _exemplars_path(path: Path, value: Any) -> str | None:
    """A task file's ``exemplars`` key as an absolute path (it is relative to the file)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise EktError(f"{path}: key 'exemplars' must be the path of a JSONL file")
    full = (path.parent / value).resolve()
    if not full.is_file():
        raise EktError(f"{path}: exemplars: no such file {full}")
    return str(full)


def _read_procedural(path: Path, raw: dict[str, Any]) -> TaskSpec:
    """A ``source: reasoning-gym`` task file (see :mod:`ekt.data.procedural`)."""
    for key in ("data", "question", "answer", "id", "splits", "subset", "answer_format"):
        if key in raw:
            raise EktError(f"{path}: key {key!r} does not apply to a procedural task")
    if not isinstance(raw.get("name"), str) or not raw["name"].strip():
        raise EktError(f"{path}: missing key 'name'")
    if ("generator" in raw) == ("generators" in raw):
        raise EktError(f"{path}: a procedural task names 'generator' (with 'config') or "
                       "'generators' (a list of {name, config, weight})")  # fmt: skip
    if "generator" in raw:
        items = [{"name": raw["generator"], "config": raw.get("config") or {}}]
    else:
        if "config" in raw:
            raise EktError(f"{path}: with 'generators', each item has its own 'config'")
        items = raw["generators"]
        if not isinstance(items, list) or not items:
            raise EktError(f"{path}: key 'generators' must be a non-empty list")
    gens = []
    for i, g in enumerate(items):
        at = f"{path}: generators[{i}]" if "generators" in raw else f"{path}: generator"
        if not isinstance(g, dict) or set(g) - {"name", "config", "weight"}:
            raise EktError(f"{at}: expected a mapping of name, config and weight")
        if not isinstance(g.get("name"), str) or not g["name"].strip():
            raise EktError(f"{at}: 'name' must be a generator's name (a string)")
        config = g.get("config") or {}
        if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
            raise EktError(f"{at}: 'config' must map setting names to values")
        if "seed" in config or "size" in config:
            raise EktError(f"{at}: 'seed' and 'size' are the task's keys, not the generator's")
        weight = g.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
            raise EktError(f"{at}: 'weight' must be a positive number")
        gens.append(Generator(g["name"].strip(), config, float(weight)))
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise EktError(f"{path}: key 'seed' must be a non-negative integer")
    size = raw.get("size")
    if not isinstance(size, dict) or not size or not all(
        isinstance(k, str) and type(v) is int and v > 0 for k, v in size.items()
    ):
        raise EktError(f"{path}: key 'size' must map splits to problem counts, e.g. "
                       "{train: 1000, test: 200}")  # fmt: skip
    if "dev" in size:
        raise EktError(f"{path}: 'dev' is held out of train by dev_size; do not list it")
    for key in ("description",):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise EktError(f"{path}: key {key!r} must be a string")
    return TaskSpec(
        name=raw["name"].strip(),
        answer_format="procedural",
        splits={k: k for k in size},
        description=raw.get("description") or "",
        exemplars=_exemplars_path(path, raw.get("exemplars")),
        source=SOURCE,
        generators=tuple(gens),
        seed=seed,
        size=dict(size),
        path=str(path),
    )


def _builtin_files() -> dict[str, Any]:
    folder = resources.files("ekt.data") / "task_files"
    return {p.name[: -len(".yaml")]: p for p in folder.iterdir() if p.name.endswith(".yaml")}


def registry() -> dict[str, TaskSpec]:
    """The built-in tasks by name."""
    out = {}
    for _, p in sorted(_builtin_files().items()):
        with resources.as_file(p) as real:
            spec = read_spec(real)
        out[spec.name] = spec
    return out


def resolve_spec(name_or_path: str) -> TaskSpec:
    """A registry name (``gsm8k``, ``svamp``, ...) or the path of a task file."""
    reg = registry()
    if name_or_path in reg:
        return reg[name_or_path]
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise EktError(f"task file {p} not found")
        return read_spec(p)
    raise EktError(f"unknown task {name_or_path!r}; built in: {', '.join(reg)} (or a task file)")


@dataclass
class Task:
    """A task ready to load: its spec plus where its files are and the dev hold-out."""

    spec: TaskSpec
    data_dir: str | None = None  # a folder of <split>.jsonl/.csv/.parquet files (overrides data)
    dev_size: int = 0
    dev_seed: int = 0
    # prompt formats (names or YAML paths) whose exemplar questions are also excluded
    # (the default format's always are)
    exemplar_formats: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.dev_size < 0:
            raise EktError(f"--dev-size must be >= 0, got {self.dev_size}")
        if self.spec.is_procedural and self.data_dir:
            raise EktError(f"task {self.spec.name} is generated (source: reasoning-gym): it "
                           f"reads no data folder (--data-dir {self.data_dir})")  # fmt: skip

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def answer_format(self) -> str:
        return self.spec.answer_format

    @property
    def splits(self) -> tuple[str, ...]:
        names = list(self.spec.splits)
        return (*names, "dev") if "train" in names else tuple(names)

    @property
    def source(self) -> str:
        """Where problems come from, for manifests: a folder, local files, ``hf:<id>`` or
        ``reasoning-gym:<generators>@<seed>``."""
        if self.spec.is_procedural:
            names = "+".join(g.name for g in self.spec.generators)
            return f"{SOURCE}:{names}@{self.spec.seed}"
        if self.data_dir:
            return self.data_dir
        return self.spec.data if self.spec.is_local else f"hf:{self.spec.data}"

    @functools.cached_property
    def procedural(self) -> ProceduralSource | None:
        """The generator source of a procedural task (None for data files)."""
        spec = self.spec
        if not spec.is_procedural:
            return None
        return ProceduralSource(spec.name, spec.generators, spec.seed, spec.size, spec.path)

    def data_paths(self) -> list[str]:
        """Local files or folders the problems (and gold answers) are read from: the sandbox
        denies programs all of them. A procedural task's answers can be generated again from
        its file's seed by the generator's package, so both are denied: the file itself, not
        its folder, which may hold the project's own source and virtual environment. A task
        file's local data is denied file by file for the same reason."""
        if self.spec.is_procedural:
            out = [self.spec.path] if self.spec.path else []
            found = importlib.util.find_spec("reasoning_gym")
            return out + list(found.submodule_search_locations or []) if found else out
        if self.data_dir:
            return [self.data_dir]
        if self.spec.is_local:  # the split files themselves: their folder may be the project's
            files = {self.spec.data.replace("{split}", s) for s in self.spec.splits.values()}
            return sorted(str(Path(f).resolve()) for f in files)
        return []

    # -- loading ---------------------------------------------------------
    def load(self, split: str) -> list[Problem]:
        if split not in self.splits:
            raise EktError(
                f"unknown split {split!r} for task {self.name}; "
                f"choose one of {', '.join(self.splits)}"
            )
        file_split = "train" if split == "dev" else split
        problems = self.load_file(file_split)
        if file_split == "train":
            dev_ids = self._dev_ids(problems)
            if split == "dev" and not dev_ids:
                raise EktError(
                    "split 'dev' is empty: set --dev-size (the published setup held out 500)"
                )
            keep = (
                (lambda p: p.id in dev_ids) if split == "dev" else (lambda p: p.id not in dev_ids)
            )
            problems = [
                Problem(p.id, p.question, p.answer, split, p.solution) for p in problems if keep(p)
            ]
        return [p for p in problems if not self.is_exemplar(p)]

    def prompt_format(self, spec: str | None) -> str:
        """The prompt format ``spec`` as this task's teacher prompts use it: showing the task
        file's ``exemplars`` when it names some (``ekt.data.prompt_format.load_format``)."""
        return with_task_exemplars(spec, self.spec.exemplars)

    def is_exemplar(self, problem: Problem) -> bool:
        """True for a question some prompt of this task shows as a worked example."""
        if self.exemplar_questions and squash(problem.question).lower() in self.exemplar_questions:
            return True
        return is_exemplar(problem, self.exemplar_formats)

    @functools.cached_property
    def exemplar_questions(self) -> frozenset[str]:
        if not self.spec.exemplars:
            return frozenset()
        rows = read_jsonl(self.spec.exemplars, allow_torn_tail=False)
        return frozenset(squash(str(r.get("question", ""))).lower() for _, r in rows)

    def load_file(self, file_split: str) -> list[Problem]:
        """Every problem of one split's file (``train``, ``test``, ...), no exclusions."""
        if file_split not in self.spec.splits:
            raise EktError(f"task {self.name} has no split {file_split!r}")
        if self.procedural is not None:
            return self.procedural.load(file_split)
        spec = self.spec
        template = spec.template
        problems: list[Problem] = []
        seen: dict[str, str] = {}
        for where, i, row in self._rows(file_split):
            question = self._question(row, template, where)
            if spec.answer not in row or row[spec.answer] is None:
                raise EktError(f"{where}: missing field {spec.answer!r}")
            try:
                gold = parse_answer(row[spec.answer], spec.answer_format)
            except TypeError as e:
                raise EktError(f"{where}: field {spec.answer!r} {e}") from None
            except ValueError as e:
                raise EktError(
                    f"{where}: unparsable gold answer: {e} (field {spec.answer!r})"
                ) from None
            if spec.id:
                if spec.id not in row or row[spec.id] is None or str(row[spec.id]).strip() == "":
                    raise EktError(f"{where}: missing field {spec.id!r} (the task's id field)")
                local_id = str(row[spec.id]).strip()
            else:
                local_id = str(i)
            pid = f"{self.name}/{file_split}/{local_id}"
            if pid in seen:
                raise EktError(f"{where}: field {spec.id!r}: id {local_id!r} repeats {seen[pid]}")
            seen[pid] = where
            solution = row[spec.answer] if isinstance(row[spec.answer], str) else ""
            problems.append(Problem(pid, question, gold, file_split, solution))
        return problems

    def by_id(self, ids: set[str] | None = None) -> dict[str, Problem]:
        """Problems of the files the ids name (all files when None), keyed by id."""
        out: dict[str, Problem] = {}
        splits = (
            {i.split("/")[1] for i in ids if i.count("/") >= 2} if ids else set(self.spec.splits)
        )
        for s in sorted(splits):
            if s in self.spec.splits:
                out.update((p.id, p) for p in self.load_file(s))
        return out

    def _question(self, row: dict, template: jinja2.Template | None, where: str) -> str:
        spec = self.spec
        if template is None:
            if spec.question not in row:
                raise EktError(f"{where}: missing field {spec.question!r}")
            value = row[spec.question]
            if not isinstance(value, str):
                raise EktError(f"{where}: field {spec.question!r} must be a string")
        else:
            try:
                value = template.render(**row)
            except jinja2.UndefinedError as e:
                raise EktError(f"{where}: question template: {e.message}") from None
        if not value.strip():
            raise EktError(f"{where}: field {spec.question!r} is empty")
        return value

    def _dev_ids(self, problems: list[Problem]) -> set[str]:
        if not self.dev_size:
            return set()
        if self.dev_size >= len(problems):
            raise EktError(
                f"--dev-size {self.dev_size} leaves no training questions ({len(problems)} in all)"
            )
        rng = random.Random(self.dev_seed)
        return {p.id for p in rng.sample(problems, self.dev_size)}

    def _rows(self, file_split: str) -> list[tuple[str, int, dict[str, Any]]]:
        source_split = self.spec.splits[file_split]
        if self.data_dir:
            return read_rows(_find_in_dir(Path(self.data_dir), source_split, file_split))
        if self.spec.is_local:
            path = Path(self.spec.data.replace("{split}", source_split))
            if not path.is_file():
                raise EktError(_missing_split(path, self.spec, file_split))
            return read_rows(path)
        return _read_hub(self.spec, source_split)

    # -- grading -----------------------------------------------------------
    def gold_sha(self, problem: Problem) -> str:
        """The hash of the gold answer a verdict on ``problem`` is graded with."""
        return gold_sha(problem.answer, self.answer_format)

    def grade(self, execution: Execution, problem: Problem) -> bool:
        if execution.status != "ok":
            return False
        if self.answer_format == "math":
            return grade_symbolic(execution.value, execution.type, str(problem.answer))
        if self.procedural is not None:
            return self.procedural.grade(execution.value, execution.type, problem)
        return grade_value(execution.value, execution.type, problem.answer)


def _missing_split(path: Path, spec: TaskSpec, file_split: str) -> str:
    """One line: a split's file is missing; the task file's `splits:` mapping, and the files
    that are there."""
    folder = path.parent
    there = sorted(p.name for p in folder.iterdir() if p.suffix in LOCAL_SUFFIXES)[:12] \
        if folder.is_dir() else []  # fmt: skip
    mapping = ", ".join(f"{k}: {v}" for k, v in spec.splits.items())
    where = f"{folder} holds {', '.join(there)}" if there else f"{folder} holds no data files"
    return (f"{path}: not found (split {file_split!r} of task {spec.name}); {where}; the task "
            f"file's `splits:` maps each split to the name its `data:` {{split}} stands for "
            f"(now {{{mapping}}})")  # fmt: skip


def _find_in_dir(data_dir: Path, source_split: str, file_split: str) -> Path:
    if not data_dir.is_dir():
        what = "is not a folder" if data_dir.exists() else "does not exist"
        raise EktError(f"data directory {data_dir} {what} (from --data-dir or EKT_DATA_DIR)")
    for stem in dict.fromkeys((file_split, source_split)):
        for suffix in LOCAL_SUFFIXES:
            if (data_dir / f"{stem}{suffix}").is_file():
                return data_dir / f"{stem}{suffix}"
    there = sorted(p.name for p in data_dir.iterdir() if p.suffix in LOCAL_SUFFIXES)[:12]
    raise EktError(
        f"{data_dir / (file_split + '.jsonl')}: not found; the data folder holds one file per "
        f"split ({file_split}.jsonl, .csv or .parquet, or the name a task file's `splits:` "
        f"gives it); it holds {', '.join(there) if there else 'no data files'}"
    )


def read_rows(path: Path) -> list[tuple[str, int, dict[str, Any]]]:
    """(``file:line``, 0-based row index, object) per row of a JSONL, JSON, CSV or Parquet file."""
    if not path.is_file():
        raise EktError(f"{path}: not found")
    suffix = path.suffix
    if suffix == ".parquet":
        rows = list(_parquet_rows(path))
    elif suffix == ".csv":
        rows = list(_csv_rows(path))
    elif suffix == ".json":
        rows = _json_rows(path)
    else:
        rows = list(_jsonl_rows(path))
    if not rows:
        raise EktError(f"{path}: file is empty (no problems)")
    return rows


def _jsonl_rows(path: Path) -> Iterator[tuple[str, int, dict[str, Any]]]:
    for n, raw, _ in iter_lines(path):
        where = f"{path}:{n}"
        if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte order mark
        if not raw.strip():
            continue  # a blank line holds no problem; ids keep line numbers
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise EktError(f"{where}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise EktError(f"{where}: malformed JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(obj, dict):
            raise EktError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        yield where, n - 1, obj


def _json_rows(path: Path) -> list[tuple[str, int, dict[str, Any]]]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as e:
        raise EktError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise EktError(f"{path}:{e.lineno}: malformed JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(obj, list):
        raise EktError(f"{path}: a .json task file holds a JSON array of objects")
    out = []
    for i, row in enumerate(obj):
        if not isinstance(row, dict):
            raise EktError(f"{path}: item {i}: expected a JSON object, got {type(row).__name__}")
        out.append((f"{path}: item {i}", i, row))
    return out


def _csv_rows(path: Path) -> Iterator[tuple[str, int, dict[str, Any]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            for i, row in enumerate(reader):
                where = f"{path}:{reader.line_num}"
                if None in row:
                    raise EktError(f"{where}: more values than the header has columns")
                yield where, i, row
    except UnicodeDecodeError as e:
        raise EktError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise EktError(f"{path}: malformed CSV ({e})") from None


def _parquet_rows(path: Path) -> Iterator[tuple[str, int, dict[str, Any]]]:
    import pyarrow.parquet as pq  # pyarrow comes with datasets

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise EktError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{path}: row {i}", i, row


def _read_hub(spec: TaskSpec, source_split: str) -> list[tuple[str, int, dict[str, Any]]]:
    import datasets

    try:
        ds = datasets.load_dataset(spec.data, spec.subset, split=source_split)
    except Exception as e:  # network errors, missing dataset...
        raise EktError(
            f"could not load {spec.data} from the hub ({type(e).__name__}); for task "
            f"{spec.name} pass --data-dir DIR (a folder with {source_split}.jsonl/.csv/.parquet)"
            + (" or set EKT_DATA_DIR" if spec.name == "gsm8k" else "")
        ) from None
    return [(f"{spec.data}[{source_split}][{i}]", i, dict(row)) for i, row in enumerate(ds)]


def get_task(
    name: str = "gsm8k",
    data_dir: str | None = None,
    dev_size: int = 0,
    dev_seed: int = 0,
    exemplar_formats: tuple[str, ...] = (),
) -> Task:
    """A registry task or a task file; GSM8K reads ``EKT_DATA_DIR`` when no folder is given."""
    spec = resolve_spec(name)
    if data_dir is None and spec.name == "gsm8k":
        data_dir = os.environ.get("EKT_DATA_DIR") or None
    return Task(spec, data_dir, dev_size, dev_seed, tuple(exemplar_formats))


def task_table() -> str:
    """The registry as a plain-text table (``ekt tasks``)."""
    rows = describe_tasks()
    cols = ("name", "source", "splits", "answer_format", "description")
    width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols[:-1]}
    lines = ["  ".join(c.ljust(width.get(c, 0)) for c in cols).rstrip()]
    lines += ["  ".join(r[c].ljust(width.get(c, 0)) for c in cols).rstrip() for r in rows]
    return "\n".join(lines)


def describe_tasks() -> list[dict[str, str]]:
    """One row per built-in task, for ``ekt tasks``."""
    return [
        {
            "name": s.name,
            "source": SOURCE if s.is_procedural else s.data if not s.is_local else "local files",
            "splits": ", ".join(f"{k}={v}" if k != v else k for k, v in s.splits.items()),
            "answer_format": s.answer_format,
            "description": s.description,
        }
        for s in registry().values()
    ]
