"""report.html: the report model (``ekt.report.load``) rendered through Jinja2 templates.

Python here only decides *what* the page shows (which figures, which
programs, which charts); the markup is in ``templates/*.j2`` and every value is
escaped there by Jinja2's autoescaping. The page needs no network: CSS and a
few lines of JS are inline, charts are inline SVG (``ekt.report.charts``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from markupsafe import Markup

from ekt.evaluation.stats import SMALL_SAMPLE
from ekt.layout import EvalLayout, RunLayout
from ekt.report.charts import Axes, Series, bar_chart, interval_chart, line_chart
from ekt.report.claims import run_claims
from ekt.report.load import SOURCES, EvalData, RunData, load_yields, read_json, records
from ekt.report.tables import (
    best_student_line,
    claim_columns,
    claim_sides,
    claim_verdict,
    cost_rows,
    pct_interval,
)
from ekt.report.templating import EXTRA_COLORS, color, fmt, render

DRILL_QUESTIONS = 200  # questions whose programs are embedded (all get a summary line)
DRILL_SAMPLES = 4  # sampled programs shown per model and question

NAV = [
    ("summary", "Summary"),
    ("claims", "Claims"),
    ("results", "Results"),
    ("curves", "pass@k"),
    ("yields", "Yields"),
    ("rounds", "Expert iteration"),
    ("training", "Training"),
    ("drill", "Questions"),
    ("manifest", "Manifest"),
]


def chain(run: RunData) -> str:
    r = run.results
    teacher = r.get("teacher") or run.config.get("teacher") or "?"
    student = r.get("student") or run.config.get("student") or "?"
    return f"{teacher} -> {student}"


def model_notes(run: RunData) -> list[str]:
    """Per-model notes, models with the same note merged into one line."""
    merged: dict[str, list[str]] = {}
    for e in run.evals:
        for n in e.notes:
            merged.setdefault(n, []).append(e.label)
    return [f"{', '.join(labels)}: {n}" for n, labels in merged.items()]


def _scalar(v: Any) -> bool:
    return isinstance(v, str | int | float | bool) or v is None


def _maj_key(e: EvalData) -> str | None:
    return next((k for k in e.intervals if k.startswith("maj@")), None)


def _label_model(e: EvalData) -> str:
    return f"{e.model} (teacher)" if e.label == "teacher" else e.model


def _summary(run: RunData) -> list[dict]:
    lines: list[dict] = []
    ref = run.reference
    key = f"pass@{max(run.ks)}"
    if ref is not None and key in ref.intervals:
        lines.append(
            {
                "kind": "ref",
                "method": ref.method,
                "key": key,
                "iv": ref.intervals[key],
                "greedy": ref.intervals.get("greedy_pass@1"),
            }
        )
        for e in run.evals:
            if e is ref or key not in e.paired:
                continue
            d = e.paired[key]
            if d.low > 0:
                verdict = f"better than {ref.method}"
            elif d.high < 0:
                verdict = f"worse than {ref.method}"
            else:
                verdict = f"not distinguishable from {ref.method} at this sample size"
            lines.append(
                {
                    "kind": "cmp",
                    "method": e.method,
                    "label": e.label,
                    "key": key,
                    "iv": e.intervals.get(key),
                    "diff": d,
                    "verdict": verdict,
                }
            )
        return lines
    best = max(
        (e for e in run.evals if key in e.intervals),
        key=lambda e: e.intervals[key].estimate,
        default=None,
    )
    if best is not None and best.intervals[key].estimate == 0:
        lines.append({"kind": "none", "key": key, "models": len(run.evals)})
    elif best is not None:
        lines.append(
            {
                "kind": "best",
                "method": best.method,
                "label": best.label,
                "key": key,
                "iv": best.intervals[key],
            }
        )
    return lines


def _forest(run: RunData, i: int) -> list[Markup]:
    kmax = f"pass@{max(run.ks)}"
    charts = [
        interval_chart(
            [
                (f"{e.method} ({e.label})", e.intervals[m], color(e.method))
                for e in run.evals
                if m in e.intervals
            ],
            f"{run.name}: {m} with 95% intervals",
            chart_id=f"ci-{i}-{m}",
        )
        for m in ("greedy_pass@1", kmax)
    ]
    ref = run.reference
    if ref:
        items = [
            (f"{e.method} ({e.label})", e.paired[kmax], color(e.method))
            for e in run.evals
            if kmax in e.paired
        ]
        charts.append(
            interval_chart(
                items,
                f"{run.name}: {kmax}, row − {ref.method} (paired)",
                True,
                chart_id=f"diff-{i}",
            )
        )
    return charts


def _curve(run: RunData, i: int) -> Markup:
    series = []
    for e in run.evals:
        if not e.curve:
            continue
        ks = list(range(1, len(e.curve) + 1))
        series.append(
            Series(
                f"{e.method} ({e.label})",
                ks,
                [iv.estimate for iv in e.curve],
                color(e.method),
                [iv.low for iv in e.curve],
                [iv.high for iv in e.curve],
                [f"{e.label} pass@{k}: {pct_interval(iv.as_dict())}" for k, iv in zip(ks, e.curve)],
            )
        )
    nmax = max((len(s.xs) for s in series), default=0)
    axes = Axes(f"{run.name}: pass@k (shaded: 95% interval)", "k (samples per question)",
                "pass@k", chart_id=f"passk-{i}")  # fmt: skip
    return line_chart(series, axes, log_x=nmax > 10, pct=True)


def _yield_charts(run: RunData, ys: list, i: int) -> list[Markup]:
    charts = []
    for y in ys:
        if y.source != "teacher" or not y.per_question:
            continue
        top = max(y.per_question)
        vals = [(str(c), float(y.per_question.get(c, 0))) for c in range(0, top + 1)]
        charts.append(
            bar_chart(
                vals,
                Axes(
                    f"{run.name}: teacher questions by number of correct programs",
                    "correct programs for the question",
                    "questions",
                    chart_id=f"yield-{i}",
                ),
            )
        )
    return charts


def _rounds(run: RunData, i: int) -> list[dict]:
    files = sorted(
        {*run.dir.glob("students/*/rounds.jsonl"), *run.dir.glob("*/rounds.jsonl")}
        | set(run.dir.glob("students/*/*/rounds.jsonl"))
    )
    cards = []
    for j, f in enumerate(files):
        recs = [r for r in records(f) if isinstance(r, dict)]
        keys: list[str] = []
        for r in recs:
            keys += [k for k, v in r.items() if _scalar(v) and k not in keys]
        xs = [float(r.get("round", n + 1)) for n, r in enumerate(recs)]
        rate_keys = [
            k
            for k in keys
            if k != "round"
            and all(
                isinstance(r.get(k), int | float)
                and not isinstance(r.get(k), bool)
                and 0 <= r.get(k) <= 1
                for r in recs
            )
        ]
        series = [
            Series(k, xs, [float(r[k]) for r in recs], EXTRA_COLORS[n % 6])
            for n, k in enumerate(rate_keys)
        ]
        chart = (
            line_chart(series, Axes("rates by round", "round", "rate", f"rounds-{i}-{j}"), pct=True)
            if series and recs
            else Markup("")
        )
        cards.append(
            {
                "run": run.name,
                "file": str(f.relative_to(run.dir)),
                "chart": chart,
                "columns": keys,
                "rows": [[fmt(r.get(k, "")) for k in keys] for r in recs],
            }
        )
    return cards


def _rewards(run: RunData, i: int) -> Markup:
    """GRPO's mean reward per step, from its training log (TRL's ``reward``), or nothing."""
    series = []
    for n, log in enumerate(sorted(run.dir.glob("students/grpo/train_log.jsonl"))):
        pts = [(float(r["step"]), float(r["reward"])) for r in records(log)
               if isinstance(r.get("reward"), int | float) and "step" in r]  # fmt: skip
        if pts:
            series.append(Series("grpo", [p[0] for p in pts], [p[1] for p in pts],
                                 color("grpo") if n == 0 else EXTRA_COLORS[n % 6]))  # fmt: skip
    if not series:
        return Markup("")
    return line_chart(series, Axes(f"{run.name}: GRPO mean reward per step", "step",
                                   "mean reward", f"reward-{i}"))  # fmt: skip


def _training(run: RunData, i: int) -> tuple[Markup, list[list[str]]]:
    series = []
    for n, log in enumerate(sorted(run.dir.glob("students/**/train_log.jsonl"))):
        name = str(log.parent.relative_to(RunLayout(run.dir).students))
        method = name.split("/")[0]
        pts = [
            (float(r["step"]), float(r["loss"]))
            for r in records(log)
            if isinstance(r.get("loss"), int | float) and "step" in r
        ]
        if pts:
            c = color(method) if name == method else EXTRA_COLORS[n % 6]
            series.append(Series(name, [p[0] for p in pts], [p[1] for p in pts], c))
    axes = Axes(f"{run.name}: training loss", "optimizer step", "loss", f"loss-{i}")
    chart = line_chart(series, axes, y_zero=False)
    rows = []
    for s in sorted(run.dir.glob("students/**/train_summary.json")):
        t = read_json(s)
        secs = t.get("seconds")
        rows.append(
            [
                str(s.parent.relative_to(RunLayout(run.dir).students)),
                str(t.get("pairs", "—")),
                str(t.get("steps", "—")),
                fmt(t.get("final_loss", "—")),
                fmt(t.get("train_loss", "—")),
                str(t.get("tokens_trained", "—")),
                f"{secs:.0f}" if isinstance(secs, int | float) else "—",
                str(t.get("precision", "—")),
            ]
        )
    return chart, rows


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        out: list[tuple[str, Any]] = []
        for k, v in obj.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(obj, list) and not all(_scalar(v) for v in obj):
        return [(prefix, json.dumps(obj))]
    return [(prefix, obj)]


def _solved(p: dict) -> bool:
    return bool(p.get("greedy_correct")) or int(p.get("c", 0)) > 0


def _drill(run: RunData, index: int, max_questions: int, max_samples: int) -> dict:
    order: list[str] = []
    per: dict[str, dict[str, dict]] = {}
    for e in run.evals:
        for p in e.problems:
            if p["problem_id"] not in per:
                order.append(p["problem_id"])
                per[p["problem_id"]] = {}
            per[p["problem_id"]][e.label] = p
    # Programs go in for the questions where models disagree first, then in order.
    split = {q: len({_solved(p) for p in per[q].values()}) > 1 for q in order}
    chosen = [q for q in order if split[q]] + [q for q in order if not split[q]]
    chosen_set = set(chosen[:max_questions])
    programs: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for e in run.evals:
        for kind in ("greedy", "sampled"):
            for r in records(EvalLayout(e.dir).executions(kind)):
                if r.get("problem_id") in chosen_set:
                    programs.setdefault((e.label, r["problem_id"]), {}).setdefault(kind, []).append(
                        r
                    )
    questions = []
    for pid in order:
        rows = per[pid]
        first = next(iter(rows.values()))
        text = next((p["question"] for p in rows.values() if p.get("question")), "")
        marks, models = [], []
        for e in run.evals:
            p = rows.get(e.label)
            if p is None:
                continue
            g = p.get("greedy_correct")
            marks.append(
                {
                    "label": e.label,
                    "method": e.method,
                    "solved": _solved(p),
                    "greedy": "" if g is None else ("✓" if g else "✗"),
                    "c": p["c"],
                    "n": p["n"],
                }
            )
            if pid not in chosen_set:
                continue
            recs = programs.get((e.label, pid), {})
            sampled = sorted(recs.get("sampled", []), key=lambda r: r.get("sample_idx", 0))
            shown = sampled[:max_samples]
            first_ok = next((r for r in sampled if r.get("correct")), None)
            if first_ok is not None and first_ok not in shown:
                shown = shown[: max(0, max_samples - 1)] + [first_ok]
            models.append(
                {
                    "label": e.label,
                    "method": e.method,
                    "c": p["c"],
                    "n": p["n"],
                    "majority": p.get("majority_answer"),
                    "majority_correct": p.get("majority_correct"),
                    "greedy": recs.get("greedy", [])[:1],
                    "shown": shown,
                    "sampled": len(sampled),
                }
            )
        questions.append(
            {
                "id": pid,
                "text": text,
                "gold": first.get("gold"),
                "marks": marks,
                "models": models if pid in chosen_set else None,
                "solved": any(_solved(p) for p in rows.values()),
                "disagree": split[pid],
            }
        )
    return {
        "index": index,
        "name": run.name,
        "questions": questions,
        "embedded": len(chosen_set),
        "limit": max_questions,
    }


def _train_drill(run: RunData, index: int, max_questions: int, max_samples: int) -> dict | None:
    """The training questions' drill-down: per question, each source's programs (the teacher's
    samples, the reference programs...) with their sandbox verdicts, from the executions files
    the yields table reads; the question text from the training pairs where one was kept.
    None: the run has no verdicts on training questions."""
    sources = [(y.source, y.path) for y in load_yields(run.dir)]
    if not sources:
        return None
    texts: dict[str, str] = {}
    for pairs in [RunLayout(run.dir).train_pairs, *sorted(run.dir.glob("*/train_pairs.jsonl"))]:
        for r in records(pairs):
            texts.setdefault(str(r.get("problem_id")), str(r.get("question") or ""))
    order: list[str] = []
    per: dict[str, dict[str, list[dict]]] = {}
    for source, path in sources:
        for r in records(path):
            pid = str(r.get("problem_id", "?"))
            if pid not in per:
                order.append(pid)
                per[pid] = {}
            per[pid].setdefault(source, []).append(r)
    # unsolved questions first (what the filter could not keep), then in order
    solved = {q: any(r.get("correct") for rs in per[q].values() for r in rs) for q in order}
    chosen = set(([q for q in order if not solved[q]] + [q for q in order if solved[q]])[
        :max_questions])  # fmt: skip
    questions = []
    for pid in order:
        marks, models = [], []
        for source, recs in per[pid].items():
            recs = sorted(recs, key=lambda r: r.get("sample_idx", 0))
            c = sum(bool(r.get("correct")) for r in recs)
            marks.append({"label": source, "method": source, "solved": c > 0, "greedy": "",
                          "c": c, "n": len(recs)})  # fmt: skip
            shown = recs[:max_samples]
            first_ok = next((r for r in recs if r.get("correct")), None)
            if first_ok is not None and first_ok not in shown:
                shown = shown[: max(0, max_samples - 1)] + [first_ok]
            models.append({"label": SOURCES.get(source, source), "method": source, "c": c,
                           "n": len(recs), "majority": None, "majority_correct": None,
                           "greedy": [], "shown": shown, "sampled": len(recs)})  # fmt: skip
        questions.append({"id": pid, "text": texts.get(pid, ""), "gold": None, "marks": marks,
                          "models": models if pid in chosen else None, "solved": solved[pid],
                          "disagree": len({m["solved"] for m in marks}) > 1})  # fmt: skip
    return {"index": f"{index}-train", "name": f"{run.name}: training questions",
            "questions": questions, "embedded": len(chosen), "limit": max_questions,
            "train": True}  # fmt: skip


def _run_view(run: RunData, i: int) -> dict:
    """What the templates show of one run."""
    cols = ["greedy_pass@1"] + [f"pass@{k}" for k in sorted(run.ks)]
    evals = []
    for e in run.evals:
        evals.append(
            {
                "label": e.label,
                "method": e.method,
                "model_label": _label_model(e),
                "row": e.row,
                "problems": e.problems,
                "intervals": e.intervals,
                "maj_key": _maj_key(e),
                "paired": e.paired,
                "paired_questions": next(iter(e.paired.values())).questions if e.paired else 0,
            }
        )
    paired = [e for e in run.evals if e.paired]
    keys: list[str] = []
    if run.reference and paired:
        keys = [c for c in cols if any(c in e.paired for e in paired)]
        mk = next((k for e in paired for k in e.paired if k.startswith("maj@")), None)
        keys += [mk] if mk else []
    m = dict(run.manifest)
    stage = m.pop("stage_seconds", None) or run.results.get("stage_seconds") or {}
    ys = load_yields(run.dir)
    loss_chart, train_rows = _training(run, i)
    return {
        "name": run.name,
        "note": run.results.get("note"),
        "dir": str(run.dir),
        "chain": chain(run),
        "arrow_chain": chain(run).replace("->", "→"),
        "summary": _summary(run),
        "claims": run_claims(run),
        "all_notes": run.notes + model_notes(run),
        "evals": evals,
        "skipped": run.skipped,
        "reference": run.reference,
        "paired_keys": keys,
        "forest": _forest(run, i),
        "curve_chart": _curve(run, i),
        "yields": ys,
        "yield_charts": _yield_charts(run, ys, i),
        "rounds": _rounds(run, i),
        "loss_chart": loss_chart,
        "train_rows": train_rows,
        "reward_chart": _rewards(run, i),
        "cost_table": cost_rows(run.results),
        "manifest_rows": [(k, fmt(v)) for k, v in _flatten(m)],
        "stage_rows": [(k, fmt(v)) for k, v in stage.items()],
        "stage_total": sum(v for v in stage.values() if isinstance(v, int | float)),
        "config_text": run.config_text,
        "transfer": _transfer(run),
        "contaminated": (run.results.get("stages") or {}).get("filter", {}).get("contaminated"),
    }


def _transfer(run: RunData) -> dict | None:
    """``eval.tasks``: one column group per task (the run's own first), estimates only."""
    rows = [r for r in run.results.get("rows", []) if r.get("tasks")]
    if not rows:
        return None
    ev = run.results.get("eval") or {}
    k, maj = max(ev.get("k") or [1]), f"maj@{ev.get('n', 'n')}"
    tasks = [str(run.results.get("task") or "task")]
    tasks += list(dict.fromkeys(t for r in rows for t in r["tasks"]))
    cols = ["greedy_pass@1", f"pass@{k}", maj]

    def cell(scores: dict, c: str) -> str:
        v = scores.get(c)
        return f"{100 * v:.1f}" if isinstance(v, int | float) else "—"

    body = []
    for r in rows:
        groups = [r, *(r["tasks"].get(t, {}) for t in tasks[1:])]
        body.append({"model": str(r.get("model", "")), "method": str(r.get("method", "")),
                     "cells": [cell(g, c) for g in groups for c in cols]})  # fmt: skip
    return {"tasks": tasks, "cols": ["greedy pass@1", f"pass@{k}", maj], "rows": body}


def render_html(
    runs: Sequence[RunData],
    max_questions: int = DRILL_QUESTIONS,
    max_samples: int = DRILL_SAMPLES,
) -> str:
    """The whole page for ``runs`` (already through ``ekt.report.load.analyse``)."""
    views = [_run_view(r, i) for i, r in enumerate(runs)]
    ks = sorted({k for r in runs for k in r.ks})
    majs = sorted({k for r in runs for e in r.evals for k in e.intervals if k.startswith("maj@")})
    head = ["run", "teacher → student", "model", "method", "greedy pass@1"]
    head += [f"pass@{k}" for k in ks] + [majs[0] if len(majs) == 1 else "majority vote"]
    head += ["pairs", "questions"]
    return (
        render(
            "report.html.j2",
            names=", ".join(r.name for r in runs),
            chains=" | ".join(f"{r.name} ({chain(r)})" for r in runs),
            runs=views,
            nav=NAV,
            results={
                "head": head,
                "cols": ["greedy_pass@1"] + [f"pass@{k}" for k in ks],
                "several_majs": len(majs) > 1,
            },
            claim_cols=claim_columns([v["claims"] for v in views]),
            claim_sides=claim_sides,
            claim_verdict=claim_verdict,
            best_student_line=best_student_line,
            drills=[
                _drill(r, i, max_questions, max_samples) for i, r in enumerate(runs) if r.evals
            ],
            train_drills=[
                d for i, r in enumerate(runs)
                if (d := _train_drill(r, i, max_questions, max_samples)) is not None
            ],
            sources=SOURCES,
            color=color,
            fmt=fmt,
            resamples=runs[0].resamples if runs else 0,
            seed=runs[0].seed if runs else 0,
            small_sample=SMALL_SAMPLE,
        )
        + "\n"
    )
