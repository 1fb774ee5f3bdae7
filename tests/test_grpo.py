"""GRPO with the sandbox as reward: the reward is the real sandbox and the task's real
grader; training is TRL's GRPOTrainer on the tiny model; a killed run resumes."""

import pytest
from lm_measures import kill_at_step

from ekt.data.prompt_format import load_format
from ekt.data.tasks import get_task
from ekt.methods.grpo import (
    SandboxReward,
    completion_program,
    grpo_config,
    student_prompts,
    train_grpo,
)
from ekt.records import read_jsonl
from ekt.sandbox.pool import Sandbox, SandboxConfig

SANDBOX = SandboxConfig(workers=1, timeout=3)


@pytest.fixture(scope="module")
def task():
    return get_task("basic_arithmetic")


def _literal(x: float) -> str:
    return repr(int(x)) if float(x).is_integer() else repr(float(x))


def test_prompt_is_healed_and_completion_read_after_the_newline():
    fmt = load_format("function")
    prompts, healed = student_prompts(fmt, ["What is 2 + 3?"])
    assert healed and prompts[0].endswith("def solution():")
    program, why = completion_program("\n    return 5\n", fmt, healed)
    assert program == "def solution():\n    return 5\n" and not why
    # cut at the first stop string, as the sampler cuts (here the fence after the body)
    program, _ = completion_program("\n    return 5\n```\nThe code returns 5.", fmt, healed)
    assert program == "def solution():\n    return 5\n"
    program, why = completion_program(" return 5", fmt, healed)
    assert program == "" and why


def test_reward_is_the_graders_verdict_on_the_sandboxed_program(task, tmp_path):
    p, q = task.load("train")[:2]
    fmt = load_format("function")
    right = f"\n    a = {_literal(p.answer)}\n    return a\n"
    wrong = f"\n    return {_literal(p.answer)} + 1\n"
    crash = "\n    return 1 / 0\n"
    nothing = "I do not know."
    with Sandbox(SANDBOX) as box:
        reward = SandboxReward(box, task, [p, q], fmt, True, tmp_path / "r.jsonl")

        class State:
            global_step = 6

        got = reward(
            prompts=["x"] * 4,
            completions=[right, wrong, crash, nothing],
            completion_ids=[[1, 2], [1], [1, 2, 3], [4]],
            problem_id=[p.id] * 4,
            trainer_state=State(),
        )
    assert got == [1.0, 0.0, 0.0, 0.0]
    recs = [o for _, o in read_jsonl(tmp_path / "r.jsonl")]
    assert [r["status"] for r in recs] == ["ok", "ok", "error", "no_program"]
    assert [r["step"] for r in recs] == [7] * 4  # the optimizer step these rollouts train
    assert [r["n_tokens"] for r in recs] == [2, 1, 3, 1]
    assert recs[0]["correct"] and recs[0]["value"] == pytest.approx(p.answer)
    assert reward.executions == 3  # the program-less completion is not run


@pytest.mark.slow
def test_tiny_grpo_writes_traceable_rollouts_and_resumes_exactly(tiny_model_dir, task, tmp_path):
    problems = task.load("train")[:4]
    settings = {"max_steps": 4, "save_steps": 2, "max_completion_length": 16,
                "per_device_train_batch_size": 4, "num_generations": 2}  # fmt: skip

    full = tmp_path / "full"
    res = train_grpo(str(tiny_model_dir), problems, task, full,
                     grpo_config(full, **settings), SANDBOX)  # fmt: skip
    assert res.steps == 4 and res.rollouts == 16 and len(res.mean_reward) == 4
    assert (full / "model" / "config.json").exists()
    recs = [o for _, o in read_jsonl(full / "rollouts.jsonl")]
    assert [r["step"] for r in recs] == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
    ids = {p.id for p in problems}
    assert all(r["problem_id"] in ids for r in recs)
    # every reward is what the sandbox and the grader say of the recorded program
    by_id = {p.id: p for p in problems}
    ran = [r for r in recs if r["program"]]
    with Sandbox(SANDBOX) as box:
        again = list(box.run(r["program"] for r in ran))
    for r, ex in zip(ran, again, strict=True):
        assert ex.status == r["status"]
        assert r["reward"] == float(task.grade(ex, by_id[r["problem_id"]]))
    for r in recs:
        if not r["program"]:
            assert r["status"] == "no_program" and r["reward"] == 0.0
    logged = [o for _, o in read_jsonl(full / "train_log.jsonl") if "reward" in o]
    assert [o["step"] for o in logged] == [1, 2, 3, 4]

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train_grpo(str(tiny_model_dir), problems, task, cut, grpo_config(cut, **settings),
                   SANDBOX, callbacks=[kill_at_step(3)])  # fmt: skip
    assert (cut / "checkpoints" / "checkpoint-2").is_dir()
    assert max(o["step"] for _, o in read_jsonl(cut / "rollouts.jsonl")) == 3
    again = train_grpo(str(tiny_model_dir), problems, task, cut,
                       grpo_config(cut, **settings), SANDBOX)  # fmt: skip
    assert again.resumed_from and again.resumed_from.endswith("checkpoint-2")
    assert (cut / "rollouts.jsonl").read_bytes() == (full / "rollouts.jsonl").read_bytes()
    # a finished folder is not trained again
    assert train_grpo(str(tiny_model_dir), problems, task, cut).steps == 4


@pytest.mark.slow
def test_trl_generate_rollouts_are_rewarded_too(tiny_model_dir, task, tmp_path):
    from ekt.methods.grpo import GRPOOptions

    problems = task.load("train")[:2]
    cfg = grpo_config(tmp_path, max_steps=1, max_completion_length=8,
                      per_device_train_batch_size=4, num_generations=2)  # fmt: skip
    res = train_grpo(str(tiny_model_dir), problems, task, tmp_path, cfg, SANDBOX,
                     options=GRPOOptions(rollouts="trl"))  # fmt: skip
    recs = [o for _, o in read_jsonl(tmp_path / "rollouts.jsonl")]
    assert res.steps == 1 and len(recs) == 4
    assert all(0 < r["n_tokens"] <= 8 for r in recs)
