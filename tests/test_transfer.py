"""configs/transfer.yaml, run as a user runs it but with its tasks pointed at fixture files
(tests/fixtures/tasks, each in its dataset's real schema) and tiny models: every model is
evaluated on every task, results.md shows one column group per task, and the training data
is decontaminated against every evaluation set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "tasks"

pytestmark = pytest.mark.slow


def test_transfer_config_on_fixture_tasks(tmp_path, tiny_model_dir):
    cfg = yaml.safe_load((REPO / "configs" / "transfer.yaml").read_text())
    assert cfg["eval"]["tasks"] == ["svamp", "gsm-hard"]
    run = tmp_path / "run"
    task_data = json.dumps(
        {"svamp": str(FIXTURES / "svamp"), "gsm-hard": str(FIXTURES / "gsm-hard")}
    )
    argv = [
        sys.executable,
        "-m",
        "ekt",
        "run",
        str(REPO / "configs" / "transfer.yaml"),
        "--out",
        str(run),
        "--data_dir",
        str(FIXTURES / "gsm8k"),
        "--teacher",
        str(tiny_model_dir),
        "--student",
        str(tiny_model_dir),
        "--device",
        "cpu",
        "--train_limit",
        "3",
        "--teacher_sampling.n",
        "2",
        "--teacher_sampling.max_new_tokens",
        "8",
        "--train.max_steps",
        "1",
        "--train.per_device_train_batch_size",
        "2",
        "--eval.n",
        "2",
        "--eval.k",
        "1,2",
        "--eval.max_new_tokens",
        "8",
        "--eval.limit",
        "2",
        "--eval.task_data",
        task_data,
        "--sandbox.workers",
        "1",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    evaluated = [row for row in results["rows"] if not row.get("skipped")]
    assert evaluated
    for row in evaluated:
        assert set(row["tasks"]) == {"svamp", "gsm-hard"}
        assert row["tasks"]["svamp"]["problems"] == 2
        assert row["tasks"]["gsm-hard"]["problems"] == 2
        label = row["label"]
        assert (run / "eval" / label / "tasks" / "svamp" / "scores.json").is_file()
    problems = [
        json.loads(x)
        for x in (run / "eval" / "teacher" / "tasks" / "svamp" / "problems.jsonl").open()
    ]
    assert problems[0]["problem_id"].startswith("svamp/test/chal-")
    md = (run / "results.md").read_text()
    assert "Transfer:" in md and "svamp greedy pass@1" in md and "gsm-hard pass@2" in md
    assert "gsm8k greedy pass@1" in md
    html = (run / "report.html").read_text()
    assert "transfer" in html and "<th colspan=\"3\">svamp</th>" in html
    assert "svamp/test 0" in html  # the contamination counts per evaluation set
    # the filter knew every evaluation set (counts per set in results.json)
    contaminated = results["stages"]["filter"]["contaminated"]
    assert set(contaminated) == {"gsm8k/test", "svamp/test", "gsm-hard/test"}
