"""The one results-table renderer (results.md, the console, the matrix) and the templates'
autoescaping, on hand-made results with known figures."""

from __future__ import annotations

from ekt.report.charts import Axes, Series, bar_chart, interval_chart, line_chart
from ekt.report.tables import matrix_markdown, results_markdown, table_lines
from ekt.report.templating import render

EV = {"split": "test", "n": 4, "k": [1, 4], "temperature": 0.6}


def _row(label, method, p1, **extra):
    return {
        "label": label,
        "model": "tiny-student" if label != "teacher" else "big-teacher",
        "method": method,
        "problems": 50,
        "greedy_pass@1": p1,
        "pass@1": p1,
        "pass@4": 0.5,
        "maj@4": 0.25,
        **extra,
    }


def test_table_lines_layout_plain_and_with_intervals():
    iv = {"estimate": 0.125, "low": 0.0625, "high": 0.25, "questions": 50, "level": 0.95}
    rows = [
        ("a -> b", "b", _row("student-ekt", "ekt", 0.125, pairs=7)),
        ("a -> b", "b", _row("student-kd", "kd", 0.5, intervals={"pass@1": iv})),
        ("a -> b", "b", {"label": "student-x", "method": "seq-kd", "skipped": "no pairs"}),
    ]
    lines = table_lines(EV, rows)
    assert lines[0] == (
        "| teacher -> student | model | method | greedy pass@1 | pass@1 | pass@4 | maj@4 | pairs |"
    )
    assert lines[1] == "|" + "---|" * 8
    assert lines[2] == "| a -> b | b | ekt | 12.5 | 12.5 | 50.0 | 25.0 | 7 |"
    assert lines[3] == "| a -> b | b | kd | 50.0 | 12.5 [6.2, 25.0] | 50.0 | 25.0 | — |"
    assert lines[4] == "| a -> b | b | seq-kd | skipped: no pairs | — | — | — | — |"


def test_results_markdown_plain_then_with_statistics():
    results = {
        "teacher": "big-teacher",
        "student": "tiny-student",
        "eval": EV,
        "rows": [
            _row("teacher", "few-shot", 0.75),
            {"label": "student-kd", "method": "kd", "pairs": 0, "skipped": "no pairs"},
            _row("student-ekt", "ekt", 0.25, pairs=9),
        ],
    }
    md = results_markdown(results)
    body = md.splitlines()
    assert body[2].startswith("| big-teacher -> tiny-student | big-teacher (teacher) | few-shot |")
    assert body[3].startswith("| big-teacher -> tiny-student | tiny-student | ekt | 25.0 |")
    assert body[4].endswith("| skipped: no pairs | — | — | — | 0 |")  # skipped rows last
    assert "50 test questions" in md and md.endswith("Figures are percentages.\n")
    iv = {"estimate": 0.5, "low": 0.25, "high": 0.75, "questions": 50, "level": 0.95}
    diff = {"estimate": 0.5, "low": 0.1, "high": 0.9, "questions": 50, "level": 0.95}
    results["rows"][0]["intervals"] = {"pass@4": iv}
    results["rows"][0]["notes"] = ["pass@4: a note"]
    results["statistics"] = {"resamples": 300, "seed": 7, "level": 0.95, "notes": ["run note"]}
    results["paired_differences"] = {
        "reference": "student-ekt",
        "rows": {"teacher": {"pass@4": diff}},
    }
    md = results_markdown(results)
    assert "| few-shot | 75.0 | 75.0 | 50.0 [25.0, 75.0] | 25.0 | — |" in md
    assert "95% intervals from a percentile bootstrap over questions (300 resamples, seed 7)" in md
    assert "Paired differences vs ekt (row − ekt" in md
    assert "| big-teacher (teacher) | few-shot | +50.0 [+10.0, +90.0]* |" in md
    assert md.endswith("Notes:\n- run note\n- teacher: pass@4: a note\n")


def test_matrix_markdown_shows_estimates_and_chains():
    iv = {"estimate": 0.5, "low": 0.25, "high": 0.75, "questions": 50, "level": 0.95}
    results = {
        "eval": EV,
        "rows": [
            {**_row("teacher", "few-shot", 0.75), "teacher": "T", "student": "S"},
            {**_row("student-ekt", "ekt", 0.25), "teacher": "T", "student": "S", "intervals": {}},
            {**_row("student-base", "none", 0.0), "teacher": "T", "student": "S"},
        ],
    }
    results["rows"][1]["intervals"] = {"pass@4": iv}
    lines = matrix_markdown(results).splitlines()
    assert lines[2].startswith("| T (few-shot) | T (teacher) | few-shot | 75.0 |")
    assert lines[3] == "| T -> S | S | ekt | 25.0 | 25.0 | 50.0 | 25.0 | — |"
    assert lines[4].startswith("| — -> S | S | none | 0.0 |")


def test_templates_escape_everything_from_records():
    evil = "<script>alert('x')</script>"
    page = render("chart_empty.html.j2", title=evil)
    assert "<script>" not in page and "&lt;script&gt;" in page
    s = Series(evil, [1, 2], [0.1, 0.2], "#000000", [0.0, 0.1], [0.2, 0.3], [evil, evil])
    for svg in (
        line_chart([s], Axes(evil, evil, evil, evil), pct=True),
        bar_chart([(evil, 3.0)], Axes(evil, evil, evil, evil)),
    ):
        assert "<script>" not in svg and "&lt;script&gt;" in svg and svg.count("<svg") == 1
    from ekt.evaluation.stats import Interval

    forest = interval_chart([(evil, Interval(0.2, 0.1, 0.3, 40), "#000")], evil, diff=True)
    assert "<script>" not in forest and "+20.0 [+10.0, +30.0]" in forest


def test_a_step_axis_ends_at_the_last_step():
    """The x ticks of a training-loss chart are steps that happened: a log of one step has
    the one tick, centred; a longer log ends at its last step."""
    import re

    def ticks(xs):
        s = Series("ekt", xs, [1.0 + 0.1 * i for i in range(len(xs))], "#000000")
        svg = line_chart([s], Axes("loss", "optimizer step", "loss"), y_zero=False)
        return [m for m in re.findall(r'class="tk" text-anchor="middle">([^<]+)<', svg)]

    assert ticks([2]) == ["2"]
    assert ticks([2, 4, 6, 8])[-1] == "8"
