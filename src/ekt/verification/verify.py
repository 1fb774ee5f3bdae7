"""Stage: run every program in the sandbox and grade what it returns against the gold answer.

Input lines need ``problem_id`` and ``program`` (or ``text``, a raw reply: a
continuation, or a chat answer with fences and prose, turned into a program with
``ekt.data.extract.extract``); every input field is kept and ``status``,
``value``, ``type``, ``error``, ``ms`` and ``correct`` are added. A sample
without a program (its ``extract_error`` says why) is not run: it gets status
``no_program``, counted apart from wrong answers. Grading happens here, in the
ekt process, on the plain value the sandbox reports: the program never sees the
gold answer.

The output is appended as results arrive; a rerun skips inputs whose key
(problem id and sample index, or the input position) is already in the output.
The stage holds the output's one-writer lock (``ekt.locks``); an output that holds
a key twice (an older version's, a copied folder) is repaired first, keeping the
first record of each, with a note naming the lines removed.

Every graded record carries ``gold_sha``, the hash of the gold answer it was graded with
(``ekt.data.provenance``). A rerun grades again, from the value the program returned, every
earlier record whose gold answer has changed since (or that has no ``gold_sha``, written by an
older ekt) and rewrites the output with the new verdicts; it names the problems. Programs
sampled for a question that has changed since (their ``question_sha`` differs) are refused:
they must be sampled again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ekt.data.extract import extract, runnable
from ekt.data.prompt_format import PromptFormat, load_format
from ekt.data.provenance import changed_problems, stale_line
from ekt.data.tasks import Task
from ekt.errors import EktError
from ekt.locks import output_lock
from ekt.records import (
    Completion,
    Execution,
    JsonlWriter,
    Problem,
    dedupe_jsonl,
    duplicates_note,
    read_jsonl,
    to_dict,
    write_jsonl_atomic,
)
from ekt.sandbox.pool import Sandbox, SandboxConfig, default_deny_read, run_deny_read
from ekt.verification.filtering import normalise_program


class SandboxCluster(Protocol):
    """Where programs run off this process (``ekt.pipeline.distributed.RayCluster``)."""

    def sandbox(self, config: SandboxConfig) -> Any:
        """A ``Sandbox``-like pool: a context manager with ``run(programs)``."""


@dataclass
class VerifySummary:
    programs: int
    new: int
    correct: int
    problems: int
    solved: int
    statuses: dict[str, int]
    seconds: float
    regraded: dict[str, str] = dataclasses.field(default_factory=dict)  # id -> what changed

    @property
    def no_program(self) -> int:
        """Samples whose program could not be extracted (not run; not wrong answers)."""
        return self.statuses.get(NO_PROGRAM, 0)

    def line(self) -> str:
        rate = self.new / self.seconds if self.seconds > 0 else 0.0
        st = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items()))
        msg = (
            f"verify: {self.programs} programs ({self.new} run, {rate:.0f}/s), "
            f"{self.correct} correct; "
            f"{self.solved}/{self.problems} problems solved; statuses: {st}; {self.seconds:.1f}s"
        )
        if self.regraded:
            ids = sorted(self.regraded)
            more = f" and {len(ids) - 5} more" if len(ids) > 5 else ""
            msg += (f"; re-graded the earlier verdicts of {len(ids)} problems whose gold answer "
                    f"changed: {', '.join(ids[:5])}{more}")  # fmt: skip
        if self.no_program:
            msg += f"; {self.no_program} samples without a program (extraction failed)"
            if 2 * self.no_program > self.programs:
                msg += (
                    " — most samples hold no program: is the prompt format right for the "
                    "model's replies? (see `error` in the output)"
                )
        return msg


NO_PROGRAM = "no_program"  # the status of a sample whose reply holds no program


def input_files(path: str | Path) -> list[Path]:
    """A JSONL file, a folder of shards, or a generate output folder (its samples/ shards)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        if (p / "samples").is_dir():
            p = p / "samples"
        files = sorted(p.glob("*.jsonl"))
        if not files:
            raise EktError(f"{path}: folder holds no .jsonl files")
        return files
    raise EktError(f"{path}: no such file or folder (--programs)")


def _key(obj: dict, ordinal: int) -> str:
    if "sample_idx" in obj:
        return f"{obj['problem_id']}#{obj['sample_idx']}"
    return f"#{ordinal}"


def iter_inputs(
    path: str | Path, prompt_format: str | PromptFormat | None = None
) -> Iterator[tuple[str, int, dict]]:
    """Yield (where, ordinal, record) with ``program`` filled in, validating each line.

    A record without a program (or with an empty one) and with ``text`` gets the
    program extracted from its text, or ``program: ""`` and ``extract_error``.
    """
    fmt = load_format(prompt_format)
    ordinal = 0
    for f in input_files(path):
        # ekt's own samples follow the torn-record rule (generate redoes an unterminated last
        # line); a file someone wrote is read to its end, its last line without a newline too
        ours = any((d / "generate.json").is_file() for d in (f.parent, f.parent.parent))
        for line, obj in read_jsonl(f, allow_torn_tail=ours, on_torn=_torn_note(f)):
            where = f"{f}:{line}"
            if not isinstance(obj.get("problem_id"), str):
                raise EktError(f"{where}: missing field 'problem_id'")
            program = obj.get("program")
            if program is not None and not isinstance(program, str):
                raise EktError(f"{where}: field 'program' must be a string")
            if not (program or "").strip():
                if isinstance(obj.get("text"), str):
                    got = extract(obj["text"], fmt.entry_point, fmt.header)
                    obj["program"] = got.program
                    if got.error:
                        obj["extract_error"] = got.error
                elif program is None:
                    raise EktError(f"{where}: missing field 'program' (or 'text')")
                else:
                    obj["program"] = ""
                    obj.setdefault("extract_error", "empty program")
            yield where, ordinal, obj
            ordinal += 1


def _torn_note(path: Path) -> Callable[[int, bytes], None]:
    def note(line: int, _: bytes) -> None:
        print(
            f"note: {path}:{line}: the last line has no newline: an incomplete record (its "
            "writer was stopped), skipped; rerun the stage that writes it",
            file=sys.stderr,
        )

    return note


def _out_key(line: int, obj: dict) -> str:
    return obj.get("_key") or _key(obj, line - 1)


def _repair(out: Path) -> None:
    """Keep the first record of every key of a verify output (module docstring)."""
    if out.exists():
        dups = dedupe_jsonl(out, _out_key)
        if dups:
            print(duplicates_note(out, dups), file=sys.stderr)


def verify(
    programs: str | Path,
    out: str | Path,
    task: Task,
    split: str | None = None,
    sandbox: SandboxConfig | None = None,
    progress: bool = True,
    cluster: SandboxCluster | None = None,
    prompt_format: str | PromptFormat | None = None,
) -> VerifySummary:
    """Run and grade every program not yet in ``out``; ``cluster``: on Ray.

    ``prompt_format`` names the entry point the programs define (and how raw ``text``
    is read); the sandbox calls ``solution()``, so another entry point is aliased.
    """
    out = Path(out)

    def open_sandbox() -> Any:
        """The pool the programs run in (here, or on ``cluster``), denied the task's data and
        the run's files."""
        return _pool(_deny_task_data(sandbox or SandboxConfig(), task, programs, out), cluster)

    with output_lock(out):
        return _verify_locked(programs, out, task, split, open_sandbox, progress, prompt_format)


def _verify_locked(
    programs: str | Path,
    out: Path,
    task: Task,
    split: str | None,
    open_sandbox: Callable[[], Any],
    progress: bool,
    prompt_format: str | PromptFormat | None,
) -> VerifySummary:
    entry = load_format(prompt_format).entry_point
    _repair(out)
    t0 = time.time()
    done: set[str] = set()
    statuses: dict[str, int] = {}
    solved: set[str] = set()
    seen: set[str] = set()
    correct = 0
    inputs = list(iter_inputs(programs, prompt_format))
    ids = {obj["problem_id"] for _, _, obj in inputs}
    earlier = [obj for _, obj in read_jsonl(out)] if out.exists() else []
    problems = task.by_id(ids | {o["problem_id"] for o in earlier if "problem_id" in o})
    stale = changed_problems((o for _, _, o in inputs), problems, "")  # questions only
    if stale:
        raise EktError(stale_line(stale, f"the programs in {programs} were sampled",
                                  "sample them again (`ekt generate --force`, or another "
                                  "--out), then verify into a new --out"))  # fmt: skip
    earlier, regraded = regrade_stale(earlier, problems, task, out)
    for i, obj in enumerate(earlier):
        done.add(obj.get("_key") or _key(obj, i))
        _tally(obj, statuses, solved, seen)
        correct += bool(obj.get("correct"))
    file_split = None if split is None else ("test" if split == "test" else "train")
    first: dict[str, str] = {}
    for where, o, obj in inputs:
        pid = obj["problem_id"]
        if pid not in problems:
            raise EktError(f"{where}: unknown problem id {pid!r} for task {task.name}")
        key = _key(obj, o)
        if key in first:  # it would be run, written and counted twice
            raise EktError(f"{where}: duplicate of {first[key]} ({pid} sample {obj['sample_idx']})")
        first[key] = where
        if file_split and pid.split("/")[1] != file_split:
            raise EktError(f"{where}: problem {pid} is not in split {split!r} (--split)")
    todo = [(o, _key(obj, o), obj) for _, o, obj in inputs if _key(obj, o) not in done]

    bar = _progress(len(inputs), len(inputs) - len(todo), progress)
    with open_sandbox() as box, JsonlWriter(out) as writer:
        graded = _run_and_grade(box, [obj for _, _, obj in todo], problems, task, entry)
        for (_, key, obj), rec in zip(todo, graded, strict=True):
            if not key.startswith(f"{obj['problem_id']}#"):
                rec["_key"] = key
            writer.write(rec)
            _tally(rec, statuses, solved, seen)
            correct += rec["correct"]
            bar.update(1)
    bar.close()
    return VerifySummary(
        programs=len(inputs),
        new=len(todo),
        correct=correct,
        problems=len(seen),
        solved=len(solved),
        statuses=statuses,
        seconds=time.time() - t0,
        regraded=regraded,
    )


def regrade_stale(
    records: list[dict], problems: dict[str, Problem], task: Task, out: Path
) -> tuple[list[dict], dict[str, str]]:
    """``records`` (a verify output, read) with every verdict whose gold answer has changed
    since (or that has no ``gold_sha``) graded again against the problems loaded now; when
    any was, ``out`` is rewritten with them (atomically). Returns the records and
    ``problem id -> what changed`` for the verdicts that had another gold answer.

    Grading is a pure function of the returned value, which the program computed without
    seeing the gold answer, so grading the stored value again is what running it again gives.
    Records of problems the task no longer has are refused (their verdict means nothing)."""
    gone = sorted({r["problem_id"] for r in records if r.get("problem_id") not in problems})
    if gone:
        raise EktError(stale_line({pid: "removed" for pid in gone}, f"{out} was graded",
                                  "verify into another --out"))  # fmt: skip
    changed = changed_problems(records, problems, task.answer_format)
    touched = False
    fresh = []
    for r in records:
        problem = problems[r["problem_id"]]
        if r.get("gold_sha") != task.gold_sha(problem):
            r = regrade(r, problem, task)
            touched = True
        fresh.append(r)
    if touched:
        write_jsonl_atomic(out, fresh)
    return fresh, {pid: what for pid, what in changed.items() if what == "gold answer"}


def regrade(record: dict, problem: Problem, task: Task) -> dict:
    """A graded record graded again against ``problem``'s gold answer, from the status and
    value it holds (a sample without a program stays not correct)."""
    rec = dict(record)
    if rec.get("status", NO_PROGRAM) == NO_PROGRAM:
        rec["correct"] = False
    else:
        names = {f.name for f in dataclasses.fields(Execution)}
        ex = Execution(**{k: v for k, v in rec.items() if k in names})
        rec["correct"] = task.grade(ex, problem)
    rec["gold_sha"] = task.gold_sha(problem)
    return rec


def _pool(cfg: SandboxConfig, cluster: SandboxCluster | None) -> Any:
    """The sandbox pool programs run in: here, or verifier actors on a Ray cluster (same
    output, same order)."""
    return cluster.sandbox(cfg) if cluster is not None else Sandbox(cfg)


def _run_and_grade(
    box: Any, objs: list[dict], problems: dict[str, Problem], task: Task, entry: str
) -> Iterator[dict]:
    """The graded record of each input, in order: its program run in ``box`` (one batch,
    streamed), or the no-program record of a sample without one."""
    results = box.run(runnable(o["program"], entry) for o in objs if o["program"])
    for obj in objs:
        problem = problems[obj["problem_id"]]
        if obj["program"]:
            yield grade_record(obj, to_dict(next(results)), problem, task)
        else:
            yield {**no_program_record(obj), "gold_sha": task.gold_sha(problem)}


class RoundJudge:
    """An adaptive budget's judgement (``ekt.generation.generate.Judge``): runs a round's new
    programs in one warm sandbox pool, kept open across rounds, appends their graded records
    to ``out`` (the records ``verify`` writes, so a later ``verify`` of the folder has nothing
    left to do), and counts each question's distinct correct programs (normalised as the
    filter deduplicates them). Samples already in ``out`` (a resumed job) are not run again.
    Use as a context manager."""

    def __init__(
        self,
        samples_dir: str | Path,
        out: str | Path,
        task: Task,
        sandbox: SandboxConfig | None = None,
        cluster: SandboxCluster | None = None,
        prompt_format: str | PromptFormat | None = None,
    ):
        self.out = Path(out)
        self._lock = contextlib.ExitStack()  # the output's one-writer lock, until __exit__
        self._lock.enter_context(output_lock(self.out))
        try:
            self._setup(samples_dir, task, sandbox, cluster, prompt_format)
        except BaseException:
            self._lock.close()
            raise

    def _setup(self, samples_dir, task, sandbox, cluster, prompt_format) -> None:  # noqa: ANN001
        _repair(self.out)
        self.task = task
        self.entry = load_format(prompt_format).entry_point
        self.done: set[str] = set()
        self.correct: dict[str, set[str]] = {}
        self._problems: dict[str, Problem] = {}
        if self.out.exists():  # verdicts graded with another gold answer are graded again
            earlier = [obj for _, obj in read_jsonl(self.out)]
            self._problems.update(task.by_id({o["problem_id"] for o in earlier}))
            earlier, _ = regrade_stale(earlier, self._problems, task, self.out)
            for i, obj in enumerate(earlier):
                self._note(obj, obj.get("_key") or _key(obj, i))
        box_cfg = _deny_task_data(sandbox or SandboxConfig(), task, samples_dir, self.out)
        self._pool: Any = _pool(box_cfg, cluster)
        self._box: Any = None
        self.ran = 0  # programs run by this judge

    def _note(self, rec: dict, key: str) -> None:
        self.done.add(key)
        if rec.get("correct") is True:
            programs = self.correct.setdefault(rec["problem_id"], set())
            programs.add(normalise_program(rec["program"]))

    def __enter__(self) -> RoundJudge:
        self._box = self._pool.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._pool.__exit__(*exc)
        finally:
            self._box = None
            self._lock.close()

    def __call__(self, completions: list[Completion]) -> dict[str, int]:
        if self._box is None:
            raise EktError("RoundJudge is used inside a `with` block (its sandbox pool)")
        todo = [o for o in map(to_dict, completions) if _key(o, 0) not in self.done]
        missing = {c.problem_id for c in completions} - self._problems.keys()
        if missing:  # a split's file is read once, not every round
            self._problems.update(self.task.by_id(missing))
        with JsonlWriter(self.out) as writer:
            graded = _run_and_grade(self._box, todo, self._problems, self.task, self.entry)
            for obj, rec in zip(todo, graded, strict=True):
                self.ran += bool(obj["program"])
                writer.write(rec)
                self._note(rec, _key(obj, 0))
        return {c.problem_id: len(self.correct.get(c.problem_id, ())) for c in completions}


def _deny_task_data(cfg: SandboxConfig, task: Task, *run_files: str | Path) -> SandboxConfig:
    """The files the gold answers were loaded from, and the run's own folders (the
    programs read, the results written), are added to what programs cannot read."""
    deny = default_deny_read() if cfg.deny_read is None else list(cfg.deny_read)
    deny += run_deny_read(*run_files)
    deny += task.data_paths()  # local task files or the data folder the golds came from
    return dataclasses.replace(cfg, deny_read=deny)


def grade_record(obj: dict, execution: dict, problem: Problem, task: Task) -> dict:

    ex = Execution(**execution)
    rec = dict(obj)
    rec.update(
        status=ex.status,
        value=ex.value,
        type=ex.type,
        error=ex.error,
        stdout_tail=ex.stdout_tail,
        ms=round(ex.ms, 3),
        correct=task.grade(ex, problem),
        gold_sha=task.gold_sha(problem),
    )
    return rec


def no_program_record(obj: dict) -> dict:
    """The graded record of a sample whose reply holds no program: not run, not correct."""
    rec = dict(obj)
    rec.update(
        status=NO_PROGRAM,
        value=None,
        type="",
        error=obj.get("extract_error") or "no program",
        stdout_tail="",
        ms=0.0,
        correct=False,
    )
    return rec


def _tally(rec: dict, statuses: dict[str, int], solved: set[str], seen: set[str]) -> None:
    statuses[rec.get("status", "?")] = statuses.get(rec.get("status", "?"), 0) + 1
    seen.add(rec["problem_id"])
    if rec.get("correct"):
        solved.add(rec["problem_id"])


def _progress(total: int, initial: int, enabled: bool):
    from ekt.progress import progress

    return progress(total, "verify", "prog", initial, enabled)
