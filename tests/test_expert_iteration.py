"""Expert iteration on a tiny setup, and `ekt run` with every method end to end.

Sampling is replaced by a scripted sampler (which questions a model "solves"
depends on which model it is), so the rounds are deterministic and fast;
verification runs in the real sandbox and training trains the real tiny model.
"""

import json

import pytest
from tiny_models import make_tiny_model

from ekt.data.tasks import get_task
from ekt.evaluation.evaluate import EvalConfig
from ekt.generation.config import SamplingParams
from ekt.methods.expert_iteration import ExpertIterationConfig, Rounds, expert_iteration
from ekt.pipeline.config import RunConfig, TeacherSampling
from ekt.pipeline.run import Runner
from ekt.records import Completion, read_jsonl
from ekt.sandbox.pool import SandboxConfig
from ekt.training.train import TrainConfig

TRAIN = TrainConfig(
    learning_rate=1e-3, warmup_steps=0, batch_size=2, per_device_train_batch_size=2, max_steps=2
)
SANDBOX = SandboxConfig(workers=2, timeout=3)


class ScriptedSampler:
    """Returns the gold answer for questions ``solves(problem_id)`` accepts, else a wrong one."""

    def __init__(self, answers, solves):
        self.answers, self.solves = answers, solves
        self.seen = []

    def sample(self, requests, params):
        for pid, prompt in requests:
            self.seen.append((pid, prompt))
            for i in range(params.n):
                ok = self.solves(pid) and i == params.n - 1  # the last sample is right
                value = self.answers[pid] if ok else -7.5
                yield Completion(pid, i, f"    answer = {value!r}\n    return answer\n", 9)


def _index(pid: str) -> int:
    return int(pid.rsplit("/", 1)[1])


@pytest.fixture(scope="module")
def task(data_dir):
    return get_task("gsm8k", str(data_dir))


def _skill(spec: str):
    """The base student solves even-numbered questions; a fine-tuned one solves all."""
    if "round-" in spec or "students" in spec:
        return lambda pid: True
    return lambda pid: _index(pid) % 2 == 0


@pytest.mark.slow
@pytest.mark.parametrize("restart", [True, False])
def test_two_rounds_with_records(tmp_path, tiny_model_dir, task, restart, capsys):
    problems = task.load("train")[:6]
    answers = {p.id: p.answer for p in problems}
    samplers = []

    def make_sampler(spec):
        def make():
            samplers.append((spec, ScriptedSampler(answers, _skill(spec))))
            return samplers[-1][1]

        return make

    out = tmp_path / "ei"
    cfg = ExpertIterationConfig(rounds=2, restart_from_base=restart)
    params = SamplingParams(n=2, temperature=0.8, max_new_tokens=32)
    setup = Rounds(str(tiny_model_dir), task, make_sampler, params, cfg, TRAIN, SANDBOX, "cpu")
    result = expert_iteration(problems, out, setup)

    even = [p.id for p in problems if _index(p.id) % 2 == 0]
    assert [s for s, _ in samplers] == [str(tiny_model_dir), str(out / "round-1" / "model")]
    # round 2 samples only the questions still unsolved, with the few-shot prompt
    assert {pid for pid, _ in samplers[1][1].seen} == {p.id for p in problems} - set(even)
    assert all(prompt.count("# Question:") > 1 for _, prompt in samplers[1][1].seen)
    recs = [obj for _, obj in read_jsonl(out / "rounds.jsonl")]
    assert [r["round"] for r in recs] == [1, 2]
    r1, r2 = recs
    e, o = len(even), 6 - len(even)
    assert 0 < e < 6
    assert (r1["attempted"], r1["solved"], r1["pairs_added"], r1["cumulative_pairs"]) == (
        6,
        e,
        e,
        e,
    )
    assert (r2["attempted"], r2["solved"], r2["pairs_added"], r2["cumulative_pairs"]) == (
        o,
        o,
        o,
        6,
    )
    for r in recs:
        assert r["train_steps"] == 2 and r["train_loss"] > 0 and r["model"]
        assert json.loads((out / f"round-{r['round']}" / "round.json").read_text()) == r
    assert r1["trained_from"] == str(tiny_model_dir)
    assert r2["trained_from"] == (str(tiny_model_dir) if restart else r1["model"])
    assert result.model == r2["model"] and (out / "round-2" / "model" / "config.json").exists()
    pairs = [obj for _, obj in read_jsonl(result.pairs_path)]
    assert len(pairs) == 6 and {p["source"] for p in pairs} == {
        "student-round-1",
        "student-round-2",
    }
    round2_pairs = [obj for _, obj in read_jsonl(out / "round-2" / "train_pairs.jsonl")]
    assert len(round2_pairs) == 6  # each round trains on every pair so far

    # a rerun finds both rounds done: no sampling, no training
    capsys.readouterr()
    samplers.clear()
    again = expert_iteration(problems, out, setup)
    assert samplers == [] and again.model == result.model
    assert capsys.readouterr().out.count(" pairs added); skipping") == 2


@pytest.mark.slow
def test_a_round_that_adds_nothing_stops(tmp_path, tiny_model_dir, task):
    problems = task.load("train")[:4]
    answers = {p.id: p.answer for p in problems}

    def make_sampler(spec):
        return lambda: ScriptedSampler(answers, lambda pid: False)

    out = tmp_path / "ei"
    res = expert_iteration(problems, out, Rounds(
        str(tiny_model_dir), task, make_sampler,
        SamplingParams(n=1, temperature=0.8, max_new_tokens=32),
        ExpertIterationConfig(rounds=3), TRAIN, SANDBOX, "cpu",
    ))  # fmt: skip
    assert res.model is None
    recs = [obj for _, obj in read_jsonl(out / "rounds.jsonl")]
    assert len(recs) == 1 and recs[0]["pairs_added"] == 0 and recs[0]["model"] is None


@pytest.mark.slow
def test_run_with_every_method_end_to_end(tmp_path, tiny_model_dir, task, data_dir):
    teacher = make_tiny_model(tmp_path / "teacher", vocab_size=320, seed=5)  # other vocabulary
    problems = task.load("train")[:6] + task.load("test")[:3]
    answers = {p.id: p.answer for p in problems}

    def factory(spec, device, batch_size, backend=None):
        skill = (lambda pid: _index(pid) % 3 != 1) if spec == str(teacher) else _skill(spec)
        return lambda: ScriptedSampler(answers, skill)

    cfg = RunConfig(
        name="tiny",
        data_dir=str(data_dir),
        teacher=str(teacher),
        student=str(tiny_model_dir),
        methods=["supervised", "ekt", "kd", "seq-kd", "expert-iteration"],
        train_limit=6,
        device="cpu",
        train=TRAIN,
        eval=EvalConfig(limit=3, n=2, k=[1, 2], max_new_tokens=32),
        expert_iteration=ExpertIterationConfig(rounds=2),
        teacher_sampling=TeacherSampling(n=2),
        sandbox=SandboxConfig(workers=2),
    )
    results = Runner(cfg, tmp_path / "run", sampler_factory=factory).run()
    rows = {r["label"]: r for r in results["rows"]}
    for method in ["supervised", "ekt", "kd", "seq-kd", "expert-iteration"]:
        row = rows[f"student-{method}"]
        assert row["method"] == method and "skipped" not in row and row["pairs"] > 0
        assert "pass@2" in row, method
    train = problems[:6]
    solved_by_teacher = sum(_index(p.id) % 3 != 1 for p in train)
    assert rows["student-ekt"]["pairs"] == rows["student-kd"]["pairs"] == solved_by_teacher
    assert rows["student-seq-kd"]["pairs"] == 12  # every teacher sample: 6 questions x 2
    run = tmp_path / "run"
    kd = json.loads((run / "students" / "kd" / "train_summary.json").read_text())
    assert kd["distill"]["loss_used"].startswith("universal logit distillation")
    ei = [obj for _, obj in read_jsonl(run / "students" / "expert-iteration" / "rounds.jsonl")]
    even = sum(_index(p.id) % 2 == 0 for p in train)
    assert [r["pairs_added"] for r in ei] == [even, 6 - even]
    assert (run / "results.md").exists()
    # each method's cost, from its records
    cost = {m: rows[f"student-{m}"]["cost"] for m in ["supervised", "ekt", "kd", "seq-kd"]}
    teacher = results["stages"]["teacher_generate"]["completion_tokens"]
    assert cost["ekt"]["teacher_tokens_sampled"] == cost["seq-kd"]["teacher_tokens_sampled"]
    assert cost["ekt"]["teacher_tokens_sampled"] == teacher > 0
    assert cost["ekt"]["sandbox_executions"] == 12 and cost["seq-kd"]["sandbox_executions"] == 0
    assert cost["kd"]["teacher_tokens_scored"] == cost["kd"]["training_tokens"] > 0
    assert cost["supervised"]["teacher_tokens_sampled"] == 0
    ei_cost = rows["student-expert-iteration"]["cost"]
    assert ei_cost["student_tokens_generated"] > 0 and ei_cost["teacher_tokens_sampled"] == 0


def test_method_settings_load_from_yaml(tmp_path):
    from ekt.errors import EktError
    from ekt.pipeline.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text(
        "methods: [kd, seq-kd, expert-iteration]\n"
        "kd: {alpha: 0.7, temperature: 2, loss: uld, teacher_prompt: few-shot}\n"
        "expert_iteration: {rounds: 4, keep: all, restart_from_base: false}\n"
        "train: {packing: false, lora_r: 8}\n"
    )
    cfg = load_config(path)
    assert cfg.kd.alpha == 0.7 and cfg.kd.temperature == 2.0 and cfg.kd.loss == "uld"
    assert cfg.expert_iteration.rounds == 4 and not cfg.expert_iteration.restart_from_base
    assert cfg.train.packing is False and cfg.train.lora_r == 8
    for text, msg in [
        ("kd: {alpha: 2}", "kd.alpha"),
        ("expert_iteration: {rounds: 0}", "rounds"),
        ("expert_iteration: {later_rounds_prompt: x}", "later_rounds_prompt"),
        ("methods: [distil]", "methods: expected one of ekt, .*, got distil"),
        ("train: {lora_r: -1}", "train.lora_r must be >= 0"),
    ]:
        path.write_text(text + "\n")
        with pytest.raises(EktError, match=msg):
            load_config(path)


def test_shipped_comparison_config_lists_every_method():
    from pathlib import Path

    from ekt.pipeline.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "compare.yaml")
    assert sorted(cfg.methods) == sorted(["ekt", "supervised", "kd", "seq-kd", "expert-iteration"])
    assert cfg.kd.alpha == 0.5 and cfg.expert_iteration.restart_from_base
