"""Provenance: the content hashes that tie every record to the data it was made from.

Three hashes, all pure functions of the problems a task loads (whatever the source: a task
file's local files, a data folder, a generator's seed or the hub):

- ``question_sha``: a sample's question (``ekt generate`` stamps it on every sample, since
  the prompt showed that question). A changed question makes the sample stale: it must be
  sampled again.
- ``gold_sha``: the gold answer (and the answer format that grades it) a verdict was
  graded with (``ekt verify`` stamps it on every graded record). A changed gold answer
  makes the verdict stale: ``verify`` grades it again from the value the program returned.
- ``data_sha``: one split's whole content (ids, questions, gold answers), for manifests,
  ``generate.json`` and ``scores.json``.

:func:`changed_problems` compares records with the problems loaded now; :func:`stale_line`
is the one-line message naming what changed and the way out.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence

from ekt.records import Problem

SHORT = 16  # hex digits of a per-record hash


def _sha(obj: object) -> str:
    text = json.dumps(obj, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def question_sha(question: str) -> str:
    """The hash of a question as a prompt shows it."""
    return _sha(question)[:SHORT]


def gold_sha(answer: object, answer_format: str) -> str:
    """The hash of a gold answer as the grader sees it (its format included)."""
    return _sha([answer_format, answer])[:SHORT]


def data_sha(problems: Sequence[Problem], gold: bool = True) -> str:
    """The content hash of a list of problems: ids, questions and (``gold``) answers, in order."""
    rows = [[p.id, p.question, p.answer] if gold else [p.id, p.question] for p in problems]
    return _sha(rows)


def changed_problems(
    records: Iterable[dict], problems: Mapping[str, Problem], answer_format: str
) -> dict[str, str]:
    """``problem id -> what changed`` ("question", "gold answer") for records whose stored
    hashes differ from the problems loaded now. A record without a hash is not checked (it
    was written by hand or by an older ekt); one whose problem is gone is reported as
    "removed"."""
    out: dict[str, str] = {}
    golds: dict[str, str] = {}
    questions: dict[str, str] = {}
    for r in records:
        pid = r.get("problem_id")
        if not isinstance(pid, str) or pid in out:
            continue
        q, g = r.get("question_sha"), r.get("gold_sha")
        if not q and not g:
            continue
        p = problems.get(pid)
        if p is None:
            out[pid] = "removed"
            continue
        if q and q != questions.setdefault(pid, question_sha(p.question)):
            out[pid] = "question"
        elif g and g != golds.setdefault(pid, gold_sha(p.answer, answer_format)):
            out[pid] = "gold answer"
    return out


def _order(pid: str) -> tuple:
    head, _, idx = pid.rpartition("/")
    return (head, int(idx), "") if idx.isdigit() else (head, -1, idx)


def stale_line(changed: Mapping[str, str], since: str, way_out: str, shown: int = 5) -> str:
    """One line: how many problems changed ``since`` what, the first few by id with what
    changed, and ``way_out``."""
    ids = sorted(changed, key=_order)
    named = ", ".join(f"{pid} ({changed[pid]})" for pid in ids[:shown])
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    n = len(ids)
    return (f"the task's data changed since {since}: {n} problem{'s' if n != 1 else ''} "
            f"changed: {named}{more}; {way_out}")  # fmt: skip


__all__ = [
    "question_sha",
    "gold_sha",
    "data_sha",
    "changed_problems",
    "stale_line",
]
