"""teacher_token_budget: one cap on the teacher tokens each method spends (issue 28).

The pure part (the spending order, the longest affordable prefix) is checked against a
plain scan; the run part with a real OpenAI-compatible teacher on loopback
(``fakeopenai.FakeOpenAI``) whose correct programs sit at known sample indices, so which
pairs a budget buys is known in advance."""

import json
import random
import re

import pytest
import yaml
from fakeopenai import FakeOpenAI

from ekt.cli import main
from ekt.generation.generate import read_completions
from ekt.methods.teacher_budget import Spent, affordable, spending_order, tokens_of
from ekt.pipeline.config import build_config
from ekt.pipeline.run import Runner
from ekt.records import read_jsonl

# -- the spending order and the affordable prefix ---------------------------------------------


def test_spending_order_takes_every_questions_sample_0_first():
    samples = [Spent(q, i, 10) for q in ("b", "a", "c") for i in range(3)]
    order = spending_order(samples, ["c", "a", "b"])
    assert [(s.problem_id, s.sample_idx) for s in order[:4]] == [
        ("c", 0), ("a", 0), ("b", 0), ("c", 1)
    ]  # fmt: skip
    # ids the order does not know go after the known ones of the same index
    order = spending_order([Spent("z", 0, 1), Spent("a", 0, 1), Spent("a", 1, 1)], ["a"])
    assert [(s.problem_id, s.sample_idx) for s in order] == [("a", 0), ("z", 0), ("a", 1)]


def _scan(order, budget, scored):
    """The longest fitting prefix, by trying every length."""
    best = 0
    for n in range(len(order) + 1):
        if tokens_of(order, n) + scored(n) <= budget:
            best = n
        else:
            break
    return best


@pytest.mark.parametrize("seed", range(30))
def test_affordable_is_the_longest_prefix_that_fits(seed):
    rng = random.Random(seed)
    order = [Spent(str(i), 0, rng.randint(0, 40)) for i in range(rng.randint(0, 25))]
    per = rng.choice([0, 1, 3])  # scoring that grows with the prefix
    scored = lambda n: per * tokens_of(order, n) + (7 if n else 0)  # noqa: E731
    budget = rng.randint(0, 600)
    assert affordable(order, budget, scored) == _scan(order, budget, scored)
    assert affordable(order, budget) == _scan(order, budget, lambda n: 0)


def test_affordable_edges():
    order = [Spent("a", 0, 5), Spent("b", 0, 5)]
    assert affordable(order, 0) == 0
    assert affordable(order, 9) == 1 and affordable(order, 10) == 2 and affordable(order, 99) == 2
    assert affordable(order, 10, lambda n: n) == 1  # 5 + 1 fits, 10 + 2 does not
    assert affordable(order, 4, lambda n: 100 * n) == 0
    with pytest.raises(ValueError):
        affordable(order, -1)


# -- a run under a budget ------------------------------------------------------------------

QUESTIONS = 8  # the task keeps those not used as few-shot examples
N = 3  # samples per question


def _writes(prompt: str, seed: int, index: int) -> str:
    """Question i ("What is i plus i?") answered right by one sample seed in three."""
    i = int(re.findall(r"What is (\d+) plus", prompt)[-1])
    return f"\n    return {2 * i if (seed + index) % 3 == 0 else -1}\n"


@pytest.fixture(scope="module")
def teacher():
    with FakeOpenAI(lifetime=600.0, writes=_writes) as srv:
        yield srv


def _config(tmp_path, url: str, student: str, budget: int | None) -> dict:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    rows = [{"question": f"What is {i} plus {i}?", "answer": f"#### {2 * i}"}
            for i in range(QUESTIONS)]  # fmt: skip
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    test = [{"question": f"What is {i} plus {i} plus {i}?", "answer": f"#### {3 * i}"}
            for i in range(2)]  # fmt: skip
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    return {
        "task": "gsm8k", "data_dir": str(data), "teacher": "local/fake-teacher", "student": student,
        "methods": ["ekt", "seq-kd"], "device": "cpu", "teacher_token_budget": budget,
        "evaluate_teacher": False, "evaluate_base_student": False,
        "teacher_sampling": {"n": N, "max_new_tokens": 16, "temperature": 1.0, "seed": 3,
                             "backend": {"name": "openai", "base_url": url, "served_model": "fake",
                                         "concurrency": 2}},
        "train": {"max_steps": 1, "per_device_train_batch_size": 2},
        "eval": {"limit": 1, "n": 1, "k": [1], "max_new_tokens": 8, "temperature": 0.0},
        "sandbox": {"workers": 1, "timeout": 3},
    }  # fmt: skip


def _run(tmp_path, cfg: dict, *flags: str) -> dict:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), *flags]) == 0
    rows = json.loads((tmp_path / "run" / "results.json").read_text())["rows"]
    return {r["method"]: r for r in rows if r.get("method")}


def test_ekt_and_seqkd_spend_at_most_the_budget(tmp_path, tiny_model_dir, teacher, capsys):
    run = tmp_path / "run"
    # the whole sampling's tokens: a budget of about half of them
    rows = _run(tmp_path, _config(tmp_path, teacher.url, str(tiny_model_dir), None))
    samples = read_completions(run / "teacher")
    ids = sorted({c.problem_id for c in samples}, key=lambda x: int(x.rsplit("/", 1)[1]))
    assert len(samples) == len(ids) * N and len(ids) >= 4
    executed = [o for _, o in read_jsonl(run / "teacher" / "executions.jsonl")]
    right = {(o["problem_id"], o["sample_idx"]) for o in executed if o["correct"]}
    total = sum(c.n_tokens for c in samples)
    assert total > 0 and rows["ekt"]["cost"]["teacher_tokens_sampled"] == total
    assert not (run / "budget").exists()
    budget = total // 2

    rows = _run(tmp_path, _config(tmp_path, teacher.url, str(tiny_model_dir), budget), "--force")
    order = spending_order([Spent(c.problem_id, c.sample_idx, c.n_tokens) for c in samples], ids)
    n = affordable(order, budget)
    assert 0 < n < len(order)
    bought = {(s.problem_id, s.sample_idx) for s in order[:n]}
    # ekt: the verified samples of that prefix, their pairs, billed for their tokens only
    executions = [o for _, o in read_jsonl(run / "budget" / "ekt" / "executions.jsonl")]
    assert {(o["problem_id"], o["sample_idx"]) for o in executions} == bought
    solved = {pid for pid, _ in right & bought}
    pairs = [o for _, o in read_jsonl(run / "budget" / "ekt" / "train_pairs.jsonl")]
    assert {p["problem_id"] for p in pairs} == solved
    cost = rows["ekt"]["cost"]
    assert cost["teacher_tokens_sampled"] == tokens_of(order, n) <= budget
    assert cost["sandbox_executions"] == n
    # seq-kd: every sample of the same prefix, unverified
    seq = [o for _, o in read_jsonl(run / "seq_kd" / "train_pairs.jsonl")]
    assert len(seq) == n and rows["seq-kd"]["cost"]["teacher_tokens_sampled"] <= budget
    # a method whose teacher also scores what it trains on (kd) buys fewer samples: the
    # scoring is paid from the same budget
    runner = Runner(build_config(_config(tmp_path, teacher.url, str(tiny_model_dir), budget)), run)
    per_pair = 12
    path, cost = runner.teacher_pairs(
        runner.task.load("train"), "kd", scored=lambda p: per_pair * sum(1 for _ in read_jsonl(p))
    )
    k = sum(1 for _ in read_jsonl(run / "budget" / "kd" / "executions.jsonl"))
    kd_pairs = sum(1 for _ in read_jsonl(path))
    assert path == run / "budget" / "kd" / "train_pairs.jsonl" and k <= n
    assert cost.teacher_tokens_sampled == tokens_of(order, k)
    assert tokens_of(order, k) + per_pair * kd_pairs <= budget
    more = {pid for pid, _ in right & {(s.problem_id, s.sample_idx) for s in order[: k + 1]}}
    assert k == len(order) or tokens_of(order, k + 1) + per_pair * len(more) > budget
    # export gives the pairs ekt trained on
    out = tmp_path / "ekt.jsonl"
    assert main(["export", str(run), "--method", "ekt", "--out", str(out)]) == 0
    exported = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(exported) == len(pairs)

    # the budget is a setting like any other: a change needs --force, which redoes the methods
    cfg = _config(tmp_path, teacher.url, str(tiny_model_dir), budget // 2)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--out", str(run)]) != 0
    assert "teacher_token_budget" in capsys.readouterr().err
    rows = _run(tmp_path, cfg, "--force")
    assert rows["ekt"]["cost"]["teacher_tokens_sampled"] <= budget // 2
    assert len(read_completions(run / "teacher")) == len(samples)  # the samples were kept
