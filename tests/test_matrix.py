"""A teachers x students x methods matrix in one run folder, every stage done once.

Two tiny teachers and one tiny student first; then a second student is added to the
same config and run again: the teachers' samples and verifications, the first
student's training and every finished evaluation must be reused, not redone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ekt.pipeline.config import load_config
from ekt.pipeline.experiment import run_experiment
from ekt.pipeline.matrix import slug

CONFIG = """\
name: matrix
data_dir: {data_dir}
teachers: [{t1}, {t2}]
students: [{students}]
methods: [ekt, supervised]
train_limit: 4
device: cpu
teacher_sampling: {{n: 2, temperature: 1.0, max_new_tokens: 12, seed: 3, batch_size: 4}}
train: {{warmup_steps: 0, batch_size: 2, per_device_train_batch_size: 2, max_steps: 2}}
eval: {{limit: 2, n: 2, k: [1, 2], max_new_tokens: 8, batch_size: 4, seed: 5}}
sandbox: {{workers: 1, timeout: 5}}
"""


@pytest.fixture(scope="module")
def models(tiny_model_dir, tmp_path_factory):
    from conftest import amplified_model as _variant

    base = tmp_path_factory.mktemp("models")
    return {
        "t1": tiny_model_dir,
        "t2": _variant(tiny_model_dir, base / "teacher-b", 30.0),
        "s2": _variant(tiny_model_dir, base / "student-b", 3.0),
    }


def _mtimes(folder: Path) -> dict[str, int]:
    """The costly outputs (samples, executions, weights) and when they were written.
    (scores.json is recomputed from the records on every run, with its own wall time.)"""
    costly = ("*/samples/*.jsonl", "*executions.jsonl", "*.safetensors", "*train_summary.json")
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns
        for p in folder.rglob("*")
        if p.is_file() and any(p.match(g) for g in costly)
    }


@pytest.mark.slow
def test_matrix_shares_stages_and_adding_a_student_reuses_them(models, data_dir, tmp_path, capsys):
    t1, t2, s2 = models["t1"], models["t2"], models["s2"]
    fmt = {"data_dir": data_dir, "t1": t1, "t2": t2}
    cfg_path = tmp_path / "m.yaml"
    cfg_path.write_text(CONFIG.format(**fmt, students=t1))
    run = tmp_path / "run"
    res = run_experiment(load_config(cfg_path), run)
    out = capsys.readouterr().out
    assert out.count("== teacher ") == 2  # one sampling stage per teacher
    # ekt per cell (random tiny teachers find no correct program: nothing to train on); the
    # supervised student trained once, reused by the second cell
    assert out.count("== train ") == 4 and out.count("already trained") == 1
    assert out.count("this method is skipped") == 2
    labels = sorted((r["pair"], r["label"]) for r in res["rows"])
    c1, c2 = f"{slug(str(t1))}--{slug(str(t1))}", f"{slug(str(t2))}--{slug(str(t1))}"
    # each teacher evaluated once; base and supervised student once (shared); ekt per cell
    assert labels == sorted(
        [
            (c1, "teacher"),
            (c2, "teacher"),
            (c1, "student-base"),
            (c1, "student-supervised"),
            (c1, "student-ekt"),
            (c2, "student-ekt"),
        ]
    )
    for c in (c1, c2):  # every cell folder is a complete single-pair run (links included)
        cell = json.loads((run / "pairs" / c / "results.json").read_text())
        assert {r["label"] for r in cell["rows"]} >= {"teacher", "student-base", "student-ekt"}
    assert (run / "pairs" / c2 / "students/supervised").resolve() == (
        run / "pairs" / c1 / "students/supervised"
    ).resolve()
    md = (run / "results.md").read_text()
    assert f"{t2} -> {t1}" in md and f"{t2} (few-shot)" in md and f"— -> {t1}" in md
    html = (run / "report.html").read_text()
    assert "<svg" in html and c1 in html and c2 in html  # both cells, side by side
    from ekt.report.build import build_report

    (run / "report.html").unlink()  # `ekt report RUN_DIR` on the matrix folder rebuilds it
    assert build_report([run]) == run / "report.html" and c2 in (run / "report.html").read_text()

    shared = run / "shared"
    before = _mtimes(shared)
    assert len([k for k in before if k.endswith("executions.jsonl")]) >= 5
    # Add a student: the teachers' samples, verifications and evaluations, and the first
    # student's training and evaluations, are reused; only the new student's work runs.
    cfg_path.write_text(CONFIG.format(**fmt, students=f"{t1}, {s2}"))
    res = run_experiment(load_config(cfg_path), run)
    out = capsys.readouterr().out
    after = _mtimes(shared)
    for rel, stamp in before.items():
        assert after[rel] == stamp, f"{rel} was redone"
    assert out.count("(0 new)") >= 2  # both teachers: every sample already on disk
    # 4 cells x 2 methods: supervised trained once for the new student, reused 3 times
    assert out.count("== train ") == 8 and out.count("already trained") == 3
    assert out.count("this method is skipped") == 4 and len(list(shared.glob("student-*"))) == 2
    assert len({r["pair"] for r in res["rows"]}) == 4
    assert sum(r["label"] == "student-base" for r in res["rows"]) == 2  # one per student
