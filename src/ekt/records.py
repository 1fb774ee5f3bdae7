"""Records that flow between stages, as dataclasses serialised to JSON lines.

Every arrow in the data flow is a file of these records. Writers append one
JSON object per line and flush, so a killed stage loses at most the line it
was writing. Reader and writer share one rule (``docs/reliability.md``): **a
last line without its newline is incomplete**, whatever its bytes (a disk that
filled up between a record's JSON and its newline leaves one that parses). The
reader of a stage's output skips it, the writer cuts it when it reopens the
file, and the stage redoes that record. Any other bad line is reported with its
file and line number.
"""

from __future__ import annotations

import contextlib
import dataclasses
import filecmp
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

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
    program: str = ""  # the program extracted from text by the generate stage ("" if none)
    extract_error: str = ""  # why no program could be extracted ("" when there is one)
    prompt_tokens: int = 0  # prompt tokens billed for this sample (API usage; 0 if unknown)
    stop: str = ""  # the stop string that ended the sample ("" also for EOS or the length limit)
    question_sha: str = ""  # hash of the question the prompt showed (ekt.data.provenance)


@dataclass
class Execution:
    """What the sandbox reports about one program. Never carries the gold answer."""

    status: str  # ok | error | timeout | killed
    value: Any = (
        None  # plain typed value: int, float, str, bool, None, [num, den] for a fraction, or a list
    )
    type: str = ""  # python type name of the returned value, or the exception type for errors
    stdout_tail: str = ""
    ms: float = 0.0
    error: str = ""  # short description for error/killed


Keep = Literal["first", "all"]
"""Which correct programs of a question become training pairs: its first, or all of them."""
KEEP = get_args(Keep)


@dataclass
class TrainPair:
    problem_id: str
    question: str
    program: str
    source: str = "teacher"  # teacher | supervised | student-round-N ...


@dataclass
class Rollout:
    """One of an RL method's samples and what it earned (``ekt.methods.grpo``): the program
    its completion holds, how that ran in the sandbox, and the reward it was given."""

    step: int  # the optimizer step (1-based) this rollout's batch trained
    problem_id: str
    completion: str  # the sampled text, as decoded
    program: str  # the program extracted from it ("" if none)
    status: str  # the sandbox's status, or "no_program" (not run)
    value: Any = None  # what the program returned (the sandbox's plain value)
    correct: bool = False  # the task's grader on value
    reward: float = 0.0
    error: str = ""  # the sandbox's error, or why no program could be extracted
    index: int = 0  # position in the step's batch (a group's samples are consecutive)
    n_tokens: int = 0  # completion tokens


T = TypeVar("T")


def to_dict(record: Any) -> dict:
    return dataclasses.asdict(record)


# Field annotations checked when a record is read: (accepted JSON types, words for messages).
_SIMPLE_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "str": ((str,), "a string"),
    "int": ((int,), "an integer"),
    "float": ((int, float), "a number"),
    "bool": ((bool,), "true or false"),
}
_JSON_NAMES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}


def from_dict(cls: type[T], data: dict, where: str = "", strict: bool = False) -> T:
    """Build ``cls`` from a dict; missing required keys and wrongly typed values are EktErrors.

    Unknown keys are ignored, or with ``strict`` an EktError (a typo such as
    ``progam`` or a file of another kind). ``where`` (``file:line``) starts every message.
    """
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    names = {f.name for f in fields}
    required = [
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [k for k in required if k not in data]
    if missing:
        raise EktError(f"{where}: missing field(s) {', '.join(missing)}")
    unknown = sorted(k for k in data if k not in names)
    if strict and unknown:
        raise EktError(
            f"{where}: unknown field(s) {', '.join(unknown)}; "
            f"a {cls.__name__} record has {', '.join(f.name for f in fields)}"
        )
    for f in fields:
        spec = _SIMPLE_TYPES.get(f.type if isinstance(f.type, str) else f.type.__name__)
        if spec is None or f.name not in data:
            continue
        kinds, words = spec
        value = data[f.name]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            got = "null" if value is None else _JSON_NAMES.get(type(value), "a number")
            raise EktError(f"{where}: field {f.name!r} must be {words}, got {got}")
    return cls(**{k: v for k, v in data.items() if k in names})


# A record line longer than this is not one ekt (or GSM8K) writes: it is refused with its
# line number before it is decoded, so a corrupt or wrong file cannot exhaust memory.
MAX_LINE_BYTES = 8 << 20


def iter_lines(path: Path, max_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes, bool]]:
    """(1-based line number, raw bytes without the newline, ends with a newline), streamed.

    A line over ``max_bytes`` raises EktError naming the file and line.
    """
    with open(path, "rb") as fh:
        i = 0
        while True:
            raw = fh.readline(max_bytes + 1)
            if not raw:
                return
            i += 1
            if len(raw) > max_bytes and not raw.endswith(b"\n"):
                raise EktError(
                    f"{path}:{i}: line longer than {max_bytes >> 20} MiB; "
                    "not a record this file should hold (wrong or corrupt file?)"
                )
            ends = raw.endswith(b"\n")
            yield i, raw[:-1] if ends else raw, ends


def read_jsonl(
    path: str | Path,
    allow_torn_tail: bool = True,
    on_torn: Callable[[int, bytes], None] | None = None,
) -> Iterator[tuple[int, dict]]:
    """Yield (1-based line number, object), reading the file line by line. Blank lines are skipped.

    With ``allow_torn_tail`` (files ekt writes) a last line without its newline is an
    incomplete record, never read, even when it parses: ``JsonlWriter`` cuts the same
    line, so a resumed stage redoes it (``on_torn(line, raw)`` is told of it). Without
    (files people write, such as task files) such a line is read when it parses. Any
    other bad line (malformed JSON, not UTF-8, not an object, over ``MAX_LINE_BYTES``)
    raises EktError naming file and line.
    """
    path = Path(path)
    if not path.exists():
        raise EktError(f"{path}: no such file")
    if path.is_dir():
        raise EktError(f"{path}: is a folder, expected a JSONL file")
    for i, raw, ends in iter_lines(path):
        if not raw.strip():
            continue
        is_tail = not ends
        if is_tail and allow_torn_tail:
            if on_torn is not None:
                on_torn(i, raw)
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise EktError(f"{path}:{i}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise EktError(f"{path}:{i}: malformed JSON ({e.msg}, column {e.colno})") from None
        except RecursionError:
            raise EktError(f"{path}:{i}: malformed JSON (nested too deeply)") from None
        if not isinstance(obj, dict):
            raise EktError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
        yield i, obj


def read_records(
    path: str | Path, cls: type[T], strict: bool = True, allow_torn_tail: bool = True
) -> list[T]:
    """Every record of ``cls`` in a JSONL file; with ``strict`` unknown fields are an error.
    ``allow_torn_tail=False`` for a file written whole (atomically, or by a person): its
    last line counts with or without a newline (``read_jsonl``)."""
    rows = read_jsonl(path, allow_torn_tail=allow_torn_tail)
    return [from_dict(cls, obj, f"{path}:{i}", strict) for i, obj in rows]


class JsonlWriter:
    """Append-only JSON-lines writer; each record is one ``write`` + flush.

    Opening cuts a last line without its newline (a killed writer's, or one a full
    disk stopped at any byte: the rule ``read_jsonl`` reads by) so that appended
    records start on a fresh line. A write that fails (a full disk) leaves at most
    such a torn last line, which readers skip and the next writer removes.
    """

    def __init__(self, path: str | Path, fsync: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _repair_torn_tail(self.path)
        self._fh = open(self.path, "ab")
        self._fsync = fsync

    def write(self, record: Any) -> None:
        obj = record if isinstance(record, dict) else to_dict(record)
        try:
            line = json.dumps(obj, ensure_ascii=False) + "\n"
        except (TypeError, ValueError) as e:
            raise EktError(f"{self.path}: cannot write a record as JSON: {e}") from None
        try:
            self._fh.write(_utf8(line))
            self._fh.flush()
            if self._fsync:
                os.fsync(self._fh.fileno())
        except OSError as e:  # a full disk: name the file (at most its last line is torn)
            raise OSError(e.errno, e.strerror, str(self.path)) from e

    def close(self) -> None:
        try:
            self._fh.close()
        except OSError:
            pass  # a failed flush (full disk) already raised from write(); the tail is torn

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _utf8(text: str) -> bytes:
    """UTF-8 of ``text``; any surrogate in it (text from an untrusted program) is made
    valid first: a pair becomes its character, a lone one U+FFFD. Never raises."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace").encode()


def _repair_torn_tail(path: Path) -> None:
    """Cut a last line that has no newline (a killed writer's), reading only the file's end."""
    if not path.exists():
        return
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb+") as fh:
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        pos = size
        while pos > 0:
            step = min(1 << 16, pos)
            fh.seek(pos - step)
            block = fh.read(step)
            nl = block.rfind(b"\n")
            if nl >= 0:
                fh.truncate(pos - step + nl + 1)
                return
            pos -= step
        fh.truncate(0)


def _tmp_path(path: Path) -> Path:
    # Named by the writing process: two processes writing one file (each stage holds its
    # output's lock, but e.g. two commands may write one manifest) never rename each
    # other's temporary away. A killed writer's is removed by the next write (_sweep_tmp).
    return path.with_name(f"{path.name}.tmp.{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # alive, someone else's
    return True


def _sweep_tmp(path: Path) -> None:
    """Remove temporaries of ``path`` whose writer is gone (killed mid-write), and the
    unnumbered ``.tmp`` older versions left."""
    try:
        siblings = list(path.parent.glob(f"{path.name}.tmp*"))
    except OSError:
        return
    for p in siblings:
        rest = p.name[len(path.name) + len(".tmp") :]
        if rest == "" or (rest[:1] == "." and rest[1:].isdigit() and not _pid_alive(int(rest[1:]))):
            with contextlib.suppress(OSError):
                p.unlink()


def dedupe_jsonl(path: str | Path, key: Callable[[int, dict], Any]) -> list[tuple[int, int]]:
    """Repair a JSONL output that holds a record twice: keep each key's first line.

    Returns ``(line, first line)`` for every line removed (none: the file is left
    untouched). The file is rewritten atomically (a torn last line is dropped with it,
    as any writer would). ``key(line, obj)`` names a record."""
    path = Path(path)
    first: dict[Any, int] = {}
    dups: list[tuple[int, int]] = []
    for i, obj in read_jsonl(path):
        k = key(i, obj)
        if k in first:
            dups.append((i, first[k]))
        else:
            first[k] = i
    if dups:
        drop = {i for i, _ in dups}
        write_jsonl_atomic(path, (obj for i, obj in read_jsonl(path) if i not in drop))
    return dups


def duplicates_note(path: str | Path, dups: list[tuple[int, int]]) -> str:
    """One line saying which duplicate lines a repair removed."""
    shown = ", ".join(f"{i} (of {j})" for i, j in dups[:5])
    more = f" and {len(dups) - 5} more" if len(dups) > 5 else ""
    return (
        f"note: {path} held {len(dups)} duplicate record(s), lines {shown}{more}; "
        "repaired: the first of each kept"
    )


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _same_bytes(a: Path, b: Path) -> bool:
    try:
        return b.is_file() and a.stat().st_size == b.stat().st_size and filecmp.cmp(a, b, False)
    except OSError:
        return False


_SMALL = 1 << 20  # files up to this size are compared before they are written again


def _small_file(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size <= _SMALL
    except OSError:
        return False


def write_bytes_atomic(path: str | Path, chunks: Iterable[bytes]) -> None:
    """Write ``path`` through a temporary file in the same folder, fsync it, then rename.

    A crash (or a full disk) at any point leaves either the old file or the new
    one, never a mix; the temporary file is removed when writing fails. A file that
    already holds exactly these bytes is left untouched (a rerun changes no mtime, and a
    small file such as a job's settings is not even written again: a rerun on a full
    disk gets as far as the records).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    chunks = iter(chunks)
    head: list[bytes] = []
    if _small_file(path):  # a rerun's settings or manifest: no write at all when unchanged
        size = 0
        for chunk in chunks:
            head.append(chunk)
            size += len(chunk)
            if size > _SMALL:
                break
        else:
            with contextlib.suppress(OSError):
                if path.read_bytes() == b"".join(head):
                    _sweep_tmp(path)
                    return
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as fh:
            for chunk in itertools.chain(head, chunks):
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        if _same_bytes(tmp, path):
            tmp.unlink()
            return
        os.replace(tmp, path)
        _sweep_tmp(path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):  # name the file being written, not its temporary
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    _fsync_dir(path.parent)


def write_jsonl_atomic(path: str | Path, records: Iterable[Any]) -> int:
    """Write all records to ``path`` via a temporary file and rename; returns the count."""
    n = 0

    def lines() -> Iterator[bytes]:
        nonlocal n
        for r in records:
            obj = r if isinstance(r, dict) else to_dict(r)
            yield _utf8(json.dumps(obj, ensure_ascii=False) + "\n")
            n += 1

    write_bytes_atomic(path, lines())
    return n


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_bytes_atomic(path, [_utf8(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")])


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, [text.encode("utf-8")])


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
    "write_text_atomic",
    "write_bytes_atomic",
    "iter_lines",
    "MAX_LINE_BYTES",
    "dedupe_jsonl",
    "duplicates_note",
    "to_dict",
    "from_dict",
    "field",
]
