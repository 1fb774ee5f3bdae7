"""On-policy distillation from a teacher with another tokenizer as a method of `ekt run`
(``on_policy.teacher: null``, the run's teacher): it trains through ekt's ULD route
(ekt.training.onpolicy_uld) instead of raising, and the cost record counts the teacher's
own tokens. Fast: two tiny models; slow: the embedded pair (gemma3-270m teaches
smollm2-135m) for two steps."""

import json

import pytest
from test_run_new_methods import TRL, _run
from tiny_models import make_tiny_model

from ekt.records import read_jsonl


def _check(tmp_path, results: dict) -> None:
    (row,) = results["rows"]
    assert row["label"] == "student-on-policy" and "pass@1" in row
    out = tmp_path / "run" / "students" / "on-policy"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2
    log = [o for _, o in read_jsonl(out / "train_log.jsonl") if "loss" in o]
    assert [o["step"] for o in log] == [1, 2] and all(o["loss"] > 0 for o in log)
    cost = row["cost"]
    # the teacher read its own tokenisation of the prompts and completions
    assert cost["teacher_tokens_scored"] == summary["teacher_tokens"] == log[-1]["teacher/tokens"]
    assert cost["teacher_tokens_scored"] > 0 and cost["training_tokens"] > 0
    assert cost["student_tokens_generated"] > 0 and cost["teacher_tokens_sampled"] == 0


def test_ekt_run_onpolicy_with_a_teacher_of_another_tokenizer(tmp_path, tiny_model_dir):
    teacher = make_tiny_model(tmp_path / "teacher", vocab_size=300, seed=1)  # other merges
    results = _run(tmp_path, {
        "teacher": str(teacher), "student": str(tiny_model_dir), "methods": ["on-policy"],
        "on_policy": {"teacher": None, "trl": {**TRL, "learning_rate": 1e-2}},
    })  # fmt: skip
    _check(tmp_path, results)


@pytest.mark.slow
def test_ekt_run_onpolicy_gemma_teaches_smollm2(tmp_path):
    pytest.importorskip("reasoning_gym")
    from ekt.models import resolve_model

    try:
        resolve_model("smollm2-135m"), resolve_model("gemma3-270m")
    except Exception:  # noqa: BLE001 - a preset package missing: say so
        pytest.skip("the embedded presets are not installed (make setup installs them)")
    results = _run(tmp_path, {
        "task": "procedural_mix", "teacher": "gemma3-270m", "student": "smollm2-135m",
        "methods": ["on-policy"], "eval": {"limit": 2, "n": 1, "k": [1], "max_new_tokens": 16,
                                           "temperature": 0.0},
        "on_policy": {"teacher": None, "trl": {**TRL, "max_completion_length": 16}},
    })  # fmt: skip
    _check(tmp_path, results)
