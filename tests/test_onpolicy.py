"""On-policy distillation on tiny models: TRL's DistillationTrainer with reverse KL, the
teacher another tiny model with the same tokenizer; a different tokenizer is refused."""

import json

import pytest
from tiny_models import make_tiny_model

from ekt.data.tasks import get_task
from ekt.errors import EktError
from ekt.methods.onpolicy import onpolicy_config, train_onpolicy


@pytest.mark.slow
def test_tiny_onpolicy_distillation_trains_the_student_with_trl(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    teacher = make_tiny_model(tmp_path / "teacher", seed=1)  # same corpus: same tokenizer
    problems = get_task("basic_arithmetic").load("train")[:4]
    out = tmp_path / "out"
    cfg = onpolicy_config(out, max_steps=3, per_device_train_batch_size=2,
                          max_completion_length=12, learning_rate=1e-2)  # fmt: skip
    res = train_onpolicy(str(tiny_model_dir), str(teacher), problems, out, cfg)
    assert res.steps == 3 and res.tokens_seen > 0
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [o["step"] for o in log if "loss" in o] == [1, 2, 3]
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    after = AutoModelForCausalLM.from_pretrained(out / "model")
    moved = sum(float((a - b).abs().sum()) for a, b in
                zip(after.parameters(), before.parameters(), strict=True))  # fmt: skip
    assert moved > 0  # the student was trained
    assert train_onpolicy(str(tiny_model_dir), str(teacher), problems, out).steps == 3  # done


def test_a_teacher_with_another_tokenizer_is_refused(tiny_model_dir, tmp_path):
    other = make_tiny_model(tmp_path / "other", texts=["a b c d e f g"] * 3, vocab_size=300)
    problems = get_task("basic_arithmetic").load("train")[:2]
    with pytest.raises(EktError, match="different tokenizers"):
        train_onpolicy(str(tiny_model_dir), str(other), problems, tmp_path / "out")
