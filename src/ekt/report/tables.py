"""The one results-table renderer: results.md, the console table of ``ekt run``, the matrix.

Every markdown table of results goes through ``table_lines``: the published
layout (teacher -> student, model, method, greedy pass@1, pass@k for each k,
maj@n, pairs), a cell per figure. A figure with an interval (``row["intervals"]``,
written by ``ekt.report.build.add_statistics``) prints as ``estimate [low, high]``,
one without as its estimate; both in percent with one decimal. The paper's claims
(``results["claims"]``, computed by ``ekt.report.claims``) render through ``claims_lines``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

NA = "—"


def pct(value: object) -> str:
    return f"{100 * value:.1f}" if isinstance(value, float) else NA


def pct_interval(iv: Mapping | None) -> str:
    """``estimate [low, high]`` in percent, from an interval's dict."""
    if not iv:
        return NA
    return f"{100 * iv['estimate']:.1f} [{100 * iv['low']:.1f}, {100 * iv['high']:.1f}]"


def pp_interval(iv: Mapping | None) -> str:
    """A paired difference in percentage points; ``*`` when its interval excludes 0."""
    if not iv:
        return NA
    star = "*" if iv["low"] > 0 or iv["high"] < 0 else ""
    return f"{100 * iv['estimate']:+.1f} [{100 * iv['low']:+.1f}, {100 * iv['high']:+.1f}]{star}"


def figure(row: Mapping, key: str) -> str:
    """One cell: the figure with its interval when the row has one."""
    iv = (row.get("intervals") or {}).get(key)
    return pct_interval(iv) if iv else pct(row.get(key))


def _markdown(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in rows]


def table_lines(ev: Mapping, rows: Sequence[tuple[str, str, Mapping]]) -> list[str]:
    """The published layout for ``rows`` of (chain, model label, result row); ``ev`` is the
    evaluation settings (``k``, ``n``)."""
    ks = list(ev.get("k") or [1])
    maj = f"maj@{ev.get('n', 'n')}"
    head = ["teacher -> student", "model", "method", "greedy pass@1"]
    head += [f"pass@{k}" for k in ks] + [maj, "pairs"]
    body = []
    for chain, model, r in rows:
        cells = [chain, model, str(r.get("method", "")), figure(r, "greedy_pass@1")]
        cells += [figure(r, f"pass@{k}") for k in ks] + [figure(r, maj), str(r.get("pairs", NA))]
        if r.get("skipped"):
            cells[3] = f"skipped: {r['skipped']}"
        body.append(cells)
    return _markdown(head, body)


COST_COLUMNS = (  # a method row's "cost" (ekt.methods.base.Cost): key, column
    ("teacher_tokens_sampled", "teacher tokens sampled"),
    ("teacher_tokens_scored", "teacher tokens scored"),
    ("student_tokens_generated", "student tokens generated"),
    ("training_tokens", "training tokens"),
    ("sandbox_executions", "sandbox executions"),
    ("seconds", "wall s"),
)


def cost_rows(results: Mapping) -> tuple[list[str], list[list[str]]]:
    """(head, body): each trained method's score beside what it spent."""
    rows = [r for r in results.get("rows", []) if isinstance(r.get("cost"), Mapping)]
    score = "greedy_pass@1" if any("greedy_pass@1" in r for r in rows) else "pass@1"
    head = ["method", score.replace("_", " "), *(c for _, c in COST_COLUMNS)]
    body = []
    for r in rows:
        cost = r["cost"]
        method = str(r.get("method", ""))
        if r.get("builds_on"):  # e.g. GRPO started from the EKT student: its cost included
            method += f" (after {r['builds_on']})"
        cells = [method, NA if r.get("skipped") else figure(r, score)]
        cells += [f"{cost.get(k, 0):,.0f}" if k != "seconds" else f"{cost.get(k, 0):.0f}"
                  for k, _ in COST_COLUMNS]  # fmt: skip
        body.append(cells)
    return head, body


def cost_lines(results: Mapping) -> list[str]:
    """The cost table of results.md (nothing for a run without method costs)."""
    head, body = cost_rows(results)
    if not body:
        return []
    return ["", "Cost of each method (from its records; a stage the methods share, as the "
            "teacher's sampling, counts in full for each method that uses it; a method run after "
            "another, on its student, includes that method's cost):", "",
            *_markdown(head, body)]  # fmt: skip


def transfer_lines(results: Mapping) -> list[str]:
    """One column group per task (the run's own first, then ``eval.tasks``): each model's
    greedy pass@1, pass@k at the largest k and majority vote on every task, side by side."""
    rows = [r for r in results.get("rows", []) if r.get("tasks")]
    if not rows:
        return []
    ev = results.get("eval") or {}
    k = max(ev.get("k") or [1])
    maj = f"maj@{ev.get('n', 'n')}"
    names = list(dict.fromkeys(t for r in rows for t in r["tasks"]))
    own = str(results.get("task") or "task")
    head = ["model", "method"]
    for name in [own, *names]:
        head += [f"{name} greedy pass@1", f"{name} pass@{k}", f"{name} {maj}"]
    body = []
    for r in rows:
        cells = [model_label(r), str(r.get("method", ""))]
        for scores in [r, *(r["tasks"].get(n, {}) for n in names)]:
            cells += [figure(scores, "greedy_pass@1"), figure(scores, f"pass@{k}"),
                      figure(scores, maj)]  # fmt: skip
        body.append(cells)
    sizes = ", ".join(
        f"{n} {next((r['tasks'][n].get('problems') for r in rows if n in r['tasks']), '?')}"
        for n in names
    )
    return ["", f"Transfer: the same models, prompts and budget on other tasks (questions: "
            f"{sizes}).", ""] + _markdown(head, body)  # fmt: skip


def model_label(row: Mapping) -> str:
    model = str(row.get("model", ""))
    return f"{model} (teacher)" if row.get("label") == "teacher" else model


def results_markdown(results: Mapping) -> str:
    """results.md of one run, from its results.json content.

    With ``statistics`` (after ``add_statistics``) the figures carry their 95%
    intervals and the paired differences against the reference follow; with
    ``claims`` the paper's claims and their verdicts close the tables.
    """
    ev = results.get("eval") or {}
    chain = f"{results.get('teacher') or '?'} -> {results.get('student') or '?'}"
    rows = list(results.get("rows", []))
    ordered = [r for r in rows if not r.get("skipped")] + [r for r in rows if r.get("skipped")]
    lines = table_lines(ev, [(chain, model_label(r), r) for r in ordered])
    n_q = max((int(r["problems"]) for r in rows if "problems" in r), default=0)
    stats = results.get("statistics")
    how = "Figures are percentages."
    if stats:
        how = (
            f"Figures are percentages with {stats.get('level', 0.95):.0%} intervals from a "
            f"percentile bootstrap over questions ({stats.get('resamples')} resamples, "
            f"seed {stats.get('seed')})."
        )
    lines += [
        "",
        f"{n_q} {ev.get('split', 'test')} questions; greedy decoding for pass@1; "
        f"{ev.get('n', '?')} samples at temperature {ev.get('temperature', '?')} for pass@k "
        f"(unbiased estimator) and majority vote. {how}",
    ]
    lines += cost_lines(results)
    lines += transfer_lines(results)
    lines += _paired_lines(results, ks=list(ev.get("k") or [1]), n=ev.get("n"))
    if results.get("claims"):
        lines += claims_lines([("", results["claims"])])
    notes = list((stats or {}).get("notes", [])) + _merged_row_notes(rows)
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _paired_lines(results: Mapping, ks: Sequence[int], n: object) -> list[str]:
    pd = results.get("paired_differences") or {}
    ref_label, paired = pd.get("reference"), pd.get("rows") or {}
    by_label = {r.get("label"): r for r in results.get("rows", [])}
    if not ref_label or not paired:
        return []
    ref = by_label.get(ref_label, {})
    method = str(ref.get("method", ref_label))
    wanted = ["greedy_pass@1"] + [f"pass@{k}" for k in ks] + [f"maj@{n}"]
    keys = [k for k in wanted if any(k in d for d in paired.values())]
    body = [
        [model_label(by_label.get(label, {})), str(by_label.get(label, {}).get("method", ""))]
        + [pp_interval(d.get(k)) for k in keys]
        for label, d in paired.items()
    ]
    return [
        "",
        f"Paired differences vs {method} (row − {method}, percentage points, "
        "same questions, 95% bootstrap interval; * = interval excludes 0):",
        "",
        *_markdown(["model", "method", *keys], body),
    ]


# -- the paper's claims (computed by ekt.report.claims, read here from results.json) ------


def claim_columns(sections: Sequence[Mapping]) -> list[str]:
    """The difference figures any claim of ``sections`` has: pass@k by k, then greedy."""
    keys = {k for s in sections for c in (s.get("rows") or {}).values() for k in c["differences"]}
    ks = sorted(int(k.removeprefix("pass@")) for k in keys if k.startswith("pass@"))
    return [f"pass@{k}" for k in ks] + sorted(k for k in keys if not k.startswith("pass@"))


def claim_sides(claim: Mapping) -> str:
    """``left − right`` as the section names them; the best student says which model it was."""

    def side(name: str, declared: str, method: object) -> str:
        return f"{name} ({method})" if declared == "best student" and method else name

    left = side(claim["left_name"], claim["left"], claim.get("left_method"))
    right = side(claim["right_name"], claim["right"], claim.get("right_method"))
    return f"{left} − {right}"


def claim_verdict(claim: Mapping) -> str:
    """The verdict in words: "supported at this scale" (decided on the claim's primary
    metric, named when it is not pass@1), or "not run (why)"."""
    verdict = str(claim["verdict"])
    if not claim.get("differences"):
        return f"{verdict} ({claim['reason']})" if claim.get("reason") else verdict
    metric = claim.get("metric")
    return f"{verdict} at this scale" + (f" (on {metric})" if metric != "pass@1" else "")


def best_student_line(section: Mapping) -> str:
    best = section.get("best_student")
    if not best:
        return "Best student: none (no trained student was evaluated)."
    return (
        f"Best student: {best['method']} ({best['label']}), the trained student with the "
        f"highest {best['metric']} ({pct(float(best['estimate']))}%)."
    )


def claims_lines(sections: Sequence[tuple[str, Mapping]]) -> list[str]:
    """The claims table of results.md: a row per claim, a row group per run (a ``run``
    column when there are several), each figure ``left − right`` with its interval."""
    if not sections:
        return []
    several = len(sections) > 1
    cols = claim_columns([s for _, s in sections])
    first = sections[0][1]
    primary = first.get("primary_metric", "pass@1")
    head = ["run"] * several + ["claim", "difference", "verdict", "questions", *cols]
    body = []
    for name, section in sections:
        for claim in (section.get("rows") or {}).values():
            diffs = claim["differences"]
            cells = [name] * several + [claim["claim"], claim_sides(claim), claim_verdict(claim)]
            cells += [str(claim["questions"]) if diffs else NA]
            body.append(cells + [pp_interval(diffs.get(k)) for k in cols])
    lines = [
        "",
        "Claims (computed from the per-question records): each difference is left − right in "
        "percentage points on the questions both models answered, with a "
        f"{first.get('level', 0.95):.0%} paired bootstrap interval ({first.get('resamples')} "
        f"resamples, seed {first.get('seed')}; * = interval excludes 0). The verdict is on "
        f"{primary}: supported when the interval is entirely above 0, contradicted when "
        "entirely below, not distinguishable when it contains 0; all at this scale (these "
        "models, this many questions).",
        "",
        *_markdown(head, body),
        "",
    ]
    return lines + [(f"{name}: " if several else "") + best_student_line(s) for name, s in sections]


def _merged_row_notes(rows: Sequence[Mapping]) -> list[str]:
    """Per-model notes, models with the same note merged into one line."""
    merged: dict[str, list[str]] = {}
    for r in rows:
        for note in r.get("notes") or []:
            merged.setdefault(note, []).append(str(r.get("label")))
    return [f"{', '.join(labels)}: {note}" for note, labels in merged.items()]


def matrix_markdown(results: Mapping) -> str:
    """results.md of a matrix run: a row per evaluation; teacher-free rows show no teacher.

    The cells' intervals stay in each cell's own results.md; this overview shows estimates.
    """
    rows: list[tuple[str, str, Mapping]] = []
    for full in results["rows"]:
        r = {k: v for k, v in full.items() if k != "intervals"}
        if r.get("label") == "teacher":
            rows.append((f"{r['teacher']} (few-shot)", f"{r['teacher']} (teacher)", r))
        # uses_teacher: from the method registry (a results.json written before it: by name)
        elif r.get("uses_teacher", r.get("method") in ("ekt", "kd", "seq-kd")):
            rows.append((f"{r['teacher']} -> {r['student']}", r["student"], r))
        else:  # no teacher involved: base, supervised, expert iteration
            rows.append((f"— -> {r['student']}", r["student"], r))
    return "\n".join(table_lines(results["eval"], rows)) + "\n"
