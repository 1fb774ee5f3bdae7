"""Procedural tasks: problems drawn from seeded generators (``source: reasoning-gym``).

A task file can name a generator instead of a data file::

    name: legs
    source: reasoning-gym
    generator: leg_counting            # or generators: [{name, config, weight}, ...]
    config: {max_animals: 4}           # the generator's own settings
    seed: 7
    size: {train: 2000, test: 300}     # problems per split

Problem ``i`` of a split is item ``i`` of the generator seeded with the split's seed (the
task's seed for ``train``, a fixed offset of it for every other split), so the same file
gives the same problems on any machine, and ids are ``<task>/<split>/<i>``. A mixed task
(``generators:``) draws the generator of item ``i`` from a ``random.Random`` seeded with
text (hashed the same everywhere), by weight. Training problems whose question equals a
question of another split are dropped (:attr:`ProceduralSource.overlaps` counts them): a
small generator space repeats itself.

Gold answers that read as numbers (``"292"``, ``"-4"``) are graded by ekt's one exact
numeric grader. Other answers (``"06:09"``, lists, words) are correct only when the
generator's own checker gives full marks to the text the program's value becomes
(:func:`answer_text`). That checker runs in a helper process with time and memory limits
(:mod:`ekt.data.helper`, :mod:`ekt.sandbox.checker_worker`), under the sandbox's seccomp
filter where the kernel has one, never in the ekt process: some checkers parse text with
sympy's ``parse_expr``, which evaluates Python.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ekt.data.grading import grade_value
from ekt.data.helper import HelperProcess
from ekt.errors import EktError
from ekt.records import Problem

SOURCE = "reasoning-gym"
MAX_ANSWER_CHARS = 2000  # longer answer text is wrong unchecked
MAX_ANSWER_DEPTH = 8  # list nesting deeper than this is wrong unchecked
CHECK_TIMEOUT_S = 3.0
CHECK_MEMORY_MB = 1024
GENERATE_TIMEOUT_S = 300.0  # a split's items, made in the helper
_PLAIN_NUMBER = re.compile(r"^-?\d{1,300}(\.\d{1,300})?$")
_SPLIT_STRIDE = 10**8  # splits' seeds lie this far apart (a generator seeds item i with seed+i)


@dataclass(frozen=True)
class Generator:
    """One generator of a procedural task: its reasoning-gym name, settings and weight."""

    name: str
    config: Mapping[str, Any] = field(default_factory=dict)
    weight: float = 1.0


def split_seed(seed: int, split: str) -> int:
    """The seed of a split: the task's seed for train, a fixed far offset for the others."""
    if split == "train":
        return seed
    return seed + _SPLIT_STRIDE * (1 + zlib.crc32(split.encode()) % 1000)


def require_reasoning_gym() -> None:
    if importlib.util.find_spec("reasoning_gym") is None:
        raise EktError(
            "procedural tasks (source: reasoning-gym) need reasoning-gym: "
            "pip install 'ekt[procedural]'"
        )


def generate_items(
    gen: Generator, seed: int, size: int, indices: list[int], where: str
) -> list[tuple[str, str]]:
    """(question, answer) of some items of one generator, made in the helper process."""
    request = json.dumps(["items", gen.name, dict(gen.config), seed, size, indices])
    reply = checker().ask(request, timeout=GENERATE_TIMEOUT_S, cache=False)
    try:
        data = json.loads(reply) if reply else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise EktError(f"{where}: generator {gen.name!r} gave no items within "
                       f"{GENERATE_TIMEOUT_S:.0f} s (or its helper process failed)")  # fmt: skip
    if "error" in data:
        raise EktError(f"{where}: generator {gen.name!r}: {data['error']}")
    return [(str(q), str(a)) for q, a in data["items"]]


def pick_generator(generators: tuple[Generator, ...], seed: int, index: int) -> int:
    """Which generator makes item ``index`` of a mixed task (a seeded, weighted draw)."""
    if len(generators) == 1:
        return 0
    rng = random.Random(f"ekt-mix:{seed}:{index}")  # text seeds hash the same everywhere
    return rng.choices(range(len(generators)), weights=[g.weight for g in generators])[0]


def gold_of(answer: Any) -> int | float | str:
    """A generator's answer as ekt's gold: a number when the text is a plain integer or decimal
    (``"292"``, ``"-4"``, ``"2.5"``), else the text itself, graded by the generator's checker."""
    text = str(answer).strip()
    if not _PLAIN_NUMBER.match(text):
        return text
    value = float(text)
    return int(text) if "." not in text else (int(value) if value.is_integer() else value)


@dataclass
class ProceduralSource:
    """Loads the problems of a procedural task and grades the answers that are not numbers."""

    task: str  # the task's name (ids are <task>/<split>/<i>)
    generators: tuple[Generator, ...]
    seed: int
    sizes: Mapping[str, int]
    where: str = ""  # the task file, for messages
    overlaps: dict[str, int] = field(default_factory=dict)  # split -> problems dropped
    _items: dict[str, list[tuple[str, str] | None]] = field(default_factory=dict, repr=False)

    def items(self, split: str) -> list[tuple[str, str] | None]:
        """(question, answer) of every item of a split, in index order, before dropping."""
        if split not in self._items:
            if split not in self.sizes:
                raise EktError(f"task {self.task} has no split {split!r}")
            size, seed = self.sizes[split], split_seed(self.seed, split)
            which = [pick_generator(self.generators, seed, i) for i in range(size)]
            out: list[tuple[str, str] | None] = [None] * size
            for g, gen in enumerate(self.generators):
                indices = [i for i in range(size) if which[i] == g]
                if indices:
                    made = generate_items(gen, seed, size, indices, self.where)
                    for i, item in zip(indices, made, strict=True):
                        out[i] = item
            self._items[split] = out
        return self._items[split]

    def load(self, split: str) -> list[Problem]:
        """The problems of a split; training questions seen in another split are dropped."""
        from ekt.data.prompt_format import squash

        others: set[str] = set()
        if split == "train":
            for s in self.sizes:
                if s != "train":
                    others |= {squash(it[0]).lower() for it in self.items(s) if it}
        problems, dropped = [], 0
        for i, it in enumerate(self.items(split)):
            if it is None or squash(it[0]).lower() in others:
                dropped += it is not None
                continue
            pid = f"{self.task}/{split}/{i}"
            problems.append(Problem(pid, it[0].strip(), gold_of(it[1]), split))
        self.overlaps[split] = dropped
        return problems

    def checker_request(self, problem: Problem, text: str) -> str:
        """The helper's request for one answer: the generator, split seed, index and text."""
        _, split, index = problem.id.rsplit("/", 2)
        i = int(index)
        seed = split_seed(self.seed, split)
        g = self.generators[pick_generator(self.generators, seed, i)]
        return json.dumps(["score", g.name, dict(g.config), seed, self.sizes[split], i, text])

    def grade(self, value: Any, type_name: str, problem: Problem) -> bool:
        """True when the program's value is the answer (see the module docstring)."""
        if not isinstance(problem.answer, str):  # a number: ekt's one exact grader
            return grade_value(value, type_name, problem.answer)
        text = answer_text(value, type_name)
        if text is None or too_large(text):
            return False
        return checker().ask(self.checker_request(problem, text)) == "1"


def answer_text(value: Any, type_name: str, _depth: int = 0) -> str | None:
    """A sandbox value as the answer text a generator expects; None when it cannot be one.

    A string is itself, an int its digits, a float its shortest repr (an integral float as
    an int: ``12.0`` is ``12``), a fraction ``p/q``, a list or tuple its items' texts joined
    by ``", "``. A bool, None, NaN, an infinity or any other type is no answer.
    """
    if isinstance(value, bool) or type_name in ("bool", "numpy.bool", "NoneType"):
        return None
    if type_name == "str" and type(value) is str:
        return value.strip()
    if type_name == "Fraction":
        if isinstance(value, list) and len(value) == 2 and all(type(x) is int for x in value):
            num, den = value
            return None if den == 0 else (str(num) if den == 1 else f"{num}/{den}")
        return None
    if type(value) is int:
        return str(value)
    if type(value) is float:
        if value != value or value in (float("inf"), float("-inf")):
            return None
        return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
    if type_name in ("list", "tuple") and type(value) is list and _depth < MAX_ANSWER_DEPTH:
        parts = [answer_text(v, _item_type(v), _depth + 1) for v in value]
        return None if any(p is None for p in parts) else ", ".join(parts)  # type: ignore[arg-type]
    return None


def _item_type(v: Any) -> str:
    """The type name of an item inside a returned list (the sandbox sends plain JSON)."""
    if type(v) is list:
        return "list"
    return {bool: "bool", int: "int", float: "float", str: "str"}.get(type(v), "NoneType")


def too_large(text: str) -> bool:
    return len(text) > MAX_ANSWER_CHARS


_CHECKER: HelperProcess | None = None


def checker() -> HelperProcess:
    """The one helper process that runs generators' checkers (started on first use)."""
    global _CHECKER
    if _CHECKER is None:
        require_reasoning_gym()
        _CHECKER = HelperProcess(
            "ekt.sandbox.checker_worker", timeout=CHECK_TIMEOUT_S, memory_mb=CHECK_MEMORY_MB,
            startup=60.0, env={"PYTHONHASHSEED": "0"},
        )  # fmt: skip
    return _CHECKER
