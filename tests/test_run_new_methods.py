"""grpo and on-policy distillation as methods of `ekt run`, on tiny models (fast suite):
settings from their run-config blocks, students evaluated like any other, costs recorded."""

import json

import yaml

from ekt.cli import main
from ekt.records import read_jsonl
from ekt.tiny import make_tiny_model

BASE = {
    "task": "basic_arithmetic",
    "train_limit": 4,
    "device": "cpu",
    "evaluate_teacher": False,
    "evaluate_base_student": False,
    "eval": {"limit": 2, "n": 1, "k": [1], "max_new_tokens": 16, "temperature": 0.0},
    "sandbox": {"workers": 1, "timeout": 3},
}
TRL = {"max_steps": 2, "save_steps": 1, "per_device_train_batch_size": 2,
       "max_completion_length": 12}  # fmt: skip


def _run(tmp_path, config: dict) -> dict:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**BASE, **config}))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 0
    return json.loads((tmp_path / "run" / "results.json").read_text())


def test_ekt_run_grpo(tmp_path, tiny_model_dir):
    results = _run(tmp_path, {
        "teacher": str(tiny_model_dir), "student": str(tiny_model_dir), "methods": ["grpo"],
        "grpo": {"trl": {**TRL, "num_generations": 2}},
    })  # fmt: skip
    (row,) = results["rows"]
    assert row["label"] == "student-grpo" and "pass@1" in row and "pairs" not in row
    out = tmp_path / "run" / "students" / "grpo"
    rollouts = [o for _, o in read_jsonl(out / "rollouts.jsonl")]
    assert [r["step"] for r in rollouts] == [1, 1, 2, 2]  # 2 steps x 2 completions
    cost = row["cost"]
    assert cost["student_tokens_generated"] == sum(r["n_tokens"] for r in rollouts) > 0
    assert cost["sandbox_executions"] == sum(r["status"] != "no_program" for r in rollouts)
    assert cost["teacher_tokens_sampled"] == 0 and cost["training_tokens"] > 0
    assert (tmp_path / "run" / "eval" / "student-grpo").is_dir()
    # the score beside its cost in results.md, and the reward chart in the report
    md = (tmp_path / "run" / "results.md").read_text()
    assert "| method | greedy pass@1 | teacher tokens sampled |" in md
    line = next(x for x in md.splitlines() if x.startswith("| grpo |"))
    assert f"| {cost['student_tokens_generated']:,} |" in line
    html = (tmp_path / "run" / "report.html").read_text()
    assert "GRPO mean reward per step" in html


def test_ekt_run_onpolicy(tmp_path, tiny_model_dir):
    teacher = make_tiny_model(tmp_path / "teacher", seed=1)  # same corpus: same tokenizer
    results = _run(tmp_path, {
        "teacher": str(teacher), "student": str(tiny_model_dir), "methods": ["on-policy"],
        "on_policy": {"trl": {**TRL, "learning_rate": 1e-2}},
    })  # fmt: skip
    (row,) = results["rows"]
    assert row["label"] == "student-on-policy" and "pass@1" in row
    summary = json.loads((tmp_path / "run/students/on-policy/summary.json").read_text())
    assert summary["steps"] == 2
    cost = row["cost"]
    assert cost["teacher_tokens_scored"] == cost["training_tokens"] > 0
    assert cost["student_tokens_generated"] > 0 and cost["sandbox_executions"] == 0
