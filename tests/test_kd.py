import json
import math

import pytest
import torch
from lm_measures import kd_distance
from tiny_models import make_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from ekt.data.prompts import student_prompt
from ekt.errors import EktError
from ekt.methods.seqkd import SeqKDConfig, sequence_kd_pairs
from ekt.records import Completion, Problem, TrainPair, write_jsonl_atomic
from ekt.training.kd import (
    Distiller,
    KDCollator,
    KDConfig,
    kd_objective,
    kl_per_position,
    uld_per_position,
)
from ekt.training.train import TrainConfig, build_trainer, train_student

PAIRS = [
    TrainPair(
        f"gsm8k/train/{i}",
        f"Sam has {i} pens and buys {i + 2} more. How many now?",
        f"def solution():\n    pens = {i}\n    bought = {i + 2}\n    return pens + bought\n",
    )
    for i in range(8)
]
FAST = dict(
    learning_rate=3e-3, warmup_steps=0, batch_size=4, per_device_train_batch_size=2, logging_steps=5
)


@pytest.fixture(scope="module")
def same_vocab_teacher(tmp_path_factory):
    """Same tokenizer as tiny_model_dir (same corpus and size), other weights."""
    return make_tiny_model(tmp_path_factory.mktemp("t") / "teacher", seed=7)


@pytest.fixture(scope="module")
def other_vocab_teacher(tmp_path_factory):
    """A teacher whose vocabulary differs (size and token ids), fitted to PAIRS a little."""
    base = tmp_path_factory.mktemp("u")
    init = make_tiny_model(base / "init", vocab_size=320, hidden_size=96, seed=3)
    write_jsonl_atomic(base / "pairs.jsonl", PAIRS)
    cfg = TrainConfig(**FAST, max_steps=10)
    train_student(str(init), base / "pairs.jsonl", base / "teacher", cfg, device="cpu")
    return base / "teacher"


def test_kd_loss_by_hand():
    # p_S = softmax([0, ln 2, 0]) = (1/4, 1/2, 1/4); p_T = softmax([ln 3, 0, 0]) = (3/5, 1/5, 1/5)
    s = torch.tensor([[0.0, math.log(2), 0.0]])
    t = torch.tensor([[math.log(3), 0.0, 0.0]])
    kl = 0.6 * math.log(0.6 / 0.25) + 0.2 * math.log(0.2 / 0.5) + 0.2 * math.log(0.2 / 0.25)
    assert kl_per_position(s, t).item() == pytest.approx(kl, rel=1e-6)
    ce = -math.log(0.5)  # target token 1
    ce_t = torch.nn.functional.cross_entropy(s, torch.tensor([1]), reduction="sum")
    got = kd_objective(ce_t, kl_per_position(s, t), alpha=0.3, tau=1.0)
    assert got.item() == pytest.approx(0.3 * ce + 0.7 * kl, rel=1e-6)
    # temperature 2: softmax of logits / 2, and the tau^2 factor
    ps = [math.exp(x / 2) for x in (0.0, math.log(2), 0.0)]
    pt = [math.exp(x / 2) for x in (math.log(3), 0.0, 0.0)]
    ps, pt = [x / sum(ps) for x in ps], [x / sum(pt) for x in pt]
    kl2 = sum(a * math.log(a / b) for a, b in zip(pt, ps))
    got = kd_objective(ce_t, kl_per_position(s, t, 2.0), alpha=0.3, tau=2.0)
    assert got.item() == pytest.approx(0.3 * ce + 0.7 * 4 * kl2, rel=1e-6)
    assert kd_objective(ce_t, kl_per_position(s, t), 1.0, 1.0).item() == pytest.approx(ce)
    # ULD: sorted (1/2, 1/4, 1/4) vs (3/5, 1/5, 1/5) -> 0.1 + 0.05 + 0.05
    assert uld_per_position(s, t).item() == pytest.approx(0.2, abs=1e-6)
    # different vocabulary sizes: the shorter vector is zero-padded
    t4 = torch.log(torch.tensor([[0.1, 0.5, 0.1, 0.3]]))
    # sorted (.5, .25, .25, 0) vs (.5, .3, .1, .1) -> 0 + .05 + .15 + .1
    assert uld_per_position(s, t4).item() == pytest.approx(0.3, abs=1e-6)
    assert uld_per_position(s, s).item() == pytest.approx(0.0, abs=1e-7)
    # ULD ignores token identity: a permuted teacher is at distance 0
    assert uld_per_position(s, s[:, [1, 0, 2]]).item() == pytest.approx(0.0, abs=1e-7)


def _uld_by_definition(s_logits, t_logits, tau):
    """ULD as the paper defines it: both whole rows sorted, the shorter zero-padded, L1."""
    ps = torch.softmax(s_logits.float() / tau, -1).sort(-1, descending=True).values
    pt = torch.softmax(t_logits.float() / tau, -1).sort(-1, descending=True).values
    width = max(ps.shape[-1], pt.shape[-1])
    ps = torch.nn.functional.pad(ps, (0, width - ps.shape[-1]))
    pt = torch.nn.functional.pad(pt, (0, width - pt.shape[-1]))
    return (ps - pt).abs().sum(-1)


@pytest.mark.parametrize("v_s,v_t", [(300, 2000), (2000, 300), (500, 500)])
def test_uld_from_the_top_m_equals_sorting_whole_rows(v_s, v_t):
    """Only the smaller vocabulary's worth of each side is sorted; the value and the student's
    gradient equal those of sorting both whole rows (up to the order of summation), whichever
    side is longer, at chunk edges included."""
    g = torch.Generator().manual_seed(v_s + v_t)
    s = (torch.randn(70, v_s, generator=g) * 4).requires_grad_(True)
    t = torch.randn(70, v_t, generator=g) * 4
    got = uld_per_position(s, t, 1.5, chunk=32)
    (grad_got,) = torch.autograd.grad(got.sum(), s)
    want = _uld_by_definition(s, t, 1.5)
    (grad_want,) = torch.autograd.grad(want.sum(), s)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-5, atol=1e-6)
    assert got.min() > 0.05  # random rows are far apart: the comparison is not of zeros


def _unpacked_reference(student, teacher, s_tok, t_tok, pairs, alpha, tau):
    """alpha * CE + (1 - alpha) * tau^2 * KL, from one plain forward per example."""
    ce_sum, kl_sum, n = 0.0, 0.0, 0
    for p in pairs:
        prompt = student_prompt(p.question)
        body = p.program[len("def solution():\n") :]
        s_ids = s_tok(prompt).input_ids + s_tok(body, add_special_tokens=False).input_ids
        s_ids = s_ids + [s_tok.eos_token_id]
        n_prompt = len(s_tok(prompt).input_ids)
        t_ids = t_tok(prompt).input_ids + t_tok(body, add_special_tokens=False).input_ids
        t_ids = t_ids + [t_tok.eos_token_id]
        with torch.no_grad():
            sl = student(torch.tensor([s_ids])).logits[0, n_prompt - 1 : -1]
            tl = teacher(torch.tensor([t_ids])).logits[0, n_prompt - 1 : -1]
        target = torch.tensor(s_ids[n_prompt:])
        ce_sum += torch.nn.functional.cross_entropy(sl, target, reduction="sum").item()
        log_s = torch.log_softmax(sl / tau, -1)
        log_t = torch.log_softmax(tl / tau, -1)
        kl_sum += (log_t.exp() * (log_t - log_s)).sum().item()
        n += len(target)
    return alpha * ce_sum / n + (1 - alpha) * tau**2 * kl_sum / n


@pytest.mark.slow
@pytest.mark.parametrize("packing", [True, False])
def test_kd_trainer_loss_equals_formula_and_is_ce_at_alpha_1(
    tmp_path, tiny_model_dir, same_vocab_teacher, packing
):
    s_tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = TrainConfig(**FAST, max_steps=1, packing=packing)
    pairs = PAIRS[:3]
    for alpha, tau in [(0.5, 1.0), (0.2, 2.0), (1.0, 1.0)]:
        student = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        d = Distiller(str(same_vocab_teacher), KDConfig(alpha=alpha, temperature=tau), "cpu")
        data, dropped = d.build_examples(s_tok, pairs, 400, "program")
        assert dropped == 0 and d.kind == "kl"
        trainer = build_trainer(student, s_tok, data, cfg, tmp_path, "cpu", distill=d, save=False)
        batch = trainer.data_collator(data)
        assert ("ekt_segments" in batch) == packing and batch["n_distill"] == batch["n_targets"]
        trainer.ekt_distill_items = batch["n_distill"]
        with torch.no_grad():
            loss = trainer.compute_loss(trainer.model, batch, num_items_in_batch=batch["n_targets"])
        want = _unpacked_reference(student, d.model, s_tok, d.tok, pairs, alpha, tau)
        assert loss.item() == pytest.approx(want, rel=1e-5)
        if alpha == 1.0:  # plain cross-entropy, as transformers computes it
            pb = KDCollator(s_tok.pad_token_id, False, 0, False)(data)
            with torch.no_grad():
                ref = student(
                    input_ids=pb["input_ids"],
                    attention_mask=pb["attention_mask"],
                    labels=pb["labels"],
                ).loss
            assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.slow
def test_cross_tokenizer_uld_trains_and_decreases(
    tmp_path, tiny_model_dir, other_vocab_teacher, capsys
):
    s_tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    t_tok = AutoTokenizer.from_pretrained(other_vocab_teacher)
    assert s_tok.get_vocab() != t_tok.get_vocab() and len(s_tok) != len(t_tok)
    pairs_path = tmp_path / "pairs.jsonl"
    write_jsonl_atomic(pairs_path, PAIRS)
    d = Distiller(str(other_vocab_teacher), KDConfig(), "cpu")
    before = kd_distance(d, AutoModelForCausalLM.from_pretrained(tiny_model_dir), s_tok, PAIRS)
    assert d.kind == "uld"
    out = tmp_path / "student"
    res = train_student(
        str(tiny_model_dir),
        pairs_path,
        out,
        TrainConfig(**FAST, max_steps=15),
        device="cpu",
        distill=Distiller(str(other_vocab_teacher), KDConfig(alpha=0.0), "cpu"),  # ULD alone
    )
    assert res is not None and res.steps == 15
    assert "universal logit distillation" in capsys.readouterr().out
    after = kd_distance(d, AutoModelForCausalLM.from_pretrained(out), s_tok, PAIRS)
    assert after < before * 0.8, (before, after)
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    parts = [r for r in log if "distill" in r]
    assert parts and parts[-1]["distill"] < parts[0]["distill"]
    assert parts[0]["loss"] == pytest.approx(parts[0]["distill"], rel=1e-4)
    assert parts[0]["ce"] > 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["distill"]["loss_used"].startswith("universal logit distillation")
    assert summary["distill"]["teacher"] == str(other_vocab_teacher)
    # token-level KL is refused across vocabularies
    with pytest.raises(EktError, match="shared vocabulary"):
        Distiller(str(other_vocab_teacher), KDConfig(loss="kl"), "cpu").build_examples(
            s_tok, PAIRS, 400, "program"
        )


def test_few_shot_teacher_prompt_pairs_the_same_program_tokens(tiny_model_dir, same_vocab_teacher):
    s_tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    d = Distiller(str(same_vocab_teacher), KDConfig(teacher_prompt="few-shot"), "cpu")
    data, _ = d.build_examples(s_tok, PAIRS[:2], 400, "program")
    batch = KDCollator(0, True, 0, True)(data)
    s_ids = batch["input_ids"].flatten()
    t_ids = batch["t_input_ids"].flatten()
    # the tokens predicted at the paired positions are the same program tokens
    assert torch.equal(s_ids[batch["kd_student_pos"] + 1], t_ids[batch["kd_teacher_pos"] + 1])
    assert len(data[0]["t_input_ids"]) > 3 * len(data[0]["input_ids"])


def test_kd_config_validation():
    for bad, msg in [
        (dict(alpha=1.5), "alpha"),
        (dict(temperature=0), "temperature"),
        (dict(loss="js"), "kd.loss"),
        (dict(teacher_prompt="x"), "teacher_prompt"),
    ]:
        with pytest.raises(EktError, match=msg):
            KDConfig(**bad).validate()


def test_sequence_kd_pairs_keep_every_sample():
    problems = {
        "gsm8k/train/2": Problem("gsm8k/train/2", "Q two", 2.0, "train"),
        "gsm8k/train/10": Problem("gsm8k/train/10", "Q ten", 10.0, "train"),
        "gsm8k/train/5": Problem("gsm8k/train/5", "A test  question", 1.0, "train"),
    }
    prog = "def solution():\n    return 1\n"
    comps = [
        Completion("gsm8k/train/10", 1, "", 3, prog),
        Completion("gsm8k/train/10", 0, "    return 10\n", 3, ""),
        Completion("gsm8k/train/2", 0, "", 3, prog),
        Completion("gsm8k/train/2", 1, "", 3, prog),  # duplicate, wrong: kept
        Completion("gsm8k/train/5", 0, "", 3, prog),
    ]
    pairs = sequence_kd_pairs(comps, problems, frozenset({"a test question"}))
    assert [(p.problem_id, p.program) for p in pairs] == [
        ("gsm8k/train/2", prog),
        ("gsm8k/train/2", prog),
        ("gsm8k/train/10", "def solution():\n    return 10\n"),
        ("gsm8k/train/10", prog),
    ]
    assert {p.source for p in pairs} == {"teacher-unfiltered"}


def test_sequence_kd_pairs_first_samples_per_question():
    """per_question=k takes each question's samples 0..k-1 whatever order they arrive in; one
    without a program still uses up its place (the teacher's first output was no program)."""
    ids = ("t/train/1", "t/train/2")
    problems = {i: Problem(i, f"Q {i}", 1.0, "train") for i in ids}

    def prog(v: int) -> str:
        return f"def solution():\n    return {v}\n"

    comps = [
        Completion("t/train/1", 2, "", 3, prog(12)),
        Completion("t/train/1", 0, "", 3, prog(10)),
        Completion("t/train/1", 1, "", 3, prog(11)),
        Completion("t/train/2", 1, "", 3, prog(21)),
        Completion("t/train/2", 0, "no code here", 3, "", extract_error="no program"),
    ]
    got = {k: [p.program for p in sequence_kd_pairs(comps, problems, per_question=k)]
           for k in (0, 1, 2)}  # fmt: skip
    assert got[1] == [prog(10)]
    assert got[2] == [prog(10), prog(11), prog(21)]
    assert got[0] == [prog(10), prog(11), prog(12), prog(21)]
    with pytest.raises(EktError, match="seq_kd.per_question"):
        SeqKDConfig(per_question=-1).validate()


@pytest.mark.slow
def test_cli_train_method_kd(tmp_path, tiny_model_dir, same_vocab_teacher, capsys):
    from ekt.cli import main

    pairs_path = tmp_path / "pairs.jsonl"
    write_jsonl_atomic(pairs_path, PAIRS[:4])
    base = ["train", "--student", str(tiny_model_dir), "--pairs", str(pairs_path)]
    base += ["--out", str(tmp_path / "s"), "--method", "kd", "--max-steps", "2"]
    base += ["--batch-size", "2", "--per-device-train-batch-size", "2", "--warmup-steps", "0"]
    assert main(base) == 2
    assert "--method kd needs --teacher" in capsys.readouterr().err
    args = base + ["--teacher", str(same_vocab_teacher), "--kd-alpha", "0.25", "--device", "cpu"]
    assert main(args + ["--kd-loss", "nope"]) == 2
    assert "--kd-loss must be one of auto, kl, uld" in capsys.readouterr().err
    assert main(args + ["--kd-temperature", "2"]) == 0
    summary = json.loads((tmp_path / "s" / "train_summary.json").read_text())
    assert summary["steps"] == 2
    assert summary["distill"]["alpha"] == 0.25 and summary["distill"]["temperature"] == 2.0
    assert summary["distill"]["loss_used"].startswith("token-level KL")


@pytest.mark.parametrize("how", [{"num_train_epochs": 2}, {"max_steps": 3}])
def test_kd_budget_counts_the_tokens_its_training_bills(tmp_path, tiny_model_dir,
                                                        same_vocab_teacher, how):  # fmt: skip
    """Under a teacher-token budget kd picks its pairs by ``training_tokens``: it must be
    what the training then records (the cost's teacher_tokens_scored), not a guess."""
    from ekt.methods.kd import training_tokens

    pairs_path = tmp_path / "pairs.jsonl"
    write_jsonl_atomic(pairs_path, PAIRS)
    cfg = TrainConfig(**{**FAST, "batch_size": 2, **how})  # 8 pairs: no partial batch
    distill = Distiller(str(same_vocab_teacher), KDConfig(), "cpu")
    res = train_student(str(tiny_model_dir), pairs_path, tmp_path / "s", cfg, device="cpu",
                        distill=distill)  # fmt: skip
    assert res is not None
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    billed = training_tokens(tok, PAIRS, cfg, None)
    if "max_steps" in how:  # 6 of 8 examples, which ones the shuffle decides: a bound
        assert billed >= res.tokens_trained > 0.75 * billed
    else:
        assert billed == res.tokens_trained > 0
