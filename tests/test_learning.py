"""The learning check: a scaled-down EKT run with the embedded models on a procedural task
(configs/learning_check.yaml). The trained student must solve more held-out questions than
the base student, with the paired 95% interval of the difference above zero.

This is the test that fails when training, prompt layouts and evaluation stop agreeing:
every other test checks a part; this one checks that the parts together make a better model.
It runs the real presets (gemma3-270m teacher, smollm2-135m student) on two CPU cores in a
few minutes; `make test` runs it, `make test-fast` skips it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ekt.evaluation.stats import paired_intervals
from ekt.pipeline.config import load_config
from ekt.pipeline.experiment import run_experiment
from ekt.records import read_jsonl

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("reasoning_gym")


def _presets_available() -> bool:
    try:
        from ekt.models import resolve_model

        resolve_model("smollm2-135m")
        resolve_model("gemma3-270m")
    except Exception:  # noqa: BLE001 - a preset package missing: say so below
        return False
    return True


def _rows(run: Path, label: str) -> list[dict]:
    return [obj for _, obj in read_jsonl(run / "eval" / label / "problems.jsonl")]


@pytest.mark.slow
def test_the_ekt_student_learns_the_task(tmp_path, capsys):
    if not _presets_available():
        pytest.skip("the embedded presets are not installed (make setup installs them)")
    cfg = load_config(REPO / "configs" / "learning_check.yaml")
    t0 = time.time()
    run_experiment(cfg, str(tmp_path / "run"))
    seconds = time.time() - t0
    run = tmp_path / "run"
    base, ekt = _rows(run, "student-base"), _rows(run, "student-ekt")
    assert len(base) == len(ekt) == cfg.eval.limit
    diff = paired_intervals(ekt, base, [1])["pass@1"]
    solved_base = sum(r["c"] > 0 for r in base)
    solved_ekt = sum(r["c"] > 0 for r in ekt)
    pairs = sum(1 for _ in read_jsonl(run / "train_pairs.jsonl"))
    summary = (
        f"learning check: {pairs} pairs; base student {solved_base}/{len(base)}, ekt student "
        f"{solved_ekt}/{len(ekt)}; difference {diff.estimate:+.1%} "
        f"[{diff.low:+.1%}, {diff.high:+.1%}] in {seconds:.0f} s"
    )
    with capsys.disabled():
        print("\n" + summary)
    (run / "learning_check.json").write_text(json.dumps({"summary": summary}))
    assert solved_ekt > solved_base, summary
    assert diff.low > 0, summary
