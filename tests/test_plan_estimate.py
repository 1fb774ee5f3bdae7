"""``ekt run CONFIG --dry-run`` estimates each stage's time and memory beside its tokens: from
a previous run's measured throughput where the plan measures tokens, else at the assumed rates
of ``ekt.pipeline.plan_estimate``, saying which. Real tokenizers and model folders (the tiny
HF model), GSM8K questions; nothing is mocked."""

from __future__ import annotations

import json

import pytest

from ekt.pipeline.config import build_config
from ekt.pipeline.plan import plan_experiment, render
from ekt.pipeline.plan_estimate import DECODE_RATE, TRAIN_FLOPS, parameters


def _config(data_dir, model, **over) -> dict:
    cfg = {"name": "est", "data_dir": str(data_dir), "teacher": str(model),
           "student": str(model), "methods": ["ekt"], "train_limit": 3, "device": "cpu",
           "teacher_sampling": {"n": 2, "max_new_tokens": 10},
           "train": {"batch_size": 2, "per_device_train_batch_size": 2, "num_train_epochs": 1},
           "eval": {"limit": 2, "n": 3, "k": [1], "max_new_tokens": 7, "greedy": True}}  # fmt: skip
    for key, value in over.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    return cfg


def _stage(plan, prefix):
    found = [s for s in plan.stages if s.name.startswith(prefix)]
    assert len(found) == 1, [s.name for s in plan.stages]
    return found[0]


def test_parameters_are_read_from_the_safetensors_headers(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    assert parameters(str(tiny_model_dir)) == model.num_parameters()
    assert parameters("no/such-model-anywhere") is None


def test_every_stage_has_a_time_and_memory_and_the_plan_prints_them(tiny_model_dir, data_dir):
    plan = plan_experiment(build_config(_config(data_dir, tiny_model_dir)), "/nonexistent/run")
    params = parameters(str(tiny_model_dir))
    for s in plan.stages:
        assert s.seconds is not None and s.seconds > 0, s.name
        assert s.estimate.startswith("assumed"), s.estimate
    ev = _stage(plan, "evaluate student-base")
    rate = DECODE_RATE["cpu"] / params
    assert ev.seconds == pytest.approx(
        ev.completion_tokens_expected / rate + ev.prompt_tokens_expected / (rate * 10)
    )
    assert ev.memory_gb == pytest.approx(params * 4 / 1e9, abs=1e-6)  # float32 weights on cpu
    train = _stage(plan, "train ekt")
    assert train.memory_gb == pytest.approx(params * 16 / 1e9, abs=1e-6)  # + grads and AdamW
    assert train.seconds == pytest.approx(6 * params * 3 * 400 / TRAIN_FLOPS["cpu"])  # <= 3 pairs
    text = render(plan)
    head = next(line for line in text.splitlines() if line.startswith("stage"))
    assert head.split()[-2:] == ["time", "memory"]
    assert "time/memory assumed" in text and ", time: about " in plan.summary()
    assert plan.to_dict()["totals"]["seconds"] == pytest.approx(
        sum(s.seconds for s in plan.stages), abs=0.1
    )


def test_the_estimates_scale_with_the_config(tiny_model_dir, data_dir):
    small = plan_experiment(build_config(_config(data_dir, tiny_model_dir)))
    more = plan_experiment(build_config(_config(data_dir, tiny_model_dir, eval={"limit": 4})))
    a, b = _stage(small, "evaluate student-base"), _stage(more, "evaluate student-base")
    assert b.seconds > 1.8 * a.seconds  # twice the questions: about twice the time
    assert more.totals()["seconds"] > small.totals()["seconds"]
    two = _config(data_dir, tiny_model_dir, train={"num_train_epochs": 2})
    longer = plan_experiment(build_config(two))
    assert _stage(longer, "train ekt").seconds == pytest.approx(
        2 * _stage(small, "train ekt").seconds
    )
    gpu = plan_experiment(build_config(_config(data_dir, tiny_model_dir, device="cuda")))
    assert _stage(gpu, "evaluate student-base").seconds < a.seconds  # another assumed rate
    assert _stage(gpu, "evaluate student-base").memory_gb < a.memory_gb  # bfloat16


def test_a_previous_run_gives_the_measured_throughput(tiny_model_dir, data_dir, tmp_path):
    cfg = build_config(_config(data_dir, tiny_model_dir))
    run = tmp_path / "run"
    run.mkdir()
    from ekt.pipeline.config import dump_config

    (run / "config.yaml").write_text(dump_config(cfg))
    usage = {"samples": 6, "completion_tokens": 48, "prompt_tokens": 0}
    (run / "results.json").write_text(json.dumps({
        "stages": {"teacher_generate": usage},
        "stage_seconds": {"teacher tiny: sample 2 programs x 3 questions": 12.0, "filter": 0.1},
    }))  # fmt: skip
    teacher = _stage(plan_experiment(cfg, run), "teacher sampling")
    # 48 tokens in 12 s: 4 tokens/s; 6 samples x 8 tokens expected again: 12 s
    assert teacher.estimate == "measured: 4.0 completion tokens/s in the previous run"
    assert teacher.seconds == pytest.approx(12.0)
