import json

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
)

from ekt.records import TrainPair, write_jsonl_atomic
from ekt.training.packing import (
    PACKED_ATTENTION,
    can_pack,
    collate,
    enable_packing,
    kept_logits,
    loss_positions,
)
from ekt.training.train import Collator, TrainConfig, build_examples, build_trainer, train_student

LENGTHS = (7, 12, 4, 9)


def _features(vocab: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    feats = []
    for n in LENGTHS:
        ids = torch.randint(0, vocab, (n,), generator=g).tolist()
        feats.append({"input_ids": ids, "labels": [-100] * 2 + ids[2:]})
    return feats


def _gemma3():
    cfg = Gemma3TextConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=5,  # shorter than some examples: the window applies inside them
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=256,
    )
    return Gemma3ForCausalLM(cfg)


def _gemma2():  # soft-capped attention scores (eager attention as reference)
    cfg = Gemma2Config(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=5,
        max_position_embeddings=256,
    )
    cfg._attn_implementation = "eager"
    return Gemma2ForCausalLM(cfg)


@pytest.fixture(params=["llama", "gemma3", "gemma2"])
def model(request, tiny_model_dir):
    torch.manual_seed(0)
    if request.param == "llama":
        return AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return _gemma3() if request.param == "gemma3" else _gemma2()


def _per_token_loss(model, batch):
    keep, targets = loss_positions(batch["labels"])
    logits = kept_logits(model, batch, keep, True)
    return torch.nn.functional.cross_entropy(logits, targets, reduction="none")


def test_packed_loss_and_gradients_equal_unpacked(model):
    feats = _features(300)
    padded, _ = collate(feats, packed=False, pad_id=0)
    ref = _per_token_loss(model, padded)
    # the reference is transformers' own loss on the padded batch
    hf = model(**{k: padded[k] for k in ("input_ids", "attention_mask", "labels")}).loss
    assert ref.mean().item() == pytest.approx(hf.item(), rel=1e-5)
    ref.mean().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    assert can_pack(model)
    enable_packing(model)
    assert model.config._attn_implementation == PACKED_ATTENTION
    packed, starts = collate(feats, packed=True, pad_id=0)
    assert packed["input_ids"].shape == (1, sum(LENGTHS)) and "attention_mask" not in packed
    assert starts == [0, 7, 19, 23] and packed["ekt_segments"] == (0, 7, 19, 23, 32)
    assert packed["position_ids"][0].tolist() == [i for n in LENGTHS for i in range(n)]
    got = _per_token_loss(model, packed)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    got.mean().backward()
    for name, g in ref_grads.items():
        p = dict(model.named_parameters())[name]
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6, msg=name)


def test_no_token_attends_across_an_example_boundary(model):
    enable_packing(model)
    feats = _features(300, seed=1)
    packed, _ = collate(feats, packed=True, pad_id=0)
    bounds = packed["ekt_segments"]
    seg = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]

    # 1. gradient of example 1's loss reaches only example 1's input embeddings
    seen = {}

    def keep_output(module, args, out):
        out.retain_grad()
        seen["emb"] = out

    hook = model.get_input_embeddings().register_forward_hook(keep_output)
    only_1 = dict(packed)
    labels = torch.full_like(packed["labels"], -100)
    labels[0, seg[1]] = packed["labels"][0, seg[1]]
    only_1["labels"] = labels
    _per_token_loss(model, only_1).sum().backward()
    hook.remove()
    grad = seen["emb"].grad[0].abs().sum(-1)
    assert grad[seg[1]].sum() > 0
    for i in (0, 2, 3):
        assert grad[seg[i]].max().item() == 0.0, f"example {i} influenced example 1"

    # 2. changing other examples' tokens leaves an example's outputs unchanged
    with torch.no_grad():
        out = model(
            input_ids=packed["input_ids"],
            position_ids=packed["position_ids"],
            ekt_segments=bounds,
            use_cache=False,
        ).logits[0]
        changed = packed["input_ids"].clone()
        changed[0, seg[0]] = (changed[0, seg[0]] + 17) % 300
        changed[0, seg[2]] = (changed[0, seg[2]] + 5) % 300
        out2 = model(
            input_ids=changed,
            position_ids=packed["position_ids"],
            ekt_segments=bounds,
            use_cache=False,
        ).logits[0]
    torch.testing.assert_close(out2[seg[1]], out[seg[1]], rtol=0, atol=1e-6)
    torch.testing.assert_close(out2[seg[3]], out[seg[3]], rtol=0, atol=1e-6)
    assert not torch.allclose(out2[seg[0]], out[seg[0]])


def test_first_label_of_each_packed_example_is_masked():
    feats = [
        {"input_ids": [5, 6, 7], "labels": [5, 6, 7]},
        {"input_ids": [8, 9], "labels": [8, 9]},
    ]
    batch, _ = collate(feats, packed=True, pad_id=0)
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9]]
    keep, targets = loss_positions(batch["labels"])
    assert keep.tolist() == [[True, True, False, True, False]] and targets.tolist() == [6, 7, 9]
    c = Collator(pad_id=0, packed=True)(feats)
    assert c["n_targets"] == 3 and c["n_tokens"] == 5


PAIRS = [
    TrainPair(
        f"gsm8k/train/{i}",
        f"Ann had {i * 3} apples and gave away {i}. " * (1 + i % 3) + "How many are left?",
        f"def solution():\n    apples = {i * 3}\n    given = {i}\n    return apples - given\n",
    )
    for i in range(8)
]
FAST = dict(
    learning_rate=1e-3, warmup_steps=0, batch_size=4, per_device_train_batch_size=2, logging_steps=1
)


@pytest.mark.slow
def test_packed_training_follows_the_unpacked_trajectory(tmp_path, tiny_model_dir):
    pairs_path = tmp_path / "pairs.jsonl"
    write_jsonl_atomic(pairs_path, PAIRS)
    logs = {}
    for packing in (True, False):
        out = tmp_path / f"packing-{packing}"
        cfg = TrainConfig(**FAST, max_steps=4, packing=packing)
        train_student(str(tiny_model_dir), pairs_path, out, cfg, device="cpu")
        logs[packing] = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
        summary = json.loads((out / "train_summary.json").read_text())
        assert summary["packed"] is packing
        config = json.loads((out / "config.json").read_text())
        assert PACKED_ATTENTION not in json.dumps(config)  # saved model is plain
    losses = {k: [r["loss"] for r in v if "loss" in r] for k, v in logs.items()}
    assert len(losses[True]) == 4
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    data, _ = build_examples(tok, PAIRS, 400, "program")
    per_epoch = sum(len(d["input_ids"]) for d in data)
    s = json.loads((tmp_path / "packing-True" / "train_summary.json").read_text())
    assert s["tokens_trained"] == 2 * per_epoch  # 4 steps x 4 examples = 2 epochs of 8


@pytest.mark.slow
def test_lora_and_gradient_checkpointing_give_a_plain_checkpoint(tmp_path, tiny_model_dir):
    pytest.importorskip("peft")
    pairs_path = tmp_path / "pairs.jsonl"
    write_jsonl_atomic(pairs_path, PAIRS)
    out = tmp_path / "lora"
    cfg = TrainConfig(
        **{**FAST, "learning_rate": 1e-2},
        max_steps=12,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        gradient_checkpointing=True,
    )
    res = train_student(str(tiny_model_dir), pairs_path, out, cfg, device="cpu")
    assert res is not None and res.steps == 12
    assert not (out / "adapter_config.json").exists() and (out / "config.json").exists()
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < losses[0]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trained = AutoModelForCausalLM.from_pretrained(out)
    names = {n for n, _ in trained.named_parameters()}
    assert names == {n for n, _ in base.named_parameters()}  # merged: no lora_ weights
    base_p = dict(base.named_parameters())
    moved = [n for n, p in trained.named_parameters() if not torch.equal(p, base_p[n])]
    assert moved and all("proj" in n for n in moved)  # only adapted matrices changed
    assert "embed" not in " ".join(moved)


def test_unpackable_model_falls_back_to_padding(tmp_path, tiny_model_dir, capsys):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    type(model)._supports_attention_backend = False
    try:
        assert not can_pack(model)
        data, _ = build_examples(tok, PAIRS[:2], 400, "program")
        trainer = build_trainer(model, tok, data, TrainConfig(**FAST), tmp_path, "cpu", save=False)
    finally:
        type(model)._supports_attention_backend = True
    assert "cannot be packed" in capsys.readouterr().out
    assert trainer.ekt_packed is False and "attention_mask" in trainer.data_collator(data)
