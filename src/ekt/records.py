"""Records that flow between stages, as dataclasses serialised to JSON lines.

Every arrow in the data flow is a file of these records. Writers append one
JSON object per line and flush, so a killed stage loses at most the line it
was writing; readers ignore a torn last line and report any other bad line
with its file and line number.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ekt.errors import EktError


@dataclass(frozen=True)
class Problem:
    id: str  # e.g. "gsm8k/train/17": task/split/0-based line index
    question: str
    answer: float  # gold final answer
    split: str
    solution: str = ""  # the dataset's worked solution text, when it has one


@dataclass
class Completion:
    problem_id: str
    sample_idx: int
    text: str
    n_tokens: int
    program: str = ""  # extract_program(text), filled by the generate stage


@dataclass
class Execution:
    """What the sandbox reports about one program. Never carries the gold answer."""

    status: str  # ok | error | timeout | killed
    value: Any = (
        None  # plain typed value: int, float, str, bool, None, or [num, den] for a fraction
    )
    type: str = ""  # python type name of the returned value, or the exception type for errors
    stdout_tail: str = ""
    ms: float = 0.0
    error: str = ""  # short description for error/killed


@dataclass
class TrainPair:
    problem_id: str
    question: str
    program: str
    source: str = "teacher"  # teacher | supervised | student-round-N ...


T = TypeVar("T")


def to_dict(record: Any) -> dict:
    return dataclasses.asdict(record)


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build ``cls`` from a dict, ignoring unknown keys; missing required keys are an EktError."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    required = [
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [k for k in required if k not in data]
    if missing:
        raise EktError(f"{where}: missing field(s) {', '.join(missing)}")
    return cls(**{k: v for k, v in data.items() if k in names})


def read_jsonl(path: str | Path, allow_torn_tail: bool = True) -> Iterator[tuple[int, dict]]:
    """Yield (1-based line number, object). Blank lines are skipped.

    A last line without a trailing newline that fails to parse is the mark of a
    killed writer and is ignored when ``allow_torn_tail``; any other bad line
    raises EktError naming file and line.
    """
    path = Path(path)
    if not path.exists():
        raise EktError(f"{path}: no such file")
    with open(path, "rb") as fh:
        data = fh.read()
    lines = data.split(b"\n")
    ends_clean = data.endswith(b"\n") or not data
    for i, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        is_tail = i == len(lines) and not ends_clean
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            if is_tail and allow_torn_tail:
                return
            raise EktError(f"{path}:{i}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            if is_tail and allow_torn_tail:
                return
            raise EktError(f"{path}:{i}: malformed JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(obj, dict):
            raise EktError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
        yield i, obj


def read_records(path: str | Path, cls: type[T]) -> list[T]:
    return [from_dict(cls, obj, f"{path}:{i}") for i, obj in read_jsonl(path)]


class JsonlWriter:
    """Append-only JSON-lines writer; each record is one ``write`` + flush.

    Opening truncates a torn last line left by a killed writer so that appended
    records start on a fresh line.
    """

    def __init__(self, path: str | Path, fsync: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _repair_torn_tail(self.path)
        self._fh = open(self.path, "a", encoding="utf-8")
        self._fsync = fsync

    def write(self, record: Any) -> None:
        obj = record if isinstance(record, dict) else to_dict(record)
        self._fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self._fh.flush()
        if self._fsync:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _repair_torn_tail(path: Path) -> None:
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        fh.truncate(cut)


def write_jsonl_atomic(path: str | Path, records: Iterable[Any]) -> int:
    """Write all records to ``path`` via a temporary file and rename; returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in records:
            obj = r if isinstance(r, dict) else to_dict(r)
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
            n += 1
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return n


def write_json_atomic(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
    os.replace(tmp, path)


__all__ = [
    "Problem",
    "Completion",
    "Execution",
    "TrainPair",
    "JsonlWriter",
    "read_jsonl",
    "read_records",
    "write_jsonl_atomic",
    "write_json_atomic",
    "to_dict",
    "from_dict",
    "field",
]
