"""The settings every stage command shares, and the parser helpers that turn dataclasses into
flags: the light half of ``ekt.pipeline.config``, imported by ``ekt.cli`` without loading
torch or transformers (``ekt COMMAND --help`` and ``ekt verify`` start in well under a second).

``TaskConfig`` (which questions), ``TeacherSampling`` (how the teacher samples) and the flag
helpers (``add_dataclass``, ``normalize``, ``leaf_keys``, ...) live here;
``ekt.pipeline.config`` re-exports them next to ``RunConfig``.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import io
import linecache
import re
import sys
import textwrap
import tokenize
import typing
from dataclasses import dataclass, field
from typing import Any

import jsonargparse

from ekt.errors import EktError
from ekt.generation.backends import BackendConfig
from ekt.generation.config import SamplingParams

# attribute docstrings are read by ``_comments`` (from the class's own lines), not by
# jsonargparse's docstring parser (which parses each class's whole module, twice)


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
    procedural_mix) or the path of a task file (YAML: name, data: 'DIR/{split}.jsonl',
    question, answer, answer_format, id, splits: {train: FILE-SPLIT, test: FILE-SPLIT} (the
    file names {split} stands for), exemplars; or source: reasoning-gym, generator, config,
    seed, size); `ekt tasks FILE` checks one"""
    data_dir: str | None = None
    """folder with one file per split (<split>.jsonl/.csv/.parquet; GSM8K: train.jsonl and
    test.jsonl); None: the task's own data ($EKT_DATA_DIR for gsm8k), else the HF dataset"""
    dev_size: int = 0
    """training questions held out as the dev split (published: 500)"""
    dev_seed: int = 0
    """seed choosing the dev questions"""

    def load_task(self, prompt_formats: tuple[str, ...] = ()) -> Any:
        """The task (an ``ekt.data.tasks.Task``: imported here, not where a parser is built;
        jsonargparse runs a module's ``TYPE_CHECKING`` imports); questions used as exemplars by
        ``prompt_formats`` are left out too."""
        from ekt.data.tasks import get_task  # the data stack, only when a task is loaded

        formats = tuple(f for f in prompt_formats if f and f != "function")
        return get_task(self.task, self.data_dir, self.dev_size, self.dev_seed, formats)



# -- the generated parser -------------------------------------------------------------------


def _class_source(cls: type) -> str:
    """The source of ``cls``'s own block, dedented, found by its ``class`` line in its module's
    file (``inspect.getsource`` parses the whole module for every class: most of a help
    page's start-up time)."""
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    lines = linecache.getlines(path) if path else []
    head = re.compile(rf"^(\s*)class {re.escape(cls.__name__)}\b")
    for i, line in enumerate(lines):
        m = head.match(line)
        if not m:
            continue
        indent, block = len(m.group(1)), [line]
        for nxt in lines[i + 1 :]:
            if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                break
            block.append(nxt)
        return textwrap.dedent("".join(block))
    return ""


def _comments(cls: type) -> dict[str, str]:
    """Help text of ``cls``'s own fields: an attribute docstring (a string on the line after
    the field), else ``field: type = default  # comment`` or a comment on the lines above."""
    source = _class_source(cls)
    if not source:
        return {}
    out: dict[str, str] = {}
    try:
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    except (SyntaxError, IndexError, AttributeError):
        body = []
    for stmt, nxt in zip(body, body[1:], strict=False):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):  # fmt: skip
            out[stmt.target.id] = " ".join(nxt.value.value.split())
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


def add_dataclass(
    parser: jsonargparse.ArgumentParser, cls: type, key: str | None, helps: bool = True
) -> None:
    """``cls``'s fields as options of ``parser`` (under ``key.`` unless None), with help
    (``helps=False``: without the help of fields documented by comments, read from the source:
    a parser that only parses)."""
    parser.add_class_arguments(cls, key, fail_untyped=True, sub_configs=True)
    if not helps:
        return
    texts = _helps(cls, f"{key}." if key else "")
    for name, group in getattr(parser, "groups", {}).items():  # a nested block's title
        if name in texts:
            group.title = texts[name]
    for action in parser._actions:
        text = action.help or ""
        if action.dest in texts and (not text or text.startswith(("(type", "---"))):
            kind = text[text.index("(type") :] if "(type" in text else ""
            action.help = f"{texts[action.dest]} {kind}".strip()


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
        known = sorted(n for n in names if not n.startswith("_"))
        hints = "".join(did_you_mean(u, known) for u in unknown)
        raise EktError(f"{at}unknown key(s) {', '.join(unknown)}{hints}; known: {', '.join(known)}")
    for key, value in data.items():
        tp = hints.get(key)
        inner = [a for a in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(a)]
        if inner and value is not None:
            check_keys(inner[0], value, f"{where}.{key}" if where else str(key))
        elif typing.get_origin(tp) is list and isinstance(value, str | int | float):
            data[key] = [value]  # a single value where a list is expected: a list of one


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
    return out


def did_you_mean(word: str, known: typing.Iterable[str], prefix: str = "") -> str:
    """`` (did you mean X?)`` for the known names closest to a mistyped one, else ``""``."""
    names = {k.replace("-", "_"): k for k in known}
    close = difflib.get_close_matches(word.replace("-", "_"), list(names), n=2, cutoff=0.75)
    if not close:  # a right last part under a wrong block, or the reverse
        tail = word.replace("-", "_").rsplit(".", 1)[-1]
        close = [k for k in names if k.rsplit(".", 1)[-1] == tail][:3]
    return f" (did you mean {' or '.join(prefix + names[c] for c in close)}?)" if close else ""
