"""Loading a run folder into the report's model: what ``ekt report`` knows about a run.

Everything comes from the records a run leaves on disk (no dataset is read):

- ``eval/<label>/problems.jsonl``: per question its text, gold answer, n, c,
  greedy and majority outcome: every figure, its interval, the paired
  differences against the reference method and the pass@k curves;
- ``results.json``, ``manifest.json``, ``config.yaml``: rows, provenance;
- ``*/executions.jsonl`` and the train-pair files: yields.

A folder built stage by stage with the README's commands (``ekt generate --out DIR/teacher``,
``ekt verify --out DIR/executions.jsonl``, ``ekt filter``, ``ekt train``, ``ekt evaluate
--out DIR/ANY``) is read too: its evaluations are found wherever ``scores.json`` and
``problems.jsonl`` lie, its yield from ``executions.jsonl`` at its root, and the teacher and
student from ``generate.json`` and ``train_summary.json``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ekt.errors import EktError
from ekt.evaluation.stats import (
    RESAMPLES,
    SEED,
    SMALL_SAMPLE,
    Interval,
    metric_intervals,
    paired_intervals,
    pass_at_k_curve,
    sample_notes,
)
from ekt.layout import RunLayout
from ekt.records import read_jsonl

REFERENCE = "ekt"  # paired differences are taken against this method


@dataclass
class EvalData:
    """One evaluated model of a run: its results row and per-question records."""

    label: str
    method: str
    model: str
    prompt: str
    row: dict
    problems: list[dict]
    dir: Path
    intervals: dict[str, Interval] = field(default_factory=dict)
    curve: list[Interval] = field(default_factory=list)
    paired: dict[str, Interval] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class RunData:
    dir: Path
    name: str
    results: dict
    manifest: dict
    config: dict
    config_text: str
    evals: list[EvalData]
    skipped: list[dict]
    ks: list[int]
    reference: EvalData | None = None
    notes: list[str] = field(default_factory=list)
    resamples: int = RESAMPLES
    seed: int = SEED


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise EktError(f"{path}: malformed JSON ({e.msg}, line {e.lineno})") from None


def records(path: Path) -> list[dict]:
    return [obj for _, obj in read_jsonl(path)] if path.is_file() else []


def _method_of(label: str) -> str:
    if label == "teacher":
        return "few-shot"
    if label == "student-base":
        return "none"
    return label.removeprefix("student-")


def _stage_evals(d: Path, depth: int = 3) -> list[Path]:
    """Evaluation folders (``scores.json`` beside ``problems.jsonl``) anywhere under ``d`` but
    ``eval/`` (read already) and a matrix's cells, at most ``depth`` folders down."""
    out = []
    for n in range(1, depth + 1):
        for scores in sorted(d.glob("/".join(["*"] * n) + "/scores.json")):
            folder = scores.parent
            top = folder.relative_to(d).parts[0]
            if top not in ("eval", "pairs", "shared") and (folder / "problems.jsonl").is_file():
                out.append(folder)
    return out


def _method_by(settings: dict) -> str:
    """The method of an evaluation made by ``ekt evaluate``: few-shot for the teacher prompt,
    the training method of a student folder (its train_summary.json), else none."""
    if settings.get("prompt") == "teacher":
        return "few-shot"
    summary = Path(str(settings.get("model", ""))) / "train_summary.json"
    if summary.is_file():
        try:
            return "kd" if "distill" in read_json(summary) else "ekt"
        except EktError:
            return "ekt"
    return "none"


def _stage_models(d: Path) -> dict[str, str]:
    """``teacher``/``student`` of a folder built stage by stage: the model ``ekt generate``
    sampled with the teacher prompt, and the base model ``ekt train`` fine-tuned."""
    found: dict[str, str] = {}
    for path in sorted(d.glob("*/generate.json")) + sorted(d.glob("*/*/generate.json")):
        try:
            job = read_json(path)
        except EktError:
            continue
        if isinstance(job, dict) and job.get("prompt") == "teacher" and job.get("model"):
            if path.parent.relative_to(d).parts[0] not in ("eval", "pairs", "shared"):
                found.setdefault("teacher", str(job["model"]))
    for path in sorted(d.glob("*/train_summary.json")) + sorted(d.glob("*/*/train_summary.json")):
        try:
            summary = read_json(path)
        except EktError:
            continue
        if isinstance(summary, dict) and summary.get("model"):
            found.setdefault("student", str(summary["model"]))
    return found


def load_run(run_dir: str | Path) -> RunData:
    """Read what a run folder holds; missing parts (a partial run) are simply absent."""
    d = Path(run_dir)
    if not d.is_dir():
        raise EktError(f"{d}: run folder not found")
    lay = RunLayout(d)
    results = read_json(lay.results) if lay.results.is_file() else {}
    manifest = read_json(lay.manifest) if lay.manifest.is_file() else {}
    config_text = lay.config.read_text() if lay.config.is_file() else ""
    import yaml

    try:
        config = (yaml.safe_load(config_text) or {}) if config_text else {}
    except yaml.YAMLError:  # a hand-edited config that no longer parses: show it, use none
        config = {}
    if not isinstance(config, dict):
        config = {}
    rows = list(results.get("rows", []))
    labels = {r.get("label") for r in rows}
    folders = {str(r.get("label")): lay.eval(str(r.get("label"))).dir for r in rows}
    found = [(p.parent.name, p.parent) for p in sorted(lay.evals.glob("*/problems.jsonl"))]
    if not results:  # built stage by stage: evaluations wherever `ekt evaluate --out` put them
        found += [(str(f.relative_to(d)), f) for f in _stage_evals(d)]
    for label, folder in found:
        if label not in labels:  # evaluated but not in results.json (a run cut short)
            scores = folder / "scores.json"
            s = read_json(scores) if scores.is_file() else {}
            st = s.get("settings", {})
            rows.append(
                {
                    "label": label,
                    "model": st.get("model", ""),
                    "method": _method_of(label) if folder.parent == lay.evals else _method_by(st),
                    "prompt": st.get("prompt", ""),
                    **s,
                }
            )
            labels.add(label)
            folders[label] = folder
    if not results and not config.get("teacher"):  # who taught whom, from the stages' files
        results = {**results, **_stage_models(d)}
    evals, skipped = [], []
    for r in rows:
        label = r.get("label", "")
        probs = records(folders[label] / "problems.jsonl") if label else []
        if r.get("skipped") or not probs:
            skipped.append({**r, "skipped": r.get("skipped") or "no evaluation records"})
            continue
        evals.append(
            EvalData(
                label=label,
                method=str(r.get("method") or _method_of(label)),
                model=str(r.get("model", "")),
                prompt=str(r.get("prompt", "")),
                row=r,
                problems=probs,
                dir=folders[label],
            )
        )
    ev = results.get("eval") or config.get("eval") or {}
    ks = [int(k) for k in ev.get("k", [])]
    if not ks:
        for e in evals:
            ks = [int(k) for k in e.row.get("settings", {}).get("eval", {}).get("k", [])]
            if ks:
                break
    if not ks:
        ks = [1]
    name = str(results.get("name") or config.get("name") or d.name)
    return RunData(d, name, results, manifest, config, config_text, evals, skipped, ks)


def analyse(
    run: RunData,
    reference: str = REFERENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    curves: bool = True,
) -> RunData:
    """Fill in intervals, pass@k curves, paired differences and notes (in place)."""
    run.resamples, run.seed = resamples, seed
    for e in run.evals:
        nmin = min(int(p["n"]) for p in e.problems)
        ks = [k for k in run.ks if k <= nmin]
        e.intervals = metric_intervals(e.problems, ks, resamples, seed)
        if curves:
            e.curve = pass_at_k_curve(e.problems, resamples, seed)
        q = len(e.problems)
        by_note: dict[str, list[str]] = {}
        for key, iv in e.intervals.items():
            for note in sample_notes(q, round(iv.estimate * q, 6)):
                if not note.startswith("small sample"):  # said once per run below
                    by_note.setdefault(note, []).append(key)
        e.notes = [f"{', '.join(keys)}: {note}" for note, keys in by_note.items()]
    run.reference = next((e for e in run.evals if e.method == reference), None)
    run.notes = []
    sizes = sorted({len(e.problems) for e in run.evals})
    if sizes and sizes[0] < SMALL_SAMPLE:
        run.notes.extend(sample_notes(sizes[0]))
    if len(sizes) > 1:
        run.notes.append(
            f"models were evaluated on different numbers of questions ({sizes}); "
            "paired differences use the questions both answered"
        )
    if run.reference is None:
        why = next((s.get("skipped") for s in run.skipped if s.get("method") == reference), None)
        run.notes.append(
            f"no evaluated {reference!r} model in this run"
            + (f" ({why})" if why else "")
            + "; paired differences need one"
        )
    else:
        ref = run.reference
        for e in run.evals:
            if e is ref:
                continue
            e.paired = paired_intervals(e.problems, ref.problems, run.ks, resamples, seed)
    return run


@dataclass
class Yield:
    source: str
    path: Path
    questions: int
    samples: int
    statuses: Counter
    correct: int
    solved: int
    per_question: Counter  # correct count -> questions
    errors: Counter
    pairs: int | None


SOURCES = {
    "teacher": "teacher's few-shot programs",
    "supervised": "reference programs from GSM8K calculator annotations",
}


def load_yields(run_dir: Path) -> list[Yield]:
    out = []
    root = run_dir / "executions.jsonl"  # a folder built stage by stage: the teacher's verdicts
    found = sorted(run_dir.glob("*/executions.jsonl"))
    if root.is_file() and not (run_dir / "teacher" / "executions.jsonl").is_file():
        found.insert(0, root)
    for ex in found:
        recs = records(ex)
        by_q: dict[str, int] = {}
        for r in recs:
            by_q[r.get("problem_id", "?")] = by_q.get(r.get("problem_id", "?"), 0) + bool(
                r.get("correct")
            )
        source = "teacher" if ex == root else ex.parent.name
        # the teacher's pairs are the run's; another source keeps its pairs beside them
        pairs_file = (
            RunLayout(run_dir).train_pairs
            if source == "teacher"
            else ex.parent / "train_pairs.jsonl"
        )
        out.append(
            Yield(
                source=source,
                path=ex,
                questions=len(by_q),
                samples=len(recs),
                statuses=Counter(str(r.get("status", "?")) for r in recs),
                correct=sum(bool(r.get("correct")) for r in recs),
                solved=sum(c > 0 for c in by_q.values()),
                per_question=Counter(by_q.values()),
                errors=Counter(
                    str(r.get("type") or r.get("status")) for r in recs if r.get("status") != "ok"
                ),
                pairs=len(records(pairs_file)) if pairs_file.is_file() else None,
            )
        )
    return out
