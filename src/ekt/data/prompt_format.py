"""Prompt formats as data: a YAML file of Jinja templates plus a JSONL file of exemplars.

A format sets everything about how a model is asked for a program:

=================  =====================================================================
key                meaning
=================  =====================================================================
``style``          ``completion`` (the prompt is text the model continues) or ``chat``
                   (the prompt is a list of messages: system, exemplar turns, question)
``entry_point``    the function the sandbox calls (``solution``, ``simple_math_problem``)
``header``         the ``def`` line completion prompts end with (default
                   ``def <entry_point>():``); a continuation is read as its body
``exemplars``      a JSONL file (relative to the YAML file) of ``question`` / ``program``
                   pairs, optionally ``source_id``: the dataset problem it was written for
``n_exemplars``    how many of them the teacher sees (default: all)
``instruction``    free text, available to every template as ``instruction``
``stop``           stop strings for sampling (chat formats usually need none)
``templates``      completion: ``teacher`` and ``student`` (text);
                   chat: ``system``, ``user`` (one question) and ``assistant`` (one
                   exemplar program); each a Jinja template
=================  =====================================================================

Templates see ``instruction``, ``question`` (the question with its whitespace
squashed to single spaces), ``raw_question``, ``entry_point``, ``header`` and
``exemplars`` (each with ``question``, ``program``, ``body``, ``source_id``; header,
program and body without their final newline); the
filter ``squash`` squashes whitespace. They render in Jinja's sandbox with
``trim_blocks`` and ``lstrip_blocks`` on, and an undefined name is an error.

Built in (``ekt/data/formats/``): ``function`` (the default: the published
few-shot layout, byte for byte what ekt always sent), ``chat`` (the same
exemplars as chat turns, answers in a fenced block) and ``tinygsm``
(``def simple_math_problem() -> float:`` with the question as docstring). A run
config or ``--prompt-format`` names one of these or a path to a YAML file.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ekt.errors import EktError

FORMATS_DIR = Path(__file__).parent / "formats"
EXEMPLAR_SEP = "@"  # "function@/path/task_exemplars.jsonl": a format with a task's exemplars
BUILTIN = ("function", "chat", "tinygsm")
DEFAULT_FORMAT = "function"
STYLES = ("completion", "chat")
_TEMPLATES = {"completion": ("teacher", "student"), "chat": ("system", "user", "assistant")}
_KEYS = {
    "name", "style", "entry_point", "header", "exemplars", "n_exemplars", "instruction",
    "stop", "templates", "description",
}  # fmt: skip

# A chat prompt: OpenAI-style messages, [{"role": "system" | "user" | "assistant", "content"}]
Messages = list[dict[str, str]]
Prompt = str | Messages


def squash(text: str) -> str:
    """Whitespace runs (newlines included) to single spaces, ends stripped."""
    return " ".join(str(text).split())


@dataclass(frozen=True)
class Exemplar:
    source_id: str  # the dataset problem the example was written for ("" = none)
    question: str
    program: str  # a whole program, starting with the entry point's def line (or imports)

    @property
    def body(self) -> str:
        """The program after its first line (the function body, for completion layouts)."""
        head, _, rest = self.program.partition("\n")
        return rest if head.lstrip().startswith("def ") else self.program


@dataclass(frozen=True)
class PromptFormat:
    name: str
    style: str
    entry_point: str
    header: str
    instruction: str
    exemplars: tuple[Exemplar, ...]
    stop: tuple[str, ...]
    templates: dict[str, Any] = field(repr=False, compare=False)
    n_exemplars: int
    source: str  # the YAML file
    exemplar_file: str = ""  # a task's exemplars, shown instead of the format's own ("": none)

    @property
    def is_chat(self) -> bool:
        return self.style == "chat"

    @property
    def label(self) -> str:
        """How settings files name it: a built-in's name, else the YAML file's path; with a
        task's exemplars, ``@`` and their file (:func:`with_task_exemplars`)."""
        base = self.name if Path(self.source).parent == FORMATS_DIR.resolve() else self.source
        return f"{base}{EXEMPLAR_SEP}{self.exemplar_file}" if self.exemplar_file else base

    def with_exemplars(self, path: str | Path) -> PromptFormat:
        """This layout showing the exemplars of a JSONL file (a task's) instead of its own."""
        p = Path(path).expanduser().resolve()
        if not p.is_file():
            raise EktError(f"exemplars: no such file {p}")
        shots = read_exemplars(p, self.entry_point)
        return dataclasses.replace(
            self, exemplars=shots, n_exemplars=len(shots), exemplar_file=str(p)
        )

    def _render(self, key: str, **values: Any) -> str:
        try:
            return self.templates[key].render(
                instruction=self.instruction,
                entry_point=self.entry_point,
                header=self.header.rstrip("\n"),
                **values,
            )
        except Exception as e:  # jinja2 errors of every kind, raised by a user's template
            raise EktError(f"{self.source}: templates.{key}: {type(e).__name__}: {e}") from None

    def _shots(self, n: int | None) -> list[dict[str, str]]:
        k = self.n_exemplars if n is None else n
        if k < 0:
            raise EktError(f"n_exemplars must be >= 0, got {k}")
        return [
            {
                "question": e.question,
                "program": e.program.rstrip("\n"),
                "body": e.body.rstrip("\n"),
                "source_id": e.source_id,
            }
            for e in self.exemplars[:k]
        ]

    def _q(self, question: Any) -> dict[str, str]:
        raw = question if isinstance(question, str) else question.question
        return {"question": squash(raw), "raw_question": raw}

    def teacher(self, question: Any, n_exemplars: int | None = None) -> Prompt:
        """The few-shot prompt for one question (a Problem or its text)."""
        shots = self._shots(n_exemplars)
        if not self.is_chat:
            return self._render("teacher", exemplars=shots, **self._q(question))
        messages = self._system(shots)
        for s in shots:
            messages.append({"role": "user", "content": self._user(s["question"])})
            messages.append(
                {"role": "assistant", "content": self._render("assistant", exemplars=shots, **s)}
            )
        messages.append({"role": "user", "content": self._user(question)})
        return messages

    def student(self, question: Any) -> Prompt:
        """The zero-shot prompt for one question: what the student is trained and tested on."""
        if not self.is_chat:
            return self._render("student", exemplars=[], **self._q(question))
        return [*self._system([]), {"role": "user", "content": self._user(question)}]

    def _system(self, shots: list[dict[str, str]]) -> Messages:
        text = self._render("system", exemplars=shots, question="", raw_question="")
        return [{"role": "system", "content": text}] if text.strip() else []

    def _user(self, question: Any) -> str:
        return self._render("user", exemplars=[], **self._q(question))

    def training_pair(self, question: Any, program: str) -> tuple[Prompt, str]:
        """What the student is trained on for one question/program pair: its zero-shot prompt
        and the reply it learns. A completion layout's reply is the program after the prompt's
        header (the prompt ends with it); a chat layout's is the assistant turn."""
        prompt = self.student(question)
        if self.is_chat:
            return prompt, self.assistant(program)
        return prompt, program[len(self.header) :] if program.startswith(self.header) else program

    def conversation(self, question: Any, program: str) -> Messages:
        """:meth:`training_pair` as one conversation (a chat layout's system message
        included): a completion layout's prompt is the user turn and the reply, without the
        header the prompt ends with, the assistant turn, so the turns' texts joined are the
        trained text."""
        prompt, reply = self.training_pair(question, program)
        turns = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        return [*turns, {"role": "assistant", "content": reply}]

    def assistant(self, program: str) -> str:
        """An assistant turn holding ``program`` (the chat layout's training target)."""
        text = program.rstrip("\n")
        return self._render("assistant", exemplars=[], question="", raw_question="",
                            program=text, body=text, source_id="")  # fmt: skip

    # -- exemplar exclusion -----------------------------------------------------------
    @functools.cached_property
    def exemplar_ids(self) -> frozenset[str]:
        return frozenset(e.source_id for e in self.exemplars if e.source_id)

    @functools.cached_property
    def exemplar_questions(self) -> frozenset[str]:
        return frozenset(squash(e.question).lower() for e in self.exemplars)


def _environment():
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=StrictUndefined,
        autoescape=False,
    )
    env.filters["squash"] = squash
    return env


def read_exemplars(path: Path, entry_point: str) -> tuple[Exemplar, ...]:
    """Exemplars from a JSONL file; each program must parse and define ``entry_point``."""
    import ast

    from ekt.records import read_jsonl

    out = []
    for line, obj in read_jsonl(path, allow_torn_tail=False):
        where = f"{path}:{line}"
        for key in ("question", "program"):
            if not isinstance(obj.get(key), str) or not obj[key].strip():
                raise EktError(f"{where}: field {key!r} must be a non-empty string")
        unknown = sorted(set(obj) - {"question", "program", "source_id"})
        if unknown:
            raise EktError(
                f"{where}: unknown field(s) {', '.join(unknown)}; "
                "an exemplar has question, program and optionally source_id"
            )
        sid = obj.get("source_id", "")
        if not isinstance(sid, str):
            raise EktError(f"{where}: field 'source_id' must be a string")
        program = obj["program"] if obj["program"].endswith("\n") else obj["program"] + "\n"
        try:
            tree = ast.parse(program)
        except SyntaxError as e:
            raise EktError(f"{where}: program does not parse (line {e.lineno}: {e.msg})") from None
        if not any(
            isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == entry_point
            for n in tree.body
        ):
            raise EktError(f"{where}: program does not define {entry_point}()")
        out.append(Exemplar(sid, obj["question"], program))
    return tuple(out)


def _resolve(spec: str) -> Path:
    if spec in BUILTIN:
        return (FORMATS_DIR / f"{spec}.yaml").resolve()
    p = Path(spec).expanduser()
    if p.is_file():
        return p.resolve()
    raise EktError(
        f"prompt format {spec!r}: not a built-in format ({', '.join(BUILTIN)}) "
        "and no such YAML file"
    )


@functools.lru_cache(maxsize=32)
def _load(path: Path) -> PromptFormat:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise EktError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise EktError(f"{path}: a prompt format is a mapping of keys ({', '.join(sorted(_KEYS))})")
    unknown = sorted(map(str, set(data) - _KEYS))
    if unknown:
        raise EktError(
            f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KEYS))}"
        )
    style = data.get("style", "completion")
    if style not in STYLES:
        raise EktError(f"{path}: style must be completion or chat, got {style!r}")
    entry = data.get("entry_point", "solution")
    if not isinstance(entry, str) or not entry.isidentifier():
        raise EktError(f"{path}: entry_point must be a Python identifier, got {entry!r}")
    header = data.get("header", f"def {entry}():")
    if not isinstance(header, str) or not header.lstrip().startswith("def "):
        raise EktError(f"{path}: header must be a def line, got {header!r}")
    header = header.rstrip("\n") + "\n"
    instruction = data.get("instruction", "")
    if not isinstance(instruction, str):
        raise EktError(f"{path}: instruction must be text")
    stop = data.get("stop", [])
    if not isinstance(stop, list) or any(not isinstance(s, str) or not s for s in stop):
        raise EktError(f"{path}: stop must be a list of non-empty strings")
    ex_file = data.get("exemplars")
    if ex_file is None:
        exemplars: tuple[Exemplar, ...] = ()
    elif not isinstance(ex_file, str):
        raise EktError(f"{path}: exemplars must be a path to a JSONL file")
    else:
        ex_path = (path.parent / ex_file).resolve()
        if not ex_path.is_file():
            raise EktError(f"{path}: exemplars: no such file {ex_path}")
        exemplars = read_exemplars(ex_path, entry)
    n = data.get("n_exemplars", len(exemplars))
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= len(exemplars):
        raise EktError(f"{path}: n_exemplars must be an integer in [0, {len(exemplars)}]")
    raw = data.get("templates")
    need = _TEMPLATES[style]
    if not isinstance(raw, dict) or any(not isinstance(raw.get(k), str) for k in need):
        raise EktError(f"{path}: a {style} format needs templates {', '.join(need)} (text each)")
    extra = sorted(set(raw) - set(need))
    if extra:
        raise EktError(f"{path}: templates {', '.join(extra)} do not apply to style {style}")
    env = _environment()
    templates = {}
    for key in need:
        try:
            templates[key] = env.from_string(raw[key])
        except Exception as e:  # jinja2.TemplateSyntaxError
            line = getattr(e, "lineno", "?")
            raise EktError(f"{path}: templates.{key} line {line}: {e}") from None
    return PromptFormat(
        name=str(data.get("name", path.stem)),
        style=style,
        entry_point=entry,
        header=header,
        instruction=instruction,
        exemplars=exemplars,
        stop=tuple(stop),
        templates=templates,
        n_exemplars=n,
        source=str(path),
    )


@functools.lru_cache(maxsize=1)
def default_stop() -> tuple[str, ...]:
    """The default format's stop strings, read without compiling its templates (jinja2 stays
    unloaded: ``SamplingParams`` takes its default from here when a parser is built)."""
    data = yaml.safe_load(_resolve(DEFAULT_FORMAT).read_text(encoding="utf-8"))
    return tuple(data.get("stop", []))


def load_format(spec: str | PromptFormat | None = None) -> PromptFormat:
    """A prompt format by built-in name or YAML path (None: the default, ``function``);
    ``NAME@EXEMPLARS.jsonl`` is that format showing the file's exemplars instead."""
    if isinstance(spec, PromptFormat):
        return spec
    base, sep, exemplars = (spec or DEFAULT_FORMAT).rpartition(EXEMPLAR_SEP)
    if sep and exemplars.endswith(".jsonl"):
        return _with_exemplars(base or DEFAULT_FORMAT, exemplars)
    return _load(_resolve(spec or DEFAULT_FORMAT))


@functools.lru_cache(maxsize=32)
def _with_exemplars(base: str, exemplars: str) -> PromptFormat:
    return load_format(base).with_exemplars(exemplars)


def with_task_exemplars(spec: str | None, exemplars: str | None) -> str:
    """The format spec a task's prompts use: ``spec`` showing the task's exemplars (a task
    file's ``exemplars``), unless ``spec`` already names exemplars of its own."""
    spec = spec or DEFAULT_FORMAT
    if not exemplars or EXEMPLAR_SEP in spec and spec.endswith(".jsonl"):
        return spec
    return f"{spec}{EXEMPLAR_SEP}{exemplars}"


__all__ = [
    "BUILTIN",
    "DEFAULT_FORMAT",
    "Exemplar",
    "Messages",
    "Prompt",
    "PromptFormat",
    "load_format",
    "default_stop",
    "read_exemplars",
    "squash",
    "with_task_exemplars",
]
