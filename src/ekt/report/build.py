"""Stage: report. Intervals into results.json/results.md, and one self-contained report.html.

Everything is rebuilt from the records a run leaves on disk, so
``ekt report RUN_DIR`` gives the same file as the end of ``ekt run``:

- ``ekt.report.load`` reads a run folder into the report's model and fills in
  bootstrap intervals (``ekt.evaluation.stats``), paired differences against
  the reference method (EKT) and pass@k curves;
- ``ekt.report.claims`` checks the paper's claims (EKT vs KD, ...) on the same
  per-question records;
- ``ekt.report.tables`` renders results.md (the one results-table renderer);
- ``ekt.report.html`` renders report.html from Jinja2 templates
  (``ekt/report/templates``), with SVG charts from ``ekt.report.charts``.

Public entry points: ``add_statistics``, ``build_report``, ``finish_run``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ekt.errors import EktError
from ekt.evaluation.stats import LEVEL, RESAMPLES, SEED, SMALL_SAMPLE
from ekt.layout import RunLayout
from ekt.records import write_json_atomic, write_text_atomic
from ekt.report.claims import run_claims
from ekt.report.html import DRILL_QUESTIONS, DRILL_SAMPLES, render_html
from ekt.report.load import REFERENCE, analyse, load_run, read_json
from ekt.report.tables import results_markdown


def add_statistics(
    run_dir: str | Path,
    results: dict | None = None,
    reference: str = REFERENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict:
    """Add 95% intervals and paired differences to results.json, and write results.md.

    Each evaluated row gains ``intervals`` ({figure: {estimate, low, high,
    questions, level}}) and ``notes``; the top level gains ``statistics`` (how
    the intervals were made) and ``paired_differences`` (row - reference, per
    figure, on the questions both answered) and ``claims`` (the paper's claims checked
    on the per-question records, ``ekt.report.claims.run_claims``).
    """
    d = Path(run_dir)
    lay = RunLayout(d)
    if results is None:
        if not lay.results.is_file():
            raise EktError(f"{d}: no results.json (has `ekt run` finished?)")
        results = read_json(lay.results)
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
    results["claims"] = run_claims(run)
    write_json_atomic(lay.results, results)
    ev = results.get("eval") or run.config.get("eval") or {}
    who = {k: results.get(k) or run.config.get(k) for k in ("teacher", "student")}
    write_text_atomic(lay.results_md, results_markdown({**results, "eval": ev, **who}))
    return results


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
        out = RunLayout(Path(run_dirs[0])).report if len(run_dirs) == 1 else Path("report.html")
    expanded: list[Path] = []
    for d in map(Path, run_dirs):  # a matrix run (ekt.pipeline.matrix): its cells side by side
        lay = RunLayout(d)
        cells = sorted(p for p in lay.pairs.glob("*") if p.is_dir())
        expanded += cells if cells and not lay.evals.is_dir() else [d]
    runs = [analyse(load_run(d), reference, resamples, seed) for d in expanded]
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, render_html(runs, max_questions, max_samples))
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
