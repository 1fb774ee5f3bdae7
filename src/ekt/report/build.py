"""Stage: report. Intervals into results.json/results.md, and one self-contained report.html.

Everything here is rebuilt from the records a run leaves on disk, so
``ekt report RUN_DIR`` gives the same file as the end of ``ekt run``:

- ``eval/<label>/problems.jsonl`` (per question n, c, greedy and majority
  outcome) gives every figure, its bootstrap interval (``ekt.evaluation.stats``), the
  paired differences against the reference method (EKT) and the pass@k curves;
- ``eval/<label>/{greedy,sampled}/executions.jsonl`` give the programs of the
  per-question drill-down;
- ``teacher/executions.jsonl``, ``supervised/executions.jsonl`` and the
  train-pair files give yields; ``students/**/train_log.jsonl`` the loss curves;
  ``**/rounds.jsonl`` expert-iteration rounds; ``manifest.json`` and
  ``config.yaml`` the run's provenance.

The HTML needs no network: CSS and a few lines of JS are inline, charts are
inline SVG. All text that comes from records (model output above all) is
HTML-escaped.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ekt.errors import EktError
from ekt.evaluation.stats import (
    LEVEL,
    RESAMPLES,
    SEED,
    SMALL_SAMPLE,
    Interval,
    metric_intervals,
    paired_intervals,
    pass_at_k_curve,
    sample_notes,
)
from ekt.records import read_jsonl, write_json_atomic, write_text_atomic

REFERENCE = "ekt"  # paired differences are taken against this method
DRILL_QUESTIONS = 200  # questions whose programs are embedded (all get a summary line)
DRILL_SAMPLES = 4  # sampled programs shown per model and question

# -- loading a run folder ---------------------------------------------------------------


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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise EktError(f"{path}: malformed JSON ({e.msg}, line {e.lineno})") from None


def _records(path: Path) -> list[dict]:
    return [obj for _, obj in read_jsonl(path)] if path.is_file() else []


def _method_of(label: str) -> str:
    if label == "teacher":
        return "few-shot"
    if label == "student-base":
        return "none"
    return label.removeprefix("student-")


def load_run(run_dir: str | Path) -> RunData:
    """Read what a run folder holds; missing parts (a partial run) are simply absent."""
    d = Path(run_dir)
    if not d.is_dir():
        raise EktError(f"{d}: run folder not found")
    results = _read_json(d / "results.json") if (d / "results.json").is_file() else {}
    manifest = _read_json(d / "manifest.json") if (d / "manifest.json").is_file() else {}
    config_text = (d / "config.yaml").read_text() if (d / "config.yaml").is_file() else ""
    import yaml

    try:
        config = (yaml.safe_load(config_text) or {}) if config_text else {}
    except yaml.YAMLError:  # a hand-edited config that no longer parses: show it, use none
        config = {}
    if not isinstance(config, dict):
        config = {}
    rows = list(results.get("rows", []))
    labels = {r.get("label") for r in rows}
    for probs in sorted((d / "eval").glob("*/problems.jsonl")):
        label = probs.parent.name
        if label not in labels:  # evaluated but not in results.json (a run cut short)
            scores = probs.parent / "scores.json"
            s = _read_json(scores) if scores.is_file() else {}
            st = s.get("settings", {})
            rows.append(
                {
                    "label": label,
                    "model": st.get("model", ""),
                    "method": _method_of(label),
                    "prompt": st.get("prompt", ""),
                    **s,
                }
            )
    evals, skipped = [], []
    for r in rows:
        label = r.get("label", "")
        probs = _records(d / "eval" / label / "problems.jsonl") if label else []
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
                dir=d / "eval" / label,
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


# -- results.json / results.md with intervals ------------------------------------------


def add_statistics(
    run_dir: str | Path,
    results: dict | None = None,
    reference: str = REFERENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict:
    """Add 95% intervals and paired differences to results.json and rewrite results.md.

    Each evaluated row gains ``intervals`` ({figure: {estimate, low, high,
    questions, level}}) and ``notes``; the top level gains ``statistics`` (how
    the intervals were made) and ``paired_differences`` (row - reference, per
    figure, on the questions both answered).
    """
    d = Path(run_dir)
    if results is None:
        if not (d / "results.json").is_file():
            raise EktError(f"{d}: no results.json (has `ekt run` finished?)")
        results = _read_json(d / "results.json")
    run = analyse(load_run(d), reference, resamples, seed, curves=False)
    by_label = {e.label: e for e in run.evals}
    for row in results.get("rows", []):
        e = by_label.get(row.get("label"))
        if e is None:
            continue
        row["intervals"] = {k: v.as_dict() for k, v in e.intervals.items()}
        row["notes"] = e.notes
    results["statistics"] = {
        "method": "percentile bootstrap over questions",
        "resamples": resamples,
        "seed": seed,
        "level": LEVEL,
        "small_sample_below": SMALL_SAMPLE,
        "notes": run.notes,
    }
    results["paired_differences"] = {
        "reference": run.reference.label if run.reference else None,
        "difference": "row - reference, per question, averaged",
        "rows": {
            e.label: {k: v.as_dict() for k, v in e.paired.items()} for e in run.evals if e.paired
        },
    }
    write_json_atomic(d / "results.json", results)
    write_text_atomic(d / "results.md", results_markdown(run))
    return results


def model_notes(run: RunData) -> list[str]:
    """Per-model notes, models with the same note merged into one line."""
    merged: dict[str, list[str]] = {}
    for e in run.evals:
        for n in e.notes:
            merged.setdefault(n, []).append(e.label)
    return [f"{', '.join(labels)}: {n}" for n, labels in merged.items()]


def _pct_iv(iv: Interval | None) -> str:
    if iv is None:
        return "—"
    return f"{100 * iv.estimate:.1f} [{100 * iv.low:.1f}, {100 * iv.high:.1f}]"


def _pp_iv(iv: Interval | None) -> str:
    if iv is None:
        return "—"
    star = "*" if iv.low > 0 or iv.high < 0 else ""
    return f"{100 * iv.estimate:+.1f} [{100 * iv.low:+.1f}, {100 * iv.high:+.1f}]{star}"


def _chain(run: RunData) -> str:
    r = run.results
    teacher = r.get("teacher") or run.config.get("teacher") or "?"
    student = r.get("student") or run.config.get("student") or "?"
    return f"{teacher} -> {student}"


def _maj_key(e: EvalData) -> str | None:
    return next((k for k in e.intervals if k.startswith("maj@")), None)


def _metric_columns(runs: Sequence[RunData]) -> list[str]:
    ks = sorted({k for r in runs for k in r.ks})
    return ["greedy_pass@1"] + [f"pass@{k}" for k in ks]


def _label_model(e: EvalData) -> str:
    return f"{e.model} (teacher)" if e.label == "teacher" else e.model


def results_markdown(run: RunData) -> str:
    """The published-layout table with 95% intervals, then paired differences vs EKT."""
    cols = _metric_columns([run])
    maj = next((_maj_key(e) for e in run.evals if _maj_key(e)), "maj@n")
    head = ["teacher -> student", "model", "method", "greedy pass@1"]
    head += cols[1:] + [maj, "pairs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    chain = _chain(run)
    for e in run.evals:
        cells = [chain, _label_model(e), e.method]
        cells += [_pct_iv(e.intervals.get(c)) for c in cols]
        cells += [_pct_iv(e.intervals.get(_maj_key(e) or "")), str(e.row.get("pairs", "—"))]
        lines.append("| " + " | ".join(cells) + " |")
    for s in run.skipped:
        cells = [chain, str(s.get("model", "")), str(s.get("method", ""))]
        cells += [f"skipped: {s.get('skipped')}"] + ["—"] * (len(cols) - 1)
        cells += ["—", str(s.get("pairs", "—"))]
        lines.append("| " + " | ".join(cells) + " |")
    ev = run.results.get("eval") or run.config.get("eval") or {}
    nq = max((len(e.problems) for e in run.evals), default=0)
    lines += [
        "",
        f"{nq} {ev.get('split', 'test')} questions; greedy decoding for pass@1; "
        f"{ev.get('n', '?')} samples at temperature {ev.get('temperature', '?')} for pass@k "
        "(unbiased estimator) and majority vote. Figures are percentages with 95% intervals "
        f"from a percentile bootstrap over questions ({run.resamples} resamples, seed {run.seed}).",
    ]
    ref = run.reference
    paired = [e for e in run.evals if e.paired]
    if ref and paired:
        keys = [c for c in cols if any(c in e.paired for e in paired)]
        mk = next((k for e in paired for k in e.paired if k.startswith("maj@")), None)
        keys += [mk] if mk else []
        lines += [
            "",
            f"Paired differences vs {ref.method} (row − {ref.method}, percentage points, "
            "same questions, 95% bootstrap interval; * = interval excludes 0):",
            "",
            "| model | method | " + " | ".join(keys) + " |",
            "|" + "---|" * (len(keys) + 2),
        ]
        for e in paired:
            cells = [_label_model(e), e.method] + [_pp_iv(e.paired.get(k)) for k in keys]
            lines.append("| " + " | ".join(cells) + " |")
    notes = run.notes + model_notes(run)
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


# -- HTML building blocks ------------------------------------------------------------------


def esc(x: object) -> str:
    """HTML-escape anything for text and (double-quoted) attribute positions."""
    return html.escape(str(x), quote=True)


_METHOD_COLORS = {
    "few-shot": "#555555",
    "none": "#9a9a9a",
    "ekt": "#1f5fbf",
    "supervised": "#2e8b57",
    "kd": "#e07b00",
    "seq-kd": "#8e44ad",
    "expert-iteration": "#c0392b",
}
_EXTRA_COLORS = ["#17becf", "#bcbd22", "#8c564b", "#e377c2", "#7f7f7f", "#1b9e77"]


def _color(method: str) -> str:
    if method in _METHOD_COLORS:
        return _METHOD_COLORS[method]
    return _EXTRA_COLORS[sum(map(ord, method)) % len(_EXTRA_COLORS)]


@dataclass
class Series:
    name: str
    xs: list[float]
    ys: list[float]
    color: str
    lo: list[float] | None = None
    hi: list[float] | None = None
    tips: list[str] | None = None


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _fmt_tick(v: float, pct: bool) -> str:
    if pct:
        s = f"{100 * v:.1f}".rstrip("0").rstrip(".")
        return s + "%"
    if abs(v) >= 1000 or v == int(v):
        return f"{v:.0f}"
    return f"{v:.3g}"


def line_chart(
    series: Sequence[Series],
    title: str,
    xlabel: str,
    ylabel: str,
    log_x: bool = False,
    pct: bool = False,
    y_zero: bool = True,
    width: int = 560,
    height: int = 300,
    chart_id: str = "",
) -> str:
    """An inline SVG line chart with optional shaded interval bands and point tooltips."""
    pts = [(x, y) for s in series for x, y in zip(s.xs, s.ys)]
    if not pts:
        return f'<p class="empty">{esc(title)}: nothing to plot.</p>'
    ml, mr, mt, mb = 58, 14, 26, 42
    pw, ph = width - ml - mr, height - mt - mb
    xs = [x for x, _ in pts]
    ys = [y for _, y in pts]
    for s in series:
        ys += [v for v in (s.lo or []) + (s.hi or [])]
    x0, x1 = min(xs), max(xs)
    if log_x:
        x0, x1 = max(x0, 1e-9), max(x1, 1e-9)
    if x1 == x0:
        x1 = x0 + 1
    y0 = 0.0 if y_zero else min(ys)
    y1 = max(ys)
    if pct:
        y1 = min(1.0, max(y1 * 1.1, 0.05))
    else:
        pad = (y1 - y0) * 0.08 or max(abs(y1), 1.0) * 0.1
        y1 += pad
        y0 = y0 if y_zero else y0 - pad

    def fx(x: float) -> float:
        if log_x:
            return ml + pw * (math.log10(x) - math.log10(x0)) / (math.log10(x1) - math.log10(x0))
        return ml + pw * (x - x0) / (x1 - x0)

    def fy(y: float) -> float:
        return mt + ph * (1 - (y - y0) / (y1 - y0))

    out = [
        f'<svg class="chart" id="{esc(chart_id)}" role="img" aria-label="{esc(title)}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'xmlns="http://www.w3.org/2000/svg">',
        f'<text x="{ml}" y="16" class="ct">{esc(title)}</text>',
    ]
    for t in _nice_ticks(y0, y1):
        if y0 - 1e-12 <= t <= y1 + 1e-12:
            y = fy(t)
            out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
            out.append(
                f'<text x="{ml - 6}" y="{y + 4:.1f}" class="tk" text-anchor="end">'
                f"{esc(_fmt_tick(t, pct))}</text>"
            )
    if log_x:
        xt = [
            m * 10**e for e in range(0, 7) for m in (1, 2, 5) if x0 - 1e-9 <= m * 10**e <= x1 + 1e-9
        ]
    else:
        xt = [t for t in _nice_ticks(x0, x1, 6) if x0 - 1e-9 <= t <= x1 + 1e-9]
        if all(float(x).is_integer() for x in xs):  # steps, k: no ticks between integers
            xt = [t for t in xt if float(t).is_integer()] or [x0, x1]
    for t in xt:
        x = fx(t)
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{mt + ph}" y2="{mt + ph + 4}" class="axis"/>'
        )
        out.append(
            f'<text x="{x:.1f}" y="{mt + ph + 16}" class="tk" text-anchor="middle">'
            f"{esc(_fmt_tick(t, False))}</text>"
        )
    out.append(
        f'<line x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}" class="axis"/>'
        f'<line x1="{ml}" x2="{ml}" y1="{mt}" y2="{mt + ph}" class="axis"/>'
        f'<text x="{ml + pw / 2:.1f}" y="{height - 6}" class="al" text-anchor="middle">'
        f"{esc(xlabel)}</text>"
        f'<text transform="translate(14 {mt + ph / 2:.1f}) rotate(-90)" class="al" '
        f'text-anchor="middle">{esc(ylabel)}</text>'
    )
    for s in series:
        if s.lo and s.hi and len(s.xs) > 1:
            upper = " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in zip(s.xs, s.hi))
            lower = " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in zip(s.xs[::-1], s.lo[::-1]))
            out.append(
                f'<polygon points="{upper} {lower}" fill="{s.color}" fill-opacity="0.13" '
                'stroke="none" class="band"/>'
            )
    for s in series:
        line = " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in zip(s.xs, s.ys))
        if len(s.xs) > 1:
            out.append(
                f'<polyline points="{line}" fill="none" stroke="{s.color}" stroke-width="2" '
                f'class="series" data-name="{esc(s.name)}"/>'
            )
        show_pts = len(s.xs) <= 40
        for i, (x, y) in enumerate(zip(s.xs, s.ys)):
            tip = s.tips[i] if s.tips else f"{s.name}: {_fmt_tick(y, pct)} at {x:g}"
            r = 3 if show_pts else 0.1
            out.append(
                f'<circle cx="{fx(x):.1f}" cy="{fy(y):.1f}" r="{r}" fill="{s.color}">'
                f"<title>{esc(tip)}</title></circle>"
            )
    out.append("</svg>")
    legend = "".join(
        f'<span class="lg"><i style="background:{s.color}"></i>{esc(s.name)}</span>' for s in series
    )
    return "".join(out) + f'<div class="legend">{legend}</div>'


def interval_chart(
    items: Sequence[tuple[str, Interval, str]],
    title: str,
    diff: bool = False,
    width: int = 560,
    chart_id: str = "",
) -> str:
    """Forest plot: one row per (label, interval, color); a zero line for differences."""
    if not items:
        return ""
    lw, mr, mt, mb, rh = 190, 16, 26, 30, 22
    height = mt + mb + rh * len(items)
    pw = width - lw - mr
    lo = min(iv.low for _, iv, _ in items)
    hi = max(iv.high for _, iv, _ in items)
    if diff:
        span = max(abs(lo), abs(hi), 0.01) * 1.1
        x0, x1 = -span, span
    else:
        x0, x1 = 0.0, min(1.0, max(hi * 1.1, 0.05))

    def fx(x: float) -> float:
        return lw + pw * (x - x0) / (x1 - x0)

    out = [
        f'<svg class="chart forest" id="{esc(chart_id)}" role="img" aria-label="{esc(title)}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'xmlns="http://www.w3.org/2000/svg">',
        f'<text x="8" y="16" class="ct">{esc(title)}</text>',
    ]
    base = mt + rh * len(items)
    for t in _nice_ticks(x0, x1, 6):
        if x0 - 1e-12 <= t <= x1 + 1e-12:
            x = fx(t)
            cls = "zero" if diff and abs(t) < 1e-12 else "grid"
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{mt}" y2="{base}" class="{cls}"/>')
            label = _fmt_tick(t, True)
            if diff and t > 0:
                label = "+" + label
            out.append(
                f'<text x="{x:.1f}" y="{base + 14}" class="tk" text-anchor="middle">'
                f"{esc(label.replace('%', ' pp' if diff else '%'))}</text>"
            )
    for i, (label, iv, color) in enumerate(items):
        y = mt + rh * i + rh / 2
        short = label if len(label) <= 30 else label[:29] + "…"
        tip = f"{label}: {_pp_iv(iv) if diff else _pct_iv(iv)}"
        out.append(
            f'<text x="{lw - 8}" y="{y + 4:.1f}" class="tk" text-anchor="end">{esc(short)}'
            f"<title>{esc(label)}</title></text>"
            f'<line x1="{fx(iv.low):.1f}" x2="{fx(iv.high):.1f}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{color}" stroke-width="2.5"/>'
            f'<circle cx="{fx(iv.estimate):.1f}" cy="{y:.1f}" r="4.5" fill="{color}">'
            f"<title>{esc(tip)}</title></circle>"
        )
    out.append("</svg>")
    return "".join(out)


def bar_chart(
    values: Sequence[tuple[str, float]],
    title: str,
    xlabel: str,
    ylabel: str,
    color: str = "#1f5fbf",
    width: int = 560,
    height: int = 220,
    chart_id: str = "",
) -> str:
    if not values:
        return ""
    ml, mr, mt, mb = 50, 10, 26, 40
    pw, ph = width - ml - mr, height - mt - mb
    top = max(v for _, v in values) or 1
    ticks = _nice_ticks(0, top, 4)
    if ticks[-1] < top:  # one more tick above the tallest bar
        ticks.append(ticks[-1] + (ticks[1] - ticks[0] if len(ticks) > 1 else top))
    top = ticks[-1]
    bw = pw / len(values)
    out = [
        f'<svg class="chart bars" id="{esc(chart_id)}" role="img" aria-label="{esc(title)}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'xmlns="http://www.w3.org/2000/svg">',
        f'<text x="{ml}" y="16" class="ct">{esc(title)}</text>',
    ]
    for t in ticks:
        y = mt + ph * (1 - t / top)
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{ml - 5}" y="{y + 4:.1f}" class="tk" text-anchor="end">{t:g}</text>')
    every = max(1, math.ceil(len(values) / 20))
    for i, (label, v) in enumerate(values):
        h = ph * v / top
        x = ml + i * bw
        out.append(
            f'<rect x="{x + bw * 0.1:.1f}" y="{mt + ph - h:.1f}" width="{bw * 0.8:.1f}" '
            f'height="{h:.1f}" fill="{color}"><title>{esc(label)}: {v:g}</title></rect>'
        )
        if i % every == 0:
            out.append(
                f'<text x="{x + bw / 2:.1f}" y="{mt + ph + 14}" class="tk" '
                f'text-anchor="middle">{esc(label)}</text>'
            )
    out.append(
        f'<line x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}" class="axis"/>'
        f'<text x="{ml + pw / 2:.1f}" y="{height - 6}" class="al" text-anchor="middle">'
        f"{esc(xlabel)}</text>"
        f'<text transform="translate(12 {mt + ph / 2:.1f}) rotate(-90)" class="al" '
        f'text-anchor="middle">{esc(ylabel)}</text></svg>'
    )
    return "".join(out)


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """``rows`` cells are HTML already (callers escape); ``head`` is plain text."""
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _cell_iv(iv: Interval | None, diff: bool = False) -> str:
    if iv is None:
        return '<span class="na">—</span>'
    if diff:
        sig = iv.low > 0 or iv.high < 0
        cls = "sig" if sig else ""
        return (
            f'<span class="{cls}">{100 * iv.estimate:+.1f}</span> '
            f'<span class="ci">[{100 * iv.low:+.1f}, {100 * iv.high:+.1f}]</span>'
        )
    return (
        f'{100 * iv.estimate:.1f} <span class="ci">[{100 * iv.low:.1f}, {100 * iv.high:.1f}]</span>'
    )


def _swatch(method: str) -> str:
    return f'<i class="sw" style="background:{_color(method)}"></i>{esc(method)}'


# -- sections --------------------------------------------------------------------------


def section_summary(runs: Sequence[RunData]) -> str:
    parts = []
    for run in runs:
        lines = []
        ref = run.reference
        kmax = max(run.ks)
        key = f"pass@{kmax}"
        if ref is not None and key in ref.intervals:
            lines.append(
                f"<li><b>{esc(ref.method)}</b> student: {esc(key)} "
                f"{_cell_iv(ref.intervals[key])}, greedy pass@1 "
                f"{_cell_iv(ref.intervals.get('greedy_pass@1'))}.</li>"
            )
            for e in run.evals:
                if e is ref or key not in e.paired:
                    continue
                d = e.paired[key]
                if d.low > 0:
                    verdict = f"better than {esc(ref.method)}"
                elif d.high < 0:
                    verdict = f"worse than {esc(ref.method)}"
                else:
                    verdict = f"not distinguishable from {esc(ref.method)} at this sample size"
                lines.append(
                    f"<li>{_swatch(e.method)} ({esc(e.label)}): {esc(key)} "
                    f"{_cell_iv(e.intervals.get(key))}; paired difference "
                    f"{_cell_iv(d, diff=True)} pp over {d.questions} questions: {verdict}.</li>"
                )
        else:
            best = max(
                (e for e in run.evals if key in e.intervals),
                key=lambda e: e.intervals[key].estimate,
                default=None,
            )
            if best is not None and best.intervals[key].estimate == 0:
                lines.append(
                    f"<li>no model solved any question ({esc(key)} is 0 for all "
                    f"{len(run.evals)} evaluated models).</li>"
                )
            elif best is not None:
                lines.append(
                    f"<li>highest {esc(key)}: {_swatch(best.method)} ({esc(best.label)}) "
                    f"{_cell_iv(best.intervals[key])}.</li>"
                )
        notes = "".join(f"<li>{esc(n)}</li>" for n in run.notes + model_notes(run))
        warn = f'<ul class="warn">{notes}</ul>' if notes else ""
        parts.append(
            f'<div class="card"><h3>{esc(run.name)} <small>{esc(_chain(run))}</small></h3>'
            f"<ul>{''.join(lines) or '<li>no evaluated models</li>'}</ul>{warn}</div>"
        )
    return (
        '<section id="summary"><h2>Which method gives the student the most, and how sure '
        'are we?</h2><div class="runs">' + "".join(parts) + "</div>"
        f'<p class="how">Intervals are 95% percentile-bootstrap intervals over questions '
        f"({runs[0].resamples} resamples, seed {runs[0].seed}); a paired difference "
        "resamples the same questions for both models, so question difficulty cancels. "
        'Differences whose interval excludes 0 are <span class="sig">bold</span>. '
        f"Fewer than {SMALL_SAMPLE} questions are flagged: the bootstrap is unreliable "
        "there.</p></section>"
    )


def section_results(runs: Sequence[RunData]) -> str:
    cols = _metric_columns(runs)
    majs = sorted({k for r in runs for e in r.evals for k in e.intervals if k.startswith("maj@")})
    maj_head = majs[0] if len(majs) == 1 else "majority vote"
    head = ["run", "teacher → student", "model", "method", "greedy pass@1", *cols[1:]]
    head += [maj_head, "pairs", "questions"]
    rows = []
    for run in runs:
        chain = esc(_chain(run).replace("->", "→"))
        for e in run.evals:
            mk = _maj_key(e)
            maj_cell = _cell_iv(e.intervals.get(mk or ""))
            if mk and len(majs) > 1:
                maj_cell += f' <span class="ci">({esc(mk)})</span>'
            q = len(e.problems)
            qcell = esc(q) + (' <span class="flag">small</span>' if q < SMALL_SAMPLE else "")
            rows.append(
                [esc(run.name), chain, esc(_label_model(e)), _swatch(e.method)]
                + [_cell_iv(e.intervals.get(c)) for c in cols]
                + [maj_cell, esc(e.row.get("pairs", "—")), qcell]
            )
        for s in run.skipped:
            rows.append(
                [esc(run.name), chain, esc(s.get("model", "")), _swatch(str(s.get("method", "")))]
                + [f'<span class="na">skipped: {esc(s.get("skipped"))}</span>']
                + ['<span class="na">—</span>'] * (len(cols) - 1)
                + ['<span class="na">—</span>', esc(s.get("pairs", "—")), "—"]
            )
    table = _table(head, rows, "results")
    paired_parts = []
    for run in runs:
        ref = run.reference
        ev = [e for e in run.evals if e.paired]
        if not ref or not ev:
            continue
        keys = [c for c in cols if any(c in e.paired for e in ev)]
        mk = next((k for e in ev for k in e.paired if k.startswith("maj@")), None)
        keys += [mk] if mk else []
        prow = [
            [esc(_label_model(e)), _swatch(e.method)]
            + [_cell_iv(e.paired.get(k), diff=True) for k in keys]
            + [esc(next(iter(e.paired.values())).questions)]
            for e in ev
        ]
        paired_parts.append(
            f"<h3>{esc(run.name)}: paired differences vs {esc(ref.method)} "
            f"<small>(row − {esc(ref.method)}, percentage points)</small></h3>"
            + _table(["model", "method", *keys, "questions paired"], prow, "paired")
        )
    forest = []
    for i, run in enumerate(runs):
        kmax = f"pass@{max(run.ks)}"
        charts = [
            interval_chart(
                [
                    (f"{e.method} ({e.label})", e.intervals[m], _color(e.method))
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
            d_items = [
                (f"{e.method} ({e.label})", e.paired[kmax], _color(e.method))
                for e in run.evals
                if kmax in e.paired
            ]
            charts.append(
                interval_chart(
                    d_items,
                    f"{run.name}: {kmax}, row − {ref.method} (paired)",
                    diff=True,
                    chart_id=f"diff-{i}",
                )
            )
        forest.append('<div class="card">' + "".join(charts) + "</div>")
    return (
        '<section id="results"><h2>Results</h2>'
        '<p class="how">Figures are percentages: estimate [95% interval]. pass@1 greedy is one '
        "greedy program per question; pass@k is the unbiased estimate from n samples per "
        "question; majority vote is the share of questions whose most common answer is right; "
        "pairs are the training pairs the student was fine-tuned on.</p>"
        f'<div class="scroll">{table}</div>'
        + "".join(f'<div class="scroll">{p}</div>' for p in paired_parts)
        + '<div class="runs">'
        + "".join(forest)
        + "</div></section>"
    )


def section_curves(runs: Sequence[RunData]) -> str:
    cards = []
    for i, run in enumerate(runs):
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
                    _color(e.method),
                    [iv.low for iv in e.curve],
                    [iv.high for iv in e.curve],
                    [f"{e.label} pass@{k}: {_pct_iv(iv)}" for k, iv in zip(ks, e.curve)],
                )
            )
        nmax = max((len(s.xs) for s in series), default=0)
        chart = line_chart(
            series,
            f"{run.name}: pass@k (shaded: 95% interval)",
            "k (samples per question)",
            "pass@k",
            log_x=nmax > 10,
            pct=True,
            chart_id=f"passk-{i}",
        )
        cards.append(f'<div class="card">{chart}</div>')
    return (
        '<section id="curves"><h2>pass@k curves</h2><p class="how">k = 1 … n from each '
        "question's n samples and c correct ones (unbiased estimator), averaged over "
        "questions.</p>"
        '<div class="runs">' + "".join(cards) + "</div></section>"
    )


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


_SOURCES = {
    "teacher": "teacher's few-shot programs",
    "supervised": "reference programs from GSM8K calculator annotations",
}


def load_yields(run_dir: Path) -> list[Yield]:
    out = []
    for ex in sorted(run_dir.glob("*/executions.jsonl")):
        recs = _records(ex)
        by_q: dict[str, int] = {}
        for r in recs:
            by_q[r.get("problem_id", "?")] = by_q.get(r.get("problem_id", "?"), 0) + bool(
                r.get("correct")
            )
        source = ex.parent.name
        pairs_file = (
            run_dir / "train_pairs.jsonl"
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
                pairs=len(_records(pairs_file)) if pairs_file.is_file() else None,
            )
        )
    return out


def _ratio(a: int, b: int) -> str:
    if not b:
        return "—"
    p = a / b
    return (
        f'{a}/{b} = {100 * p:.1f}% <span class="bar"><span style="width:{100 * p:.1f}%">'
        "</span></span>"
    )


def section_yields(runs: Sequence[RunData]) -> str:
    cards = []
    for i, run in enumerate(runs):
        ys = load_yields(run.dir)
        if not ys:
            cards.append(
                f'<div class="card"><h3>{esc(run.name)}</h3><p class="empty">no teacher or '
                "supervised executions in this run</p></div>"
            )
            continue
        rows = []
        for y in ys:
            st = ", ".join(f"{esc(k)} {v}" for k, v in y.statuses.most_common())
            errs = ", ".join(f"{esc(k)} {v}" for k, v in y.errors.most_common(5)) or "—"
            rows.append(
                [
                    esc(y.source)
                    + f'<br><span class="ci">{esc(_SOURCES.get(y.source, ""))}</span>',
                    _ratio(y.solved, y.questions),
                    _ratio(y.correct, y.samples),
                    st,
                    errs,
                    esc(y.pairs if y.pairs is not None else "—"),
                ]
            )
        head = [
            "source",
            "questions solved",
            "programs correct",
            "run status",
            "top failures",
            "pairs kept",
        ]
        charts = []
        for y in ys:
            if y.source != "teacher" or not y.per_question:
                continue
            top = max(y.per_question)
            vals = [(str(c), float(y.per_question.get(c, 0))) for c in range(0, top + 1)]
            charts.append(
                bar_chart(
                    vals,
                    f"{run.name}: teacher questions by number of correct programs",
                    "correct programs for the question",
                    "questions",
                    chart_id=f"yield-{i}",
                )
            )
        cards.append(
            f'<div class="card"><h3>{esc(run.name)}</h3><div class="scroll">'
            + _table(head, rows, "yields")
            + "</div>"
            + "".join(charts)
            + "</div>"
        )
    return (
        '<section id="yields"><h2>Yields</h2><p class="how">Share of training questions with '
        "at least one program returning the gold answer, and of all programs; pairs kept are "
        "what the student trains on (after deduplication and decontamination).</p>"
        '<div class="runs">' + "".join(cards) + "</div></section>"
    )


def _scalar(v: Any) -> bool:
    return isinstance(v, str | int | float | bool) or v is None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def section_rounds(runs: Sequence[RunData]) -> str:
    cards = []
    for i, run in enumerate(runs):
        files = sorted(
            {*run.dir.glob("students/*/rounds.jsonl"), *run.dir.glob("*/rounds.jsonl")}
            | set(run.dir.glob("students/*/*/rounds.jsonl"))
        )
        if not files:
            continue
        for j, f in enumerate(files):
            recs = [r for r in _records(f) if isinstance(r, dict)]
            keys: list[str] = []
            for r in recs:
                keys += [k for k, v in r.items() if _scalar(v) and k not in keys]
            rows = [[esc(_fmt(r.get(k, ""))) for k in keys] for r in recs]
            xs = [float(r.get("round", n + 1)) for n, r in enumerate(recs)]
            series = []
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
            for n, k in enumerate(rate_keys):
                series.append(Series(k, xs, [float(r[k]) for r in recs], _EXTRA_COLORS[n % 6]))
            chart = (
                line_chart(
                    series,
                    "rates by round",
                    "round",
                    "rate",
                    pct=True,
                    chart_id=f"rounds-{i}-{j}",
                )
                if series and len(recs) > 0
                else ""
            )
            cards.append(
                f'<div class="card"><h3>{esc(run.name)}: {esc(f.relative_to(run.dir))}</h3>'
                + chart
                + f'<div class="scroll">{_table(keys, rows, "rounds")}</div></div>'
            )
    body = (
        '<div class="runs">' + "".join(cards) + "</div>"
        if cards
        else '<p class="empty">No expert-iteration rounds in these runs '
        "(no rounds.jsonl under students/).</p>"
    )
    return f'<section id="rounds"><h2>Expert-iteration rounds</h2>{body}</section>'


def section_training(runs: Sequence[RunData]) -> str:
    cards = []
    for i, run in enumerate(runs):
        logs = sorted(run.dir.glob("students/**/train_log.jsonl"))
        series = []
        for n, log in enumerate(logs):
            name = str(log.parent.relative_to(run.dir / "students"))
            method = name.split("/")[0]
            pts = [
                (float(r["step"]), float(r["loss"]))
                for r in _records(log)
                if isinstance(r.get("loss"), int | float) and "step" in r
            ]
            if pts:
                color = _color(method) if name == method else _EXTRA_COLORS[n % 6]
                series.append(Series(name, [p[0] for p in pts], [p[1] for p in pts], color))
        chart = line_chart(
            series,
            f"{run.name}: training loss",
            "optimizer step",
            "loss",
            y_zero=False,
            chart_id=f"loss-{i}",
        )
        rows = []
        for s in sorted(run.dir.glob("students/**/train_summary.json")):
            t = _read_json(s)
            rows.append(
                [
                    esc(s.parent.relative_to(run.dir / "students")),
                    esc(t.get("pairs", "—")),
                    esc(t.get("steps", "—")),
                    esc(_fmt(t.get("final_loss", "—"))),
                    esc(_fmt(t.get("train_loss", "—"))),
                    esc(t.get("tokens_trained", "—")),
                    esc(
                        f"{t['seconds']:.0f}" if isinstance(t.get("seconds"), int | float) else "—"
                    ),
                    esc(t.get("precision", "—")),
                ]
            )
        table = (
            _table(
                [
                    "student",
                    "pairs",
                    "steps",
                    "last logged loss",
                    "mean train loss",
                    "tokens",
                    "seconds",
                    "precision",
                ],
                rows,
            )
            if rows
            else '<p class="empty">no trained students</p>'
        )
        cards.append(f'<div class="card">{chart}<div class="scroll">{table}</div></div>')
    return (
        '<section id="training"><h2>Training</h2><div class="runs">'
        + "".join(cards)
        + "</div></section>"
    )


def _outcome(r: dict) -> str:
    if r.get("correct"):
        return '<span class="ok">✓ correct</span>'
    st = str(r.get("status", "?"))
    if st == "ok":
        return f'<span class="bad">✗ returned {esc(_fmt(r.get("value")))}</span>'
    detail = r.get("type") or st
    err = r.get("error") or ""
    return f'<span class="bad">✗ {esc(detail)}</span> <span class="err">{esc(err)[:300]}</span>'


def _program_block(r: dict, tag: str) -> str:
    prog = r.get("program") or r.get("text") or ""
    return (
        f'<div class="prog"><div class="ph">{esc(tag)} · {_outcome(r)}</div>'
        f"<pre><code>{esc(prog)}</code></pre></div>"
    )


def _questions_text(run: RunData, ids: set[str]) -> dict[str, str]:
    """Question text from the run's data folder, if it is on this machine (never the network)."""
    src = run.config.get("data_dir") or (run.manifest.get("data") or {}).get("source")
    if not src or not Path(str(src)).is_dir():
        return {}
    try:
        from ekt.data.tasks import get_task

        task = get_task(str(run.config.get("task") or "gsm8k"), str(src))
        return {pid: p.question for pid, p in task.by_id(ids).items() if pid in ids}
    except EktError:
        return {}


def _solved(p: dict) -> bool:
    return bool(p.get("greedy_correct")) or int(p.get("c", 0)) > 0


def section_drill(
    runs: Sequence[RunData], max_questions: int = DRILL_QUESTIONS, max_samples: int = DRILL_SAMPLES
) -> str:
    parts = []
    for i, run in enumerate(runs):
        if not run.evals:
            continue
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
                for r in _records(e.dir / kind / "executions.jsonl"):
                    if r.get("problem_id") in chosen_set:
                        programs.setdefault((e.label, r["problem_id"]), {}).setdefault(
                            kind, []
                        ).append(r)
        texts = _questions_text(run, set(order))
        items = []
        for pid in order:
            rows = per[pid]
            gold = next(iter(rows.values())).get("gold")
            marks = []
            for e in run.evals:
                p = rows.get(e.label)
                if p is None:
                    continue
                g = p.get("greedy_correct")
                gm = "" if g is None else ("✓" if g else "✗")
                cls = "ok" if _solved(p) else "bad"
                marks.append(
                    f'<span class="m {cls}" title="{esc(e.label)}: greedy {gm or "n/a"}, '
                    f'{p["c"]}/{p["n"]} samples correct">'
                    f'<i class="sw" style="background:{_color(e.method)}"></i>'
                    f"{esc(e.method)} {gm} {p['c']}/{p['n']}</span>"
                )
            body = []
            if pid in texts:
                body.append(f'<p class="qt">{esc(texts[pid])}</p>')
            body.append(f'<p class="gold">gold answer: <b>{esc(_fmt(gold))}</b></p>')
            if pid in chosen_set:
                body.append('<div class="models">')
                for e in run.evals:
                    p = rows.get(e.label)
                    if p is None:
                        continue
                    recs = programs.get((e.label, pid), {})
                    blocks = [_program_block(r, "greedy") for r in recs.get("greedy", [])[:1]]
                    sampled = sorted(recs.get("sampled", []), key=lambda r: r.get("sample_idx", 0))
                    shown = sampled[:max_samples]
                    first_ok = next((r for r in sampled if r.get("correct")), None)
                    if first_ok is not None and first_ok not in shown:
                        shown = shown[: max(0, max_samples - 1)] + [first_ok]
                    blocks += [
                        _program_block(r, f"sample {r.get('sample_idx', '?')}") for r in shown
                    ]
                    maj = p.get("majority_answer")
                    body.append(
                        f'<div class="model"><h4>{_swatch(e.method)} <small>{esc(e.label)} · '
                        f"{p['c']}/{p['n']} samples correct · majority answer "
                        f"{esc(_fmt(maj))} ({'right' if p.get('majority_correct') else 'wrong'})"
                        f" · showing {len(shown)} of {len(sampled)} samples</small></h4>"
                        + "".join(blocks)
                        + "</div>"
                    )
                body.append("</div>")
            else:
                body.append(
                    '<p class="empty">programs not embedded for this question (limit '
                    f"{max_questions}; `ekt report --questions N` embeds more)</p>"
                )
            flags = (
                f'data-solved="{int(any(_solved(p) for p in rows.values()))}" '
                f'data-disagree="{int(split[pid])}"'
            )
            items.append(
                f'<details class="q" {flags}><summary><code>{esc(pid)}</code> '
                + " ".join(marks)
                + "</summary>"
                + "".join(body)
                + "</details>"
            )
        parts.append(
            f'<div class="drill" id="drill-{i}"><h3>{esc(run.name)} <small>{len(order)} '
            f"questions; programs embedded for {len(chosen_set)} (disagreements first)"
            "</small></h3>"
            '<div class="controls"><input type="search" class="f-text" '
            'placeholder="filter: id, question or program text"> '
            '<select class="f-mode"><option value="all">all questions</option>'
            '<option value="solved">solved by some model</option>'
            '<option value="disagree">models disagree</option></select> '
            '<button type="button" class="f-open">expand shown</button> '
            '<button type="button" class="f-close">collapse all</button> '
            '<span class="f-count"></span></div>' + "".join(items) + "</div>"
        )
    return (
        '<section id="drill"><h2>Per-question drill-down</h2><p class="how">Each line: '
        "question id, then per model the greedy outcome (✓/✗) and correct samples / samples. "
        "Open a question for its text, gold answer and the programs with their sandbox "
        "outcome.</p>" + "".join(parts) + "</section>"
    )


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        out: list[tuple[str, Any]] = []
        for k, v in obj.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(obj, list) and not all(_scalar(v) for v in obj):
        return [(prefix, json.dumps(obj))]
    return [(prefix, obj)]


def section_manifest(runs: Sequence[RunData]) -> str:
    cards = []
    for run in runs:
        m = dict(run.manifest)
        stage = m.pop("stage_seconds", None) or run.results.get("stage_seconds") or {}
        rows = [[esc(k), f"<code>{esc(_fmt(v))}</code>"] for k, v in _flatten(m)]
        table = (
            _table(["field", "value"], rows, "kv")
            if rows
            else '<p class="empty">no manifest.json</p>'
        )
        srows = [[esc(k), esc(_fmt(v))] for k, v in stage.items()]
        total = sum(v for v in stage.values() if isinstance(v, int | float))
        if srows:
            srows.append(["<b>total</b>", f"<b>{total:.1f}</b>"])
        stable = _table(["stage", "seconds"], srows, "kv") if srows else ""
        cfg = (
            f"<details><summary>config.yaml</summary><pre><code>{esc(run.config_text)}"
            "</code></pre></details>"
            if run.config_text
            else ""
        )
        cards.append(
            f'<div class="card"><h3>{esc(run.name)} <small>{esc(run.dir)}</small></h3>'
            f'<div class="scroll">{table}</div><h4>wall time by stage</h4>{stable}{cfg}</div>'
        )
    return (
        '<section id="manifest"><h2>Run manifest</h2><div class="runs">'
        + "".join(cards)
        + "</div></section>"
    )


_CSS = """
:root{--fg:#1d2330;--mut:#667085;--bd:#d9dee7;--bg:#f6f8fb;--ok:#1a7f37;--bad:#b42318}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
margin:0;background:#fff}
header{background:#102a43;color:#fff;padding:18px 28px}
header h1{margin:0;font-size:22px}header p{margin:4px 0 0;color:#bcccdc}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid var(--bd);padding:8px 28px;
z-index:2}
nav a{margin-right:16px;color:#1f5fbf;text-decoration:none}
main{padding:8px 28px 40px;max-width:1800px}
h2{margin:28px 0 8px;font-size:19px;border-bottom:2px solid #102a43;padding-bottom:4px}
h3{font-size:15px;margin:12px 0 6px}h3 small,h4 small{color:var(--mut);font-weight:normal}
h4{margin:8px 0 4px;font-size:13px}
.how{color:var(--mut);max-width:1000px}
.runs{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:16px}
.card{border:1px solid var(--bd);border-radius:8px;padding:10px 14px;background:#fff;
overflow:hidden}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{border-bottom:1px solid var(--bd);padding:4px 8px;text-align:left;vertical-align:top}
th{background:var(--bg);font-weight:600;white-space:nowrap}
tbody tr:nth-child(even){background:#fbfcfe}
table.results td,table.paired td{white-space:nowrap}
.ci{color:var(--mut);font-size:12px}.na{color:var(--mut)}
.sig{font-weight:700}
.flag{background:#fff4e5;color:#b54708;border-radius:4px;padding:0 4px;font-size:11px}
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px}
ul.warn{background:#fff8e6;border-left:3px solid #f0a500;padding:6px 10px 6px 26px}
svg.chart{width:100%;max-width:760px;height:auto;display:block;margin:6px 0}
svg .ct{font-size:13px;font-weight:600;fill:var(--fg)}
svg .tk{font-size:11px;fill:#475467}svg .al{font-size:12px;fill:#344054}
svg .grid{stroke:#eaecf0}svg .axis{stroke:#98a2b3}svg .zero{stroke:#344054;stroke-dasharray:3 3}
.legend{font-size:12px;margin:0 0 6px}.lg{margin-right:12px;white-space:nowrap}
.lg i{display:inline-block;width:14px;height:3px;vertical-align:middle;margin-right:4px}
.bar{display:inline-block;width:60px;height:7px;background:#eaecf0;border-radius:3px;
vertical-align:middle;margin-left:4px}.bar span{display:block;height:7px;background:#1f5fbf;
border-radius:3px}
.ok{color:var(--ok)}.bad{color:var(--bad)}.err{color:var(--mut);font-size:12px}
details.q{border:1px solid var(--bd);border-radius:6px;margin:4px 0;background:#fff}
details.q>summary{cursor:pointer;padding:4px 8px;list-style-position:inside}
details.q[open]>summary{background:var(--bg)}
details.q>*:not(summary){margin-left:14px;margin-right:10px}
.m{display:inline-block;margin-left:10px;font-size:12px}
.qt{white-space:pre-wrap;max-width:1000px}
.models{display:grid;grid-template-columns:repeat(auto-fit,minmax(330px,1fr));gap:4px 16px}
.model{min-width:0}
.prog{border-left:3px solid var(--bd);margin:4px 0 8px;padding-left:8px}
.ph{font-size:12px;color:var(--mut)}
pre{background:#f4f6f9;padding:6px 8px;border-radius:4px;overflow-x:auto;margin:2px 0;
font-size:12px;max-height:360px}
.controls{margin:6px 0}.controls input{width:320px;padding:3px 6px}
.empty{color:var(--mut);font-style:italic}
table.kv td:first-child{white-space:nowrap;color:#344054}
table.kv td code{word-break:break-all}
"""

_JS = """
(function () {
  document.querySelectorAll('.drill').forEach(function (box) {
    var text = box.querySelector('.f-text');
    var mode = box.querySelector('.f-mode');
    var count = box.querySelector('.f-count');
    var items = Array.prototype.slice.call(box.querySelectorAll('details.q'));
    function apply() {
      var q = text.value.trim().toLowerCase();
      var m = mode.value;
      var shown = 0;
      items.forEach(function (d) {
        var ok = (m === 'all' || d.getAttribute('data-' + m) === '1') &&
          (!q || d.textContent.toLowerCase().indexOf(q) >= 0);
        d.style.display = ok ? '' : 'none';
        if (ok) { shown += 1; }
      });
      count.textContent = shown + ' of ' + items.length + ' shown';
    }
    text.addEventListener('input', apply);
    mode.addEventListener('change', apply);
    box.querySelector('.f-open').addEventListener('click', function () {
      items.forEach(function (d) { if (d.style.display !== 'none') { d.open = true; } });
    });
    box.querySelector('.f-close').addEventListener('click', function () {
      items.forEach(function (d) { d.open = false; });
    });
    apply();
  });
})();
"""


def render_html(
    runs: Sequence[RunData],
    max_questions: int = DRILL_QUESTIONS,
    max_samples: int = DRILL_SAMPLES,
) -> str:
    names = ", ".join(r.name for r in runs)
    sections = [
        section_summary(runs),
        section_results(runs),
        section_curves(runs),
        section_yields(runs),
        section_rounds(runs),
        section_training(runs),
        section_drill(runs, max_questions, max_samples),
        section_manifest(runs),
    ]
    nav = "".join(
        f'<a href="#{a}">{esc(t)}</a>'
        for a, t in [
            ("summary", "Summary"),
            ("results", "Results"),
            ("curves", "pass@k"),
            ("yields", "Yields"),
            ("rounds", "Expert iteration"),
            ("training", "Training"),
            ("drill", "Questions"),
            ("manifest", "Manifest"),
        ]
    )
    run_notes = "".join(
        f"<p>{esc(r.name)}: {esc(r.results.get('note'))}</p>" for r in runs if r.results.get("note")
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>ekt report: {esc(names)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>ekt report: {esc(names)}</h1>"
        f"<p>{len(runs)} run{'s' if len(runs) != 1 else ''}: "
        + esc(" | ".join(f"{r.name} ({_chain(r)})" for r in runs))
        + f"</p>{run_notes}</header><nav>{nav}</nav><main>"
        + "".join(sections)
        + f"</main><script>{_JS}</script></body></html>\n"
    )


def build_report(
    run_dirs: Sequence[str | Path],
    out: str | Path | None = None,
    reference: str = REFERENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    max_questions: int = DRILL_QUESTIONS,
    max_samples: int = DRILL_SAMPLES,
) -> Path:
    """Write one self-contained HTML report for one or several run folders; returns its path."""
    if not run_dirs:
        raise EktError("no run folders given")
    if out is None:
        out = Path(run_dirs[0]) / "report.html" if len(run_dirs) == 1 else Path("report.html")
    expanded: list[Path] = []
    for d in map(Path, run_dirs):  # a matrix run (ekt.pipeline.matrix): its cells side by side
        cells = sorted(p for p in (d / "pairs").glob("*") if p.is_dir())
        expanded += cells if cells and not (d / "eval").is_dir() else [d]
    runs = [analyse(load_run(d), reference, resamples, seed) for d in expanded]
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_html(runs, max_questions, max_samples), encoding="utf-8")
    tmp.replace(path)
    return path


def finish_run(run_dir: str | Path, results: dict) -> dict:
    """End of ``ekt run``: intervals into results.json/results.md, then report.html.

    A failure to build the HTML never loses the figures: it is reported and
    ``ekt report RUN_DIR`` can be rerun.
    """
    results = add_statistics(run_dir, results)
    try:
        path = build_report([run_dir])
        print(f"report: {path}")
    except Exception as e:  # the run's figures are on disk already; the HTML can be rebuilt
        print(
            f"report: report.html not built ({type(e).__name__}: {e}); rerun `ekt report {run_dir}`"
        )
    return results
