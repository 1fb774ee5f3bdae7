"""Stage: turn verified samples into training pairs.

Every record is checked against the task's data loaded now: a verdict graded with another
gold answer, or a program sampled for another question (``ekt.data.provenance``), stops the
stage with the problems named. Only correct programs are kept; duplicates (same program
once comments and formatting are normalised away) are removed; questions that also appear in an
evaluation split are dropped (decontamination). ``keep="first"`` keeps the
first correct program per problem (lowest sample index), as the published
method did; ``keep="all"`` keeps every unique correct program.
"""

from __future__ import annotations

import ast
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ekt.data.provenance import changed_problems, stale_line
from ekt.data.tasks import Task
from ekt.errors import EktError
from ekt.records import KEEP, Problem, TrainPair, read_jsonl, write_jsonl_atomic
from ekt.verification.decontaminate import DEFAULT_NGRAM, Decontaminator
from ekt.verification.decontaminate import fold_question as _norm_question


def normalise_program(program: str) -> str:
    """A canonical form for deduplication: the unparsed AST (drops comments and layout)."""
    try:
        return ast.unparse(ast.parse(program))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "\n".join(line.rstrip() for line in program.strip().splitlines())


def select_pairs(
    records: Iterable[dict],
    problems: dict[str, Problem],
    keep: str = "first",
    exclude_questions: frozenset[str] | Callable[[str], bool] = frozenset(),
    source: str = "teacher",
) -> list[TrainPair]:
    """Pure selection: correct, unique, uncontaminated; ordered by problem, then sample.

    ``exclude_questions``: normalised questions to drop, or a predicate (a
    :class:`~ekt.verification.decontaminate.Decontaminator`) that is true for a question to drop.
    """
    if callable(exclude_questions):
        contaminated = exclude_questions
    else:
        frozen = exclude_questions
        contaminated = lambda q: _norm_question(q) in frozen  # noqa: E731
    if keep not in KEEP:
        raise EktError(f"--keep must be one of {', '.join(KEEP)}, got {keep!r}")
    correct = [r for r in records if r.get("correct") is True]
    correct.sort(key=lambda r: (_order(r["problem_id"]), int(r.get("sample_idx", 0))))
    pairs: list[TrainPair] = []
    seen: set[tuple[str, str]] = set()
    taken: set[str] = set()
    for r in correct:
        pid = r["problem_id"]
        problem = problems[pid]
        if contaminated(problem.question):
            continue
        if keep == "first" and pid in taken:
            continue
        key = (pid, normalise_program(r["program"]))
        if key in seen:
            continue
        seen.add(key)
        taken.add(pid)
        pairs.append(TrainPair(pid, problem.question, r["program"], source))
    return pairs


def _check_execution(obj: dict, where: str) -> None:
    for name in ("problem_id", "program", "correct"):
        if name not in obj:
            raise EktError(f"{where}: missing field {name!r} (is this `ekt verify` output?)")
    for name, kind, words in (
        ("problem_id", str, "a string"),
        ("program", str, "a string"),
        ("correct", bool, "true or false"),
    ):
        if not isinstance(obj[name], kind):
            raise EktError(f"{where}: field {name!r} must be {words}, got {obj[name]!r:.40}")
    if "sample_idx" in obj and (
        not isinstance(obj["sample_idx"], int) or isinstance(obj["sample_idx"], bool)
    ):
        raise EktError(f"{where}: field 'sample_idx' must be an integer")


def _order(pid: str) -> tuple:
    head, _, idx = pid.rpartition("/")
    return (head, int(idx)) if idx.isdigit() else (head, -1, idx)


@dataclass
class FilterSummary:
    records: int
    correct: int
    problems_solved: int
    pairs: int
    dropped_contaminated: int
    seconds: float
    # training questions (with a correct program) that overlap each evaluation set
    contaminated: dict[str, int] = field(default_factory=dict)
    no_program: int = 0  # samples whose reply held no program (extraction failed)

    def line(self) -> str:
        msg = (
            f"filter: {self.records} verified samples ({self.no_program} without a program, "
            f"{self.records - self.no_program - self.correct} wrong), {self.correct} correct, "
            f"{self.problems_solved} problems solved -> {self.pairs} pairs kept"
        )
        if self.dropped_contaminated:
            per_set = ", ".join(f"{k} {v}" for k, v in self.contaminated.items() if v)
            msg += f" ({self.dropped_contaminated} contaminated dropped"
            msg += f": questions overlapping {per_set})" if per_set else ")"
        if not self.pairs:
            msg += " — no correct programs, nothing to train on"
            if 2 * self.no_program > self.records:
                msg += (
                    " (most samples held no program: check the prompt format; "
                    "chat models need --prompt-format chat)"
                )
        return msg + f"; {self.seconds:.1f}s"


def filter_stage(
    executions: str | Path | list[str | Path],
    out: str | Path,
    task: Task,
    keep: str = "first",
    decontaminate: str | None = "test",
    source: str = "teacher",
    require_records: bool = False,
    against: Mapping[str, Iterable[str]] | None = None,
    ngram: int = DEFAULT_NGRAM,
) -> FilterSummary:
    """Read ``ekt verify`` output, write the selected pairs to ``out`` (atomically).

    Decontamination drops every training question that shares an ``ngram``-word run with the
    task's own ``decontaminate`` split or with any question set in ``against`` (name ->
    questions: the run's evaluation tasks); see :mod:`ekt.verification.decontaminate`. A
    procedural task's questions share their template's words, so there only a whole question
    counts as an overlap.

    ``require_records``: an input without any record is an error (the CLI), not
    an empty result (a run whose method found nothing to verify).
    """
    t0 = time.time()
    paths = executions if isinstance(executions, list) else [executions]
    records = []
    where_of: dict[int, str] = {}
    for path in paths:
        first_line: dict[tuple[str, object], int] = {}
        for line, obj in read_jsonl(path):
            where = f"{path}:{line}"
            _check_execution(obj, where)
            if "sample_idx" in obj:  # a sample verified twice: a concatenated or corrupt file
                key = (obj["problem_id"], obj["sample_idx"])
                if key in first_line:
                    raise EktError(
                        f"{where}: duplicate record for {key[0]} sample {key[1]} "
                        f"(first at line {first_line[key]})"
                    )
                first_line[key] = line
            where_of[id(obj)] = where
            records.append(obj)
    if require_records and not records:
        raise EktError(f"{', '.join(map(str, paths))}: no verified samples (empty file)")
    problems = task.by_id({r["problem_id"] for r in records})
    for r in records:
        if r["problem_id"] not in problems:
            raise EktError(
                f"{where_of[id(r)]}: unknown problem id {r['problem_id']!r} for task {task.name}"
            )
    changed = changed_problems(records, problems, task.answer_format)
    if changed:  # a verdict graded with another gold answer (or a program for another question)
        raise EktError(stale_line(
            changed, f"{', '.join(map(str, paths))} was graded",
            "rerun `ekt verify` with the same --programs and --out (it grades them again; a "
            "changed question needs new samples: `ekt generate --force`), or use a new folder",
        ))  # fmt: skip
    sets: dict[str, Iterable[str]] = {}
    if decontaminate:
        sets[f"{task.name}/{decontaminate}"] = [p.question for p in task.load_file(decontaminate)]
    sets.update(against or {})
    # a procedural task's questions share their template's words: only an equal question counts
    index = Decontaminator(sets, ngram, exact=task.spec.is_procedural)
    pairs = select_pairs(records, problems, keep, index, source)
    clean = select_pairs(records, problems, keep, frozenset(), source)
    write_jsonl_atomic(out, pairs)
    solved = {r["problem_id"] for r in records if r.get("correct") is True}
    overlap = {name: 0 for name in sets}
    for pid in solved:
        for name in index.hits(problems[pid].question):
            overlap[name] += 1
    return FilterSummary(
        records=len(records),
        correct=sum(r.get("correct") is True for r in records),
        problems_solved=len(solved),
        pairs=len(pairs),
        dropped_contaminated=len(clean) - len(pairs),
        seconds=time.time() - t0,
        contaminated=overlap,
        no_program=sum(r.get("status") == "no_program" for r in records),
    )
