import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ekt.errors import EktError
from ekt.records import TrainPair, write_jsonl_atomic
from ekt.train import TrainConfig, decay_parameter_names, encode_pair, evaluate_loss, train_student

PAIRS = [
    TrainPair(
        f"gsm8k/train/{i}",
        f"Sam has {i} pens and buys {i + 2} more. How many now?",
        f"def solution():\n    pens = {i}\n    bought = {i + 2}\n    return pens + bought\n",
    )
    for i in range(8)
]


def test_labels_mask_prompt_only_for_program_loss(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    p = PAIRS[0]
    prog = encode_pair(tok, p.question, p.program, 400, "program")
    full = encode_pair(tok, p.question, p.program, 400, "all")
    assert prog["input_ids"] == full["input_ids"]
    assert full["labels"] == full["input_ids"]
    n_masked = sum(x == -100 for x in prog["labels"])
    prompt_len = len(tok("# Question: " + p.question + "\ndef solution():\n").input_ids)
    assert n_masked == prompt_len
    assert prog["labels"][-1] == tok.eos_token_id
    short = encode_pair(tok, p.question, p.program, 20, "program")
    assert len(short["input_ids"]) == len(short["labels"]) == 20


def test_weight_decay_skips_norms_and_biases(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    names = decay_parameter_names(model)
    assert names and all(p.ndim >= 2 for n, p in model.named_parameters() if n in names)
    assert not [n for n in names if "norm" in n or n.endswith("bias")]
    assert any("q_proj" in n for n in names)


def test_training_lowers_loss_and_checkpoint_reloads(tmp_path, tiny_model_dir):
    pairs_path = tmp_path / "train_pairs.jsonl"
    write_jsonl_atomic(pairs_path, PAIRS)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    before = evaluate_loss(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tok, PAIRS)
    cfg = TrainConfig(
        learning_rate=3e-3,
        warmup_steps=0,
        batch_size=4,
        per_device_batch_size=2,
        max_steps=30,
        logging_steps=5,
    )
    out = tmp_path / "student"
    result = train_student(str(tiny_model_dir), pairs_path, out, cfg, device="cpu")
    assert result is not None and result.steps == 30
    trained = AutoModelForCausalLM.from_pretrained(out)
    after = evaluate_loss(trained, AutoTokenizer.from_pretrained(out), PAIRS)
    assert after < before * 0.7, (before, after)
    assert (out / "train_log.jsonl").read_text().count("loss") >= 5
    ids = tok("# Question: hi\ndef solution():\n", return_tensors="pt").input_ids
    gen = trained.generate(
        ids, max_new_tokens=5, do_sample=False, attention_mask=torch.ones_like(ids)
    )
    assert gen.shape[1] == ids.shape[1] + 5 or tok.eos_token_id in gen[0].tolist()


def test_zero_pairs_and_bad_config(tmp_path, tiny_model_dir, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert train_student(str(tiny_model_dir), empty, tmp_path / "o", TrainConfig()) is None
    assert "nothing to train" in capsys.readouterr().out
    with pytest.raises(EktError, match="not a multiple"):
        TrainConfig(batch_size=10, per_device_batch_size=4).validate()
    with pytest.raises(EktError, match="--loss-on"):
        TrainConfig(loss_on="prompt").validate()
