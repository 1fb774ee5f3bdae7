"""A plan's forms: the ``Stage`` and ``Plan`` records, their totals and JSON, and the text.

``ekt.pipeline.plan`` fills these records (one ``Stage`` per stage ``ekt run`` would
do, a ``Plan`` of them all); this module is what a plan *is* once made and how it
reads: ``Plan.totals`` (a shared stage counted once, as it is listed once),
``Plan.to_dict``/``to_json`` for ``ekt run --dry-run --json``, ``Plan.summary`` (the
one-line total), and ``render``, the table ``ekt run --dry-run`` prints.

The records live here rather than in ``plan.py`` because their one-line summary and
the table share the number formatting (``num``), and ``plan.py`` re-exports
``render``: ``render`` needs ``Plan``, so both must sit below the planner for the
modules of ``ekt.pipeline`` to stay free of import cycles. Nothing here reads files
or tokenizers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

# -- the plan ------------------------------------------------------------------------------


@dataclass
class Stage:
    """One stage's bill. ``*_max`` are bounds (the budget's every sample, ``max_new_tokens``
    each); ``expected_*`` use what a previous run measured, and equal the bounds where
    nothing was measured."""

    key: str  # its identity: a stage matrix cells share is listed once
    name: str
    model: str = ""
    cell: str = ""  # the matrix cell, "shared", or "" (a single-pair run)
    prompts: int = 0  # distinct prompts (questions)
    samples_max: float = 0
    samples_expected: float = 0
    prompt_tokens_max: float = 0
    prompt_tokens_expected: float = 0
    completion_tokens_max: float = 0
    completion_tokens_expected: float = 0
    cost_max: float | None = None
    cost_expected: float | None = None
    programs: float = 0  # programs the sandbox runs (verification)
    pairs: int | None = None  # training stages: pairs (exact when a previous run has them)
    steps: int | None = None  # optimizer steps
    exact_pairs: bool = False  # False: pairs (and steps) are an upper bound
    approx_prompt: bool = False  # prompt tokens estimated (no local tokenizer)
    budget: dict[str, Any] | None = None  # full against adaptive (teacher sampling)
    notes: list[str] = field(default_factory=list)
    api: bool = False  # sampled through the openai backend (a server's speed)
    measured_seconds: float | None = None  # the previous run's time of this stage
    measured_tokens: float | None = None  # ... and the completion tokens it made in it
    seconds: float | None = None  # estimated wall time (ekt.pipeline.plan_estimate)
    memory_gb: float | None = None  # estimated memory held (weights, optimizer state)
    estimate: str = ""  # what the time and memory rest on (measured, or the rate assumed)


@dataclass
class Plan:
    name: str
    run_dir: str
    cells: list[str]
    stages: list[Stage]
    notes: list[str] = field(default_factory=list)

    def totals(self) -> dict[str, Any]:
        keys = (
            "samples_max",
            "samples_expected",
            "prompt_tokens_max",
            "prompt_tokens_expected",
            "completion_tokens_max",
            "completion_tokens_expected",
            "programs",
        )
        out: dict[str, Any] = {k: round(sum(getattr(s, k) for s in self.stages)) for k in keys}
        for k in ("cost_max", "cost_expected"):
            costs = [getattr(s, k) for s in self.stages if getattr(s, k) is not None]
            out[k] = round(sum(costs), 6) if costs else None
        times = [s.seconds for s in self.stages if s.seconds is not None]
        out["seconds"] = round(sum(times), 3) if times else None
        out["stages_without_time"] = sum(
            1 for s in self.stages if s.seconds is None and s.estimate.startswith("no estimate")
        )
        mems = [s.memory_gb for s in self.stages if s.memory_gb is not None]
        out["memory_gb_peak"] = max(mems) if mems else None
        return out

    def summary(self) -> str:
        t = self.totals()
        tokens = t["prompt_tokens_max"] + t["completion_tokens_max"]
        exp = t["prompt_tokens_expected"] + t["completion_tokens_expected"]
        cost = "no price table" if t["cost_max"] is None else f"${t['cost_max']:,.2f} at most"
        if t["cost_expected"] is not None and t["cost_expected"] != t["cost_max"]:
            cost += f", ${t['cost_expected']:,.2f} expected"
        line = f"total: {num(t['samples_max'])} samples"
        if t["samples_expected"] != t["samples_max"]:
            line += f" ({num(t['samples_expected'])} expected)"
        line += f", {num(tokens)} tokens at most"
        if exp != tokens:
            line += f" ({num(exp)} expected)"
        line += f", cost: {cost}"
        if t["seconds"] is not None:
            line += f", time: about {_duration(t['seconds'])}"
            if t["stages_without_time"]:
                line += f" (+ {t['stages_without_time']} stage(s) not estimated)"
        if t["memory_gb_peak"] is not None:
            line += f", peak memory: about {t['memory_gb_peak']:.1f} GB"
        return line

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "run_dir": self.run_dir,
            "cells": self.cells,
            "stages": [asdict(s) for s in self.stages],
            "totals": self.totals(),
            "notes": self.notes,
            "summary": self.summary(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# -- the printed plan ----------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _memory(gb: float | None) -> str:
    return "-" if gb is None else f"{gb:.1f}G" if gb >= 0.1 else f"{gb * 1000:.0f}M"


def num(x: float | int | None) -> str:
    return "-" if x is None else f"{round(x):,}"


def _cost(x: float | None) -> str:
    return "-" if x is None else f"${x:,.2f}" if x >= 0.01 or x == 0 else f"${x:.4f}"


def _pair(a: float, b: float) -> str:
    return num(a) if round(a) == round(b) else f"{num(b)} / {num(a)}"


def render(plan: Plan, command: str = "") -> str:
    """The plan as text: a table of stages (expected / at most where they differ), the
    adaptive budget's projection, notes, and a one-line summary at the end."""
    lines = [f"plan of run {plan.name} ({plan.run_dir}): no model is loaded, only tokenizers"]
    if command:
        lines[0] = f"{command}: {lines[0]}"
    short = {c: f"cell {i}" for i, c in enumerate(plan.cells, 1)} if len(plan.cells) > 1 else {}
    for cell, label in short.items():
        lines.append(f"{label}: {cell}")
    lines.append(
        "numbers: expected / at most where they differ (at most: every sample of the budget, "
        "max_new_tokens each; expected: what a previous run measured)"
    )
    head = ("stage", "model", "prompts", "samples", "prompt tok", "completion tok", "cost",
            "time", "memory")  # fmt: skip
    rows = [head]
    details: list[str] = []
    for s in plan.stages:
        where = short.get(s.cell, s.cell)
        stage = f"{s.name} [{where}]" if where else s.name
        if s.programs and not s.samples_max:
            rows.append((stage, "-", num(s.prompts), f"{num(s.programs)} programs", "-", "-", "-",
                         _duration(s.seconds), _memory(s.memory_gb)))  # fmt: skip
        elif s.pairs is not None and not s.samples_max:
            what = (
                f"{num(s.pairs)} pairs, {num(s.steps)} step{'' if s.steps == 1 else 's'}"
                if s.steps is not None
                else (f"{num(s.pairs)} passes")
            )
            rows.append((stage, s.model, "-", ("" if s.exact_pairs else "<= ") + what, "-", "-",
                         "-", _duration(s.seconds), _memory(s.memory_gb)))  # fmt: skip
        else:
            cost = _cost(s.cost_max)
            if s.cost_expected is not None and s.cost_expected != s.cost_max:
                cost = f"{_cost(s.cost_expected)} / {cost}"
            prompt = _pair(s.prompt_tokens_max, s.prompt_tokens_expected)
            rows.append((
                stage, s.model, num(s.prompts), _pair(s.samples_max, s.samples_expected),
                ("~" if s.approx_prompt else "") + prompt,
                _pair(s.completion_tokens_max, s.completion_tokens_expected), cost,
                _duration(s.seconds), _memory(s.memory_gb),
            ))  # fmt: skip
        if s.budget:
            details.append(f"{stage}: {_budget_line(s.budget)}")
        details += [f"{stage}: {n}" for n in s.notes]
        if s.estimate:
            details.append(f"{stage}: time/memory {s.estimate}")
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    for r in rows:
        cells = [
            str(c).ljust(w) if i < 2 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    lines.append("notes:")
    lines += [f"  {d}" for d in (*details, *plan.notes)]
    t = plan.totals()
    lines.append(
        f"tokens: {_pair(t['prompt_tokens_max'], t['prompt_tokens_expected'])} prompt + "
        f"{_pair(t['completion_tokens_max'], t['completion_tokens_expected'])} completion; "
        f"sandbox: {num(t['programs'])} programs (besides the evaluations')"
    )
    lines.append(plan.summary())
    return "\n".join(lines)


def _budget_line(b: dict[str, Any]) -> str:
    text = f"budget {b['configured']}: full {num(b['full'])} samples"
    if "adaptive" in b:
        saving = b["full"] / b["adaptive"] if b["adaptive"] else float("inf")
        text += (
            f" vs adaptive {num(b['adaptive'])} expected ({saving:.1f}x fewer; pass@1 "
            f"measured on {b['measured_questions']} questions, mean "
            f"{b['mean_pass_at_1']:.3f})"
        )
    if "assumed" in b:
        text += " vs adaptive, ASSUMING pass@1 " + ", ".join(
            f"p={p}: {num(v)}" for p, v in b["assumed"].items()
        )
    return text + f" (round_size {b['round_size']})"


__all__ = ["Plan", "Stage", "num", "render"]
