"""A comparison matrix: teachers x students x methods in one run folder, each stage done once.

``ekt run`` with ``teachers:`` and/or ``students:`` lists runs every (teacher,
student) cell as an ordinary single-pair run (``ekt.pipeline.run.Runner``) in its own
folder, and points the stages that do not depend on the whole pair at one shared
copy, so nothing is sampled, verified, trained or evaluated twice::

    runs/<name>/
      config.yaml                       the matrix config as given
      pairs/<teacher>--<student>/       a complete single-pair run folder (ekt report reads it)
      shared/teacher-<teacher>/         teacher samples + verification, its few-shot evaluation
      shared/supervised/                reference programs (no model involved)
      shared/student-<student>/         supervised and expert-iteration students, base and
                                        their evaluations (no teacher involved)
      results.json  results.md          every cell's rows, each shared row once
      report.html                       all cells side by side

A pair folder reaches a shared stage through a symbolic link, so each pair folder
reads like any other run. What depends on both models (the ekt and kd students,
the seq-kd pairs, their evaluations) lives in the pair folder. The stages are
keyed by what they depend on: adding a student reuses every teacher's samples and
verifications; adding a method reuses everything already there; a changed setting
is caught per pair by the run folder's own config check (``--force`` redoes only
what it invalidates).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import time
from pathlib import Path

from ekt.errors import EktError
from ekt.generation.backends import make_sampler
from ekt.layout import RunLayout
from ekt.methods.registry import REGISTRY
from ekt.pipeline.config import RunConfig, dump_config, plain
from ekt.pipeline.run import MatrixCell, Runner, SamplerFactory
from ekt.records import write_json_atomic, write_text_atomic
from ekt.report.build import build_report
from ekt.report.tables import matrix_markdown

# Stage folders (relative to a pair folder) shared by every pair with the same ...
TEACHER_SHARED = ("teacher", "eval/teacher")  # ... teacher
COMMON_SHARED = ("supervised",)  # ... data (all pairs)
STUDENT_SHARED = (  # ... student: the base, and the methods that use no teacher
    "eval/student-base",
    *(g for m in REGISTRY.values() if not m.uses_teacher for g in m.outputs()[len(m.writes):]),
)


def slug(spec: str) -> str:
    """A folder name for a model spec: readable, and distinct for distinct local paths."""
    path = Path(spec).expanduser()
    if path.exists():
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:6]
        name = path.stem if path.is_file() else path.name
        return f"{re.sub(r'[^A-Za-z0-9._-]+', '-', name)[:40]}-{digest}"
    return re.sub(r"[^A-Za-z0-9._-]+", "--", spec).strip("-")[:80] or "model"


def _link(pair_dir: Path, rel: str, target: Path) -> None:
    """``pair_dir/rel`` -> ``target`` (a directory, created now so the link never dangles)."""
    target.mkdir(parents=True, exist_ok=True)
    link = pair_dir / rel
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        if link.resolve() == target.resolve():
            return
        link.unlink()
    elif link.exists():
        raise EktError(f"{link}: exists and is not the shared stage {target}; remove it or --out")
    # relative, so the run folder can be moved or copied as a whole
    link.symlink_to(os.path.relpath(target.resolve(), link.parent.resolve()), True)


def _linker(root: Path, pair_dir: Path, t_slug: str, s_slug: str):
    def link() -> None:
        shared = RunLayout(root).shared
        for rel in TEACHER_SHARED:
            _link(pair_dir, rel, shared / f"teacher-{t_slug}" / rel)
        for rel in COMMON_SHARED:
            _link(pair_dir, rel, shared / rel)
        for rel in STUDENT_SHARED:
            _link(pair_dir, rel, shared / f"student-{s_slug}" / rel)

    return link


def pair_config(cfg: RunConfig, teacher: str, student: str) -> RunConfig:
    return dataclasses.replace(
        cfg,
        name=f"{cfg.name}/{slug(teacher)}--{slug(student)}",
        teacher=teacher,
        student=student,
        teachers=[],
        students=[],
    )


def _dedupe(rows: list[dict]) -> list[dict]:
    """Each evaluation once: a shared stage's row comes back from every pair that links it."""
    seen: set[str] = set()
    out = []
    for r in rows:
        key = r.get("eval_dir") or f"{r.get('pair')}:{r.get('label')}"
        if key in seen:
            continue
        seen.add(key)
        out.append(r)
    return out


def run_matrix(
    cfg: RunConfig,
    out_dir: str | Path | None = None,
    force: bool = False,
    sampler_factory: SamplerFactory = make_sampler,
) -> dict:
    layout = RunLayout.of(cfg.name, out_dir)
    root = layout.dir
    root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(layout.config, dump_config(cfg))
    cells = cfg.pairs()
    print(
        f"matrix {cfg.name}: {len(cfg.teacher_list())} teacher(s) x "
        f"{len(cfg.student_list())} student(s) x {len(cfg.methods)} method(s) "
        f"= {len(cells)} cell(s) in {root}"
    )
    t0 = time.time()
    rows: list[dict] = []
    pair_dirs: list[Path] = []
    cell_results = {}
    redone: set[Path] = set()  # shared stages --force emptied: once, not once per cell
    for i, (teacher, student) in enumerate(cells, 1):
        t_slug, s_slug = slug(teacher), slug(student)
        name = f"{t_slug}--{s_slug}"
        pair_dir = layout.pair(name)
        pair_dir.mkdir(parents=True, exist_ok=True)
        link = _linker(root, pair_dir, t_slug, s_slug)
        link()
        print(f"\n==== cell {i}/{len(cells)}: {teacher} -> {student} ({pair_dir})")
        pcfg = pair_config(cfg, teacher, student)
        runner = Runner(pcfg, pair_dir, force, sampler_factory, MatrixCell(root, redone, link))
        res = runner.run()
        cell_results[name] = res
        pair_dirs.append(pair_dir)
        for r in res.get("rows", []):
            ev = RunLayout(pair_dir).eval(str(r.get("label", ""))).dir
            rows.append(
                {
                    **r,
                    "pair": name,
                    "teacher": teacher,
                    "student": student,
                    "eval_dir": str(ev.resolve()) if ev.exists() else None,
                }
            )
    rows = _dedupe(rows)
    results = {
        "name": cfg.name,
        "note": cfg.note,
        "teachers": cfg.teacher_list(),
        "students": cfg.student_list(),
        "methods": cfg.methods,
        "eval": plain(cfg.eval),
        "rows": rows,
        "cells": {
            k: {"dir": f"pairs/{k}", "statistics": v.get("statistics")}
            for k, v in cell_results.items()
        },
        "seconds": round(time.time() - t0, 1),
    }
    write_json_atomic(layout.results, results)
    write_text_atomic(layout.results_md, matrix_markdown(results))
    try:
        print(f"report: {build_report(pair_dirs, layout.report)}")
    except Exception as e:  # the figures are on disk; `ekt report` can rebuild the page
        print(f"report: report.html not built ({type(e).__name__}: {e})")
    return results
