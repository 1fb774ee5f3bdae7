import json

import pytest
import torch
from lm_measures import lm_loss
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from ekt.data.prompts import student_prompt
from ekt.errors import EktError
from ekt.records import TrainPair, write_jsonl_atomic
from ekt.training.train import (
    TrainConfig,
    _trainer_class,
    build_examples,
    decay_parameter_names,
    encode_pair,
    train_student,
)

PAIRS = [
    TrainPair(
        f"gsm8k/train/{i}",
        f"Sam has {i} pens and buys {i + 2} more. How many now?",
        f"def solution():\n    pens = {i}\n    bought = {i + 2}\n    return pens + bought\n",
    )
    for i in range(8)
]

FAST = dict(
    learning_rate=3e-3,
    warmup_steps=0,
    batch_size=4,
    per_device_train_batch_size=2,
    max_steps=30,
    logging_steps=5,
)


def test_labels_mask_prompt_only_for_program_loss(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    p = PAIRS[0]
    prog = encode_pair(tok, p.question, p.program, 400, "program")
    full = encode_pair(tok, p.question, p.program, 400, "all")
    assert prog["input_ids"] == full["input_ids"]
    assert full["labels"] == full["input_ids"]
    n_masked = sum(x == -100 for x in prog["labels"])
    prompt_ids = tok(student_prompt(p.question)).input_ids
    assert n_masked == len(prompt_ids)
    assert prog["input_ids"][: len(prompt_ids)] == prompt_ids
    assert prog["labels"][n_masked:] == prog["input_ids"][n_masked:]
    assert prog["labels"][-1] == tok.eos_token_id
    # the text is the prompt followed by the program body (header not repeated)
    text = tok.decode(prog["input_ids"][:-1])
    assert text == student_prompt(p.question) + p.program[len("def solution():\n") :]
    short = encode_pair(tok, p.question, p.program, 20, "program")
    assert len(short["input_ids"]) == len(short["labels"]) == 20


def test_examples_without_program_tokens_are_dropped(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    long_q = TrainPair("x", "word " * 300, PAIRS[0].program)
    data, dropped = build_examples(tok, [PAIRS[0], long_q], 64, "program")
    assert dropped == 1 and len(data) == 1
    data, dropped = build_examples(tok, [PAIRS[0], long_q], 64, "all")
    assert dropped == 0 and len(data) == 2


def test_weight_decay_skips_norms_and_biases(tiny_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    names = decay_parameter_names(model)
    params = dict(model.named_parameters())
    assert names and all(params[n].ndim >= 2 for n in names)
    assert not [n for n in names if "norm" in n or n.endswith("bias")]
    assert any("q_proj" in n for n in names)
    norms = [n for n in params if "norm" in n]
    assert norms  # the Llama RMSNorm weights exist and are excluded
    # a model with biases and a LayerNorm under an odd name
    odd = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    assert decay_parameter_names(odd) == ["0.weight"]
    # the optimizer Trainer builds uses these groups
    args = TrainingArguments(
        output_dir=str(tmp_path), weight_decay=0.1, use_cpu=True, report_to="none"
    )
    trainer = _trainer_class()(model=model, args=args)
    opt = trainer.create_optimizer()
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    assert by_decay[0.1] == {id(params[n]) for n in names}
    assert by_decay[0.0] == {id(p) for n, p in params.items() if n not in names}
    # Trainer's own default also leaves the RMSNorm weights out (it names the tied lm_head too)
    default = set(Trainer.get_decay_parameter_names(trainer, model))
    assert default - {"lm_head.weight"} == set(names)


@pytest.mark.slow
def test_training_lowers_loss_and_checkpoint_reloads(tmp_path, tiny_model_dir, capsys):
    pairs_path = tmp_path / "train_pairs.jsonl"
    write_jsonl_atomic(pairs_path, PAIRS)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    before = lm_loss(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tok, PAIRS)
    cfg = TrainConfig(**FAST)
    out = tmp_path / "student"
    result = train_student(str(tiny_model_dir), pairs_path, out, cfg, device="cpu")
    assert result is not None and result.steps == 30 and result.pairs == 8
    assert "train: 8 pairs, 30 steps" in capsys.readouterr().out
    trained = AutoModelForCausalLM.from_pretrained(out)
    after = lm_loss(trained, AutoTokenizer.from_pretrained(out), PAIRS)
    assert after < before * 0.7, (before, after)
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 5, 10, 15, 20, 25, 30]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 30 and summary["pairs"] == 8
    assert summary["final_loss"] == pytest.approx(log[-2]["loss"])
    assert summary["tokens_trained"] > summary["program_tokens"] > 0
    from ekt.training.train import cpu_has_fast_bf16

    auto = "bf16" if cpu_has_fast_bf16() else "fp32"  # autocast where the CPU has bf16 units
    assert summary["gradient_accumulation_steps"] == 2 and summary["precision"] == auto
    assert (out / "checkpoints" / "checkpoint-30").is_dir()
    ids = tok(student_prompt("hi"), return_tensors="pt").input_ids
    gen = trained.generate(
        ids, max_new_tokens=5, do_sample=False, attention_mask=torch.ones_like(ids)
    )
    assert gen.shape[1] == ids.shape[1] + 5 or tok.eos_token_id in gen[0].tolist()

    # a rerun resumes from the final checkpoint and trains no further
    again = train_student(str(tiny_model_dir), pairs_path, out, cfg, device="cpu")
    assert "resuming from" in capsys.readouterr().out
    assert again is not None and again.steps == 30
    log2 = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log2 if "loss" in r] == [1, 5, 10, 15, 20, 25, 30]
    # other settings: old checkpoints are cleared, training starts afresh
    cfg2 = TrainConfig(**{**FAST, "max_steps": 4, "loss_on": "all"})
    third = train_student(str(tiny_model_dir), pairs_path, out, cfg2, device="cpu")
    assert "clearing old checkpoints" in capsys.readouterr().out
    assert third is not None and third.steps == 4
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-4"]


def test_zero_pairs_and_bad_config(tmp_path, tiny_model_dir, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert train_student(str(tiny_model_dir), empty, tmp_path / "o", TrainConfig()) is None
    assert f"no training pairs in {empty}: nothing to train" in capsys.readouterr().out
    assert not (tmp_path / "o").exists()
    with pytest.raises(EktError, match="not a multiple"):
        TrainConfig(batch_size=10, per_device_train_batch_size=4).validate()
    with pytest.raises(EktError, match="not a multiple"):
        train_student(str(tiny_model_dir), empty, tmp_path / "o", TrainConfig(batch_size=12))
    with pytest.raises(EktError, match="2 processes"):
        TrainConfig(batch_size=8, per_device_train_batch_size=8).validate(world_size=2)
    assert TrainConfig(batch_size=32, per_device_train_batch_size=8).accumulation_steps() == 4
    assert TrainConfig(batch_size=32, per_device_train_batch_size=8).accumulation_steps(2) == 2
    with pytest.raises(EktError, match="--loss-on"):
        TrainConfig(loss_on="prompt").validate()
    with pytest.raises(EktError, match="no such file"):
        train_student(str(tiny_model_dir), tmp_path / "missing.jsonl", tmp_path / "o")
    pairs_path = tmp_path / "p.jsonl"
    write_jsonl_atomic(pairs_path, PAIRS[:1])
    with pytest.raises(EktError, match="lr-scheduler-type"):
        train_student(
            str(tiny_model_dir), pairs_path, tmp_path / "o", TrainConfig(lr_scheduler_type="zig")
        )


def test_precision_choice():
    from ekt.errors import EktError
    from ekt.training.train import _mixed_precision, cpu_has_fast_bf16

    assert _mixed_precision("cpu", "fp32") == (True, False, False)
    assert _mixed_precision("cpu", "bf16") == (True, True, False)
    assert _mixed_precision("cpu", "auto") == (True, cpu_has_fast_bf16(), False)
    with pytest.raises(EktError, match="fp16 needs a CUDA GPU"):
        _mixed_precision("cpu", "fp16")
    with pytest.raises(EktError, match="--precision must be one of"):
        TrainConfig(precision="fp8").validate()
