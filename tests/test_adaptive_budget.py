"""budget: adaptive — sampling in rounds, verified as it goes, gives full's pairs for fewer samples.

The sampler here is a real ``Sampler`` whose programs are known in advance: sample
``i`` of question ``q`` returns the gold answer when a uniform drawn from
``derive_seed(seed, q, i)`` falls below the question's success rate, so a sample is a
function of its index alone, as every ekt sampler's is. Verification is the real
sandbox; the transformers sampler's index ranges are checked on the tiny model.

The resume test runs this file as a script (``_child``): a ``generate`` with an
adaptive budget that SIGKILLs itself at a given point (mid-round while sampling,
while the round's programs are being verified, right after a round was decided),
then resumes it, and compares the folder with an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ekt.data.tasks import get_task
from ekt.errors import EktError
from ekt.generation.budget import AdaptiveBudget
from ekt.generation.config import SamplingParams
from ekt.generation.generate import BUDGET_LOG, GenerateSettings, budget_usage, generate
from ekt.generation.sampler import derive_seed
from ekt.records import Completion, read_jsonl
from ekt.sandbox.pool import SandboxConfig
from ekt.verification.filtering import filter_stage
from ekt.verification.verify import RoundJudge, verify

SANDBOX = SandboxConfig(workers=1, timeout=5)
PARAMS = SamplingParams(n=8, temperature=0.8, max_new_tokens=16, seed=3)
# success rate of each of the first six training questions: easy, hard, never solved, ...
RATES = [0.9, 0.5, 0.25, 0.0, 0.6, 0.15]


class SeededSampler:
    """Sample ``i`` of question ``q`` is correct when ``derive_seed(seed, q, i) / 2**63`` is
    below ``rates[q]``; its program is one of three spellings (``i % 3``), so a question has
    at most three distinct correct programs. ``kill_at=(start, k)``: SIGKILL this process
    instead of yielding the (k+1)-th sample of a call that starts at index ``start``."""

    def __init__(self, answers: dict, rates: dict, kill_at: tuple[int, int] | None = None):
        self.answers, self.rates, self.kill_at = answers, rates, kill_at
        self.drawn = 0
        self.calls: list[tuple[int | None, list[str]]] = []

    def sample(self, requests, params, start=None):
        first = start or 0
        self.calls.append((start, [pid for pid, _ in requests]))
        k = 0
        for pid, _ in requests:
            for i in range(first, first + params.n):
                if self.kill_at == (first, k):
                    os.kill(os.getpid(), signal.SIGKILL)
                u = derive_seed(params.seed, pid, i) / 2**63
                value = self.answers[pid] if u < self.rates[pid] else -7.5
                self.drawn += 1
                k += 1
                text = f"    x = {i % 3}\n    return {value!r} + 0 * x\n"
                yield Completion(pid, i, text, 10 + i % 3)


@pytest.fixture(scope="module")
def task(data_dir):
    return get_task("gsm8k", str(data_dir))


@pytest.fixture(scope="module")
def problems(task):
    return task.load("train")[:6]


def _sampler(problems, kill_at=None) -> SeededSampler:
    answers = {p.id: p.answer for p in problems}
    return SeededSampler(answers, {p.id: r for p, r in zip(problems, RATES)}, kill_at)


def _run(out: Path, task, problems, sampler, budget=None, keep="first") -> list[dict]:
    """generate (+ verify) + filter; the pairs."""
    ex = out / "executions.jsonl"
    if budget is None:
        generate(sampler, problems, out, PARAMS, GenerateSettings(shard_size=4))
        verify(out, ex, task, None, SANDBOX, progress=False)
    else:
        with RoundJudge(out, ex, task, SANDBOX) as judge:
            generate(
                sampler,
                problems,
                out,
                PARAMS,
                GenerateSettings(shard_size=4, budget=budget),
                judge=judge,
            )
        assert verify(out, ex, task, None, SANDBOX, progress=False).new == 0  # all judged
    filter_stage(ex, out / "pairs.jsonl", task, keep=keep)
    return [obj for _, obj in read_jsonl(out / "pairs.jsonl")]


def _samples(out: Path) -> dict[tuple[str, int], dict]:
    return {
        (o["problem_id"], o["sample_idx"]): o
        for p in sorted((out / "samples").glob("shard-*.jsonl"))
        for _, o in read_jsonl(p)
    }


def _correct(out: Path) -> dict[str, list[int]]:
    got: dict[str, list[int]] = {}
    for _, o in read_jsonl(out / "executions.jsonl"):
        if o["correct"]:
            got.setdefault(o["problem_id"], []).append(o["sample_idx"])
    return got


def test_keep_first_same_pairs_fewer_samples(tmp_path, task, problems):
    full_sampler, adaptive_sampler = _sampler(problems), _sampler(problems)
    full = _run(tmp_path / "full", task, problems, full_sampler)
    budget = AdaptiveBudget(round_size=2, keep="first", target=1, give_up_after=0)
    adaptive = _run(tmp_path / "adaptive", task, problems, adaptive_sampler, budget)

    assert full and adaptive == full  # the same pairs, program for program
    assert full_sampler.drawn == 6 * 8
    assert adaptive_sampler.drawn < full_sampler.drawn
    # every sample drawn is full's sample of that index, and each question stopped at the
    # round of its first correct program (or drew all n)
    a, f = _samples(tmp_path / "adaptive"), _samples(tmp_path / "full")
    assert all(f[k] == v for k, v in a.items())
    first_correct = {pid: min(ix) for pid, ix in _correct(tmp_path / "full").items()}
    for p in problems:
        drawn = sum(1 for pid, _ in a if pid == p.id)
        want = 8 if p.id not in first_correct else (first_correct[p.id] // 2 + 1) * 2
        assert drawn == want, p.id
    usage = budget_usage(tmp_path / "adaptive", 6, 8)
    assert usage["samples"] == len(a) == adaptive_sampler.drawn
    assert usage["samples_full_budget"] == 48
    assert usage["questions_left_early"] == sum(1 for p in problems if drawn_lt(a, p.id, 8))
    # the job settings: a full job's budget is "full", an adaptive one's its settings
    full_job = json.loads((tmp_path / "full" / "generate.json").read_text())
    job = json.loads((tmp_path / "adaptive" / "generate.json").read_text())
    assert full_job["budget"] == "full"
    assert job["budget"] == {"budget": "adaptive", "round_size": 2, "keep": "first",
                             "give_up_after": 0}  # fmt: skip
    assert {k: v for k, v in job.items() if k != "budget"} == {
        k: v for k, v in full_job.items() if k != "budget"
    }


def drawn_lt(samples: dict, pid: str, n: int) -> bool:
    return sum(1 for q, _ in samples if q == pid) < n


def test_a_full_folder_refuses_an_adaptive_resume(tmp_path, task, problems):
    out = tmp_path / "g"
    generate(_sampler(problems), problems[:2], out, PARAMS)
    budget = AdaptiveBudget(round_size=2, keep="first", target=1, give_up_after=0)
    with RoundJudge(out, out / "executions.jsonl", task, SANDBOX) as judge:
        with pytest.raises(EktError, match="budget"):
            generate(
                _sampler(problems),
                problems[:2],
                out,
                PARAMS,
                GenerateSettings(budget=budget),
                judge=judge,
            )


def test_keep_all_stops_at_target_distinct_programs(tmp_path, task, problems):
    budget = AdaptiveBudget(round_size=2, keep="all", target=2, give_up_after=0)
    sampler = _sampler(problems)
    pairs = _run(tmp_path / "a", task, problems, sampler, budget, keep="all")
    full = _run(tmp_path / "f", task, problems, _sampler(problems), keep="all")
    assert pairs and all(p in full for p in pairs)  # a subset of full's pairs
    assert sampler.drawn < 48
    per_q: dict[str, int] = {}
    for p in pairs:
        per_q[p["problem_id"]] = per_q.get(p["problem_id"], 0) + 1
    assert max(per_q.values()) == 2  # spellings repeat every three indices: distinct, not many
    a, full_correct = _samples(tmp_path / "a"), _correct(tmp_path / "f")
    for p in problems:
        # the round in which full's samples reach two distinct correct spellings ends it
        spellings: set[int] = set()
        want = 8
        for i in sorted(full_correct.get(p.id, [])):
            spellings.add(i % 3)
            if len(spellings) == 2:
                want = min(8, (i // 2 + 1) * 2)
                break
        assert sum(1 for pid, _ in a if pid == p.id) == want, p.id


def test_give_up_after(tmp_path, task, problems):
    budget = AdaptiveBudget(round_size=2, keep="first", target=1, give_up_after=4)
    sampler = _sampler(problems)
    pairs = _run(tmp_path / "a", task, problems, sampler, budget)
    a = _samples(tmp_path / "a")
    never = problems[3].id  # rate 0: gives up after 4 samples
    assert sum(1 for pid, _ in a if pid == never) == 4
    assert never not in {p["problem_id"] for p in pairs}
    usage = budget_usage(tmp_path / "a", 6, 8)
    assert usage["questions_gave_up"] >= 1
    log = [o for _, o in read_jsonl(tmp_path / "a" / BUDGET_LOG)]
    assert any(o["left"].get(never) == 0 and o["stop"] == 4 for o in log)


def test_an_adaptive_budget_needs_a_sampler_that_draws_ranges(tmp_path, task, problems):
    class Old:
        def sample(self, requests, params):
            yield from ()

    budget = AdaptiveBudget(round_size=2, keep="first", target=1, give_up_after=0)
    with RoundJudge(tmp_path, tmp_path / "ex.jsonl", task, SANDBOX) as judge:
        with pytest.raises(EktError, match="start"):
            generate(
                Old(),
                problems[:1],
                tmp_path / "g",
                PARAMS,
                GenerateSettings(budget=budget),
                judge=judge,
            )


# -- the transformers sampler's index ranges -----------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, tmp_path_factory):
    from conftest import amplified_model

    from ekt.models import load_model

    path = amplified_model(tiny_model_dir, tmp_path_factory.mktemp("amp") / "m", 40)
    return load_model(str(path), device="cpu")


def test_transformers_sampler_draws_index_ranges(tiny):
    from ekt.data.prompts import student_prompt
    from ekt.generation.backends.torch_sampler import TransformersSampler

    requests = [(f"toy/{i}", student_prompt(q)) for i, q in enumerate(["Tom has 3 pens.", "A"])]
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=12, seed=7)
    # batch_size 1: every sample decoded alone, in a full call and in a range alike
    sampler = TransformersSampler(*tiny, progress=False, batch_size=1)
    whole = {(c.problem_id, c.sample_idx): c for c in sampler.sample(requests, params)}
    again = {(c.problem_id, c.sample_idx): c for c in sampler.sample(requests, params, start=0)}
    assert again == whole
    two = SamplingParams(n=2, temperature=1.0, max_new_tokens=12, seed=7)
    part = list(sampler.sample(requests, two, start=2))
    assert sorted((c.problem_id, c.sample_idx) for c in part) == [
        ("toy/0", 2), ("toy/0", 3), ("toy/1", 2), ("toy/1", 3)
    ]  # fmt: skip
    assert all(whole[(c.problem_id, c.sample_idx)] == c for c in part)
    assert len({c.text for c in whole.values()}) > 2  # the samples do differ


def test_transformers_adaptive_generate_equals_full_when_nothing_is_solved(
    tiny, tmp_path, task, problems
):
    """The tiny model never returns a gold answer: adaptive draws every index, in rounds,
    and with one sample per batch its records are full's, line for line (sorted)."""
    from ekt.generation.backends.torch_sampler import TransformersSampler

    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=10, seed=2)
    sampler = TransformersSampler(*tiny, progress=False, batch_size=1)
    generate(sampler, problems[:3], tmp_path / "full", params, GenerateSettings(prompt="student"))
    budget = AdaptiveBudget(round_size=2, keep="first", target=1, give_up_after=0)
    ex = tmp_path / "adaptive" / "executions.jsonl"
    with RoundJudge(tmp_path / "adaptive", ex, task, SANDBOX) as judge:
        s = generate(
            sampler,
            problems[:3],
            tmp_path / "adaptive",
            params,
            GenerateSettings(prompt="student", budget=budget),
            judge=judge,
        )  # fmt: skip
    assert s.samples == s.full_samples == 12 and s.left_early == 0
    assert "adaptive budget: 0/3 questions left early" in s.line()
    assert _samples(tmp_path / "adaptive") == _samples(tmp_path / "full")


# -- SIGKILL mid-round, resume --------------------------------------------------------------

KILLS = ["sample:2:3", "exec:3", "log:2", "sample:4:0", "exec:1"]


def _child(out: str, data_dir: str, kill: str) -> None:
    """This file as a script: an adaptive generate that SIGKILLs itself at ``kill``."""
    from ekt import records

    task = get_task("gsm8k", data_dir)
    problems = task.load("train")[:6]
    kill_at = None
    kind, _, rest = kill.partition(":")
    if kind == "sample":
        start, k = rest.split(":")
        kill_at = (int(start), int(k))
    elif kind in ("exec", "log"):
        name = "executions.jsonl" if kind == "exec" else BUDGET_LOG
        after, count = int(rest), [0]
        write = records.JsonlWriter.write

        def write_then_die(self, record):
            write(self, record)
            if self.path.name == name:
                count[0] += 1
                if count[0] == after:
                    os.kill(os.getpid(), signal.SIGKILL)

        records.JsonlWriter.write = write_then_die  # type: ignore[method-assign]
    budget = AdaptiveBudget(round_size=2, keep="first", target=1, give_up_after=0)
    with RoundJudge(out, Path(out) / "executions.jsonl", task, SANDBOX) as judge:
        sampler = _sampler(problems, kill_at)
        generate(
            sampler,
            problems,
            out,
            PARAMS,
            GenerateSettings(shard_size=4, budget=budget),
            judge=judge,
        )


def _spawn(out: Path, data_dir: Path, kill: str) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, __file__, str(out), str(data_dir), kill]
    proc = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(proc.stderr.decode()[-3000:])
    return proc.returncode


def test_killed_mid_round_resumes_to_the_uninterrupted_pairs(tmp_path, task, problems, data_dir):
    whole = tmp_path / "whole"
    assert _spawn(whole, data_dir, "none") == 0
    part = tmp_path / "part"
    killed = [_spawn(part, data_dir, k) for k in KILLS]
    assert killed == [-signal.SIGKILL] * len(KILLS), killed  # every kill point was reached
    assert not (part / "samples" / "shard-00001.done").exists()
    assert _spawn(part, data_dir, "none") == 0

    # the same samples, rounds and verified records, none twice; then the same pairs
    def lines(p: Path) -> list[str]:
        return sorted(p.read_text().splitlines())

    for name in ("samples/shard-00000.jsonl", "samples/shard-00001.jsonl", BUDGET_LOG):
        assert lines(part / name) == lines(whole / name), name

    def graded(out: Path) -> list[tuple]:
        return sorted(
            (o["problem_id"], o["sample_idx"], o["status"], o["value"], o["correct"])
            for _, o in read_jsonl(out / "executions.jsonl")
        )

    assert graded(part) == graded(whole)
    assert len(graded(part)) == len(set(graded(part)))
    pairs = {}
    for out in (whole, part):
        filter_stage(out / "executions.jsonl", out / "pairs.jsonl", task, keep="first")
        pairs[out] = (out / "pairs.jsonl").read_text()
    assert pairs[whole] and pairs[part] == pairs[whole]
    # and those are full's pairs
    full = _run(tmp_path / "full", task, problems, _sampler(problems))
    assert [json.loads(x) for x in pairs[whole].splitlines()] == full


if __name__ == "__main__":
    if sys.argv[3] == "none":
        _child(sys.argv[1], sys.argv[2], "")
    else:
        _child(*sys.argv[1:4])


# -- the pipeline ---------------------------------------------------------------------------


def _runner(tmp_path: Path, data_dir: Path, problems, budget: str, name: str):
    from ekt.pipeline.config import RunConfig, TeacherSampling
    from ekt.pipeline.run import Runner

    samplers: list[SeededSampler] = []

    def factory(spec, device, batch_size, backend):
        def make():
            samplers.append(_sampler(problems))
            return samplers[-1]

        return make

    ts = TeacherSampling(
        n=8, temperature=0.8, max_new_tokens=16, seed=3, budget=budget, round_size=2
    )  # fmt: skip
    cfg = RunConfig(
        name=name, data_dir=str(data_dir), train_limit=6, teacher_sampling=ts, sandbox=SANDBOX
    )
    return Runner(cfg, tmp_path / name, sampler_factory=factory), samplers


def test_runner_teacher_pairs_adaptive_equal_full(tmp_path, data_dir, problems):
    pairs, summaries, drawn = {}, {}, {}
    for budget in ("full", "adaptive"):
        runner, samplers = _runner(tmp_path, data_dir, problems, budget, budget)
        pairs[budget] = runner.teacher_pairs(problems)[0].read_text()
        summaries[budget] = runner.stage_summaries
        drawn[budget] = samplers[0].drawn
    assert pairs["full"] and pairs["adaptive"] == pairs["full"]
    gen = summaries["adaptive"]["teacher_generate"]
    assert gen["budget"] == "adaptive" and gen["samples_full_budget"] == 48
    assert gen["samples"] == drawn["adaptive"] < drawn["full"] == 48
    assert gen["questions_left_early"] >= 1
    assert summaries["full"]["teacher_generate"]["samples"] == 48
    assert "budget" not in summaries["full"]["teacher_generate"]
    # the verify stage found every program already judged, round by round
    assert summaries["adaptive"]["teacher_verify"]["programs"] == drawn["adaptive"]


@pytest.mark.slow
def test_expert_iteration_with_an_adaptive_budget(tmp_path, task, problems, tiny_model_dir):
    """One round (it trains the tiny model): the same new pairs as a full budget, fewer
    samples."""
    from ekt.methods.expert_iteration import ExpertIterationConfig, Rounds, expert_iteration
    from ekt.training.train import TrainConfig

    train = TrainConfig(
        learning_rate=1e-3, warmup_steps=0, batch_size=2, per_device_train_batch_size=2, max_steps=1
    )
    cfg = ExpertIterationConfig(rounds=1)
    got, drawn = {}, {}
    for name, budget in (
        ("full", None),
        ("adaptive", AdaptiveBudget(round_size=2, keep="first", target=1, give_up_after=0)),
    ):
        samplers: list[SeededSampler] = []

        def make(spec, samplers=samplers):
            return lambda: samplers.append(_sampler(problems)) or samplers[-1]

        result = expert_iteration(problems, tmp_path / name, Rounds(
            str(tiny_model_dir), task, make, PARAMS, cfg, train, SANDBOX, "cpu", budget=budget,
        ))  # fmt: skip
        got[name] = (tmp_path / name / "round-1" / "new_pairs.jsonl").read_text()
        drawn[name] = samplers[0].drawn
        assert result.rounds[0].pairs_added >= 1
    assert got["adaptive"] == got["full"]
    assert drawn["adaptive"] < drawn["full"]


class InProcessCluster:
    """``ShardCluster`` without Ray: each shard job goes to the Ray path's own generation
    actor class (``_Generator``), built here from the factory, as a Ray actor would be."""

    def __init__(self):
        self.jobs: list[tuple[int, int | None]] = []

    def generate_shards(self, sampler, shards, params, start=None):
        from ekt.pipeline.distributed import _Generator

        actor = _Generator(sampler)
        for idx, requests in shards:
            self.jobs.append((idx, start))
            yield idx, actor.sample(requests, params, start)

    def generate_rounds(self, sampler, jobs, then):
        """Round-robin over the shards, as replicas would interleave them."""
        from ekt.pipeline.distributed import _Generator

        actor, queue = _Generator(sampler), list(jobs)
        while queue:
            idx, (requests, params, start) = queue.pop(0)
            self.jobs.append((idx, start))
            nxt = then(idx, actor.sample(requests, params, start))
            if nxt is not None:
                queue.append((idx, nxt))


def test_adaptive_rounds_through_a_shard_cluster(tmp_path, task, problems):
    budget = AdaptiveBudget(round_size=2, keep="first", target=1, give_up_after=0)
    cluster = InProcessCluster()
    out = {}
    for name, c in (("local", None), ("cluster", cluster)):
        d = tmp_path / name
        with RoundJudge(d, d / "executions.jsonl", task, SANDBOX) as judge:
            generate(
                lambda: _sampler(problems),
                problems,
                d,
                PARAMS,
                GenerateSettings(shard_size=4, budget=budget),
                judge=judge,
                cluster=c,
            )  # fmt: skip
        out[name] = _samples(d)
    assert out["cluster"] == out["local"] and len(out["local"]) < 48
    assert {start for _, start in cluster.jobs} >= {0, 2}  # rounds, as index ranges
    # interleaved: shard 1's first round goes out before shard 0's second
    order = [(idx, start) for idx, start in cluster.jobs]
    assert order.index((1, 0)) < order.index((0, 2))


def test_ekt_generate_takes_the_adaptive_budget(tiny_model_dir, data_dir, tmp_path, capsys):
    """`ekt generate --sampling.budget adaptive`: rounds graded in the sandbox as they are
    drawn; a question the tiny model cannot solve leaves after give_up_after samples."""
    from ekt.cli import main

    out = tmp_path / "gen"
    argv = [
        "generate", "--model", str(tiny_model_dir), "--data-dir", str(data_dir), "--limit", "3",
        "--n", "8", "--max-new-tokens", "12", "--device", "cpu", "--out", str(out),
        "--sampling.budget", "adaptive", "--sampling.round_size", "2",
        "--sampling.give_up_after", "4", "--keep", "first",
    ]  # fmt: skip
    assert main(argv) == 0
    said = capsys.readouterr().out
    samples = [json.loads(x) for p in sorted((out / "samples").glob("*.jsonl"))
               for x in p.read_text().splitlines()]  # fmt: skip
    graded = [json.loads(x) for x in (out / "executions.jsonl").read_text().splitlines()]
    by_q = {}
    for s in samples:
        by_q.setdefault(s["problem_id"], []).append(s["sample_idx"])
    assert len(by_q) == 3
    for pid, idx in by_q.items():
        solved = any(g["correct"] for g in graded if g["problem_id"] == pid)
        assert sorted(idx) == list(range(len(idx)))
        assert len(idx) == (len(idx) if solved else 4) and len(idx) < 8
    assert {(g["problem_id"], g["sample_idx"]) for g in graded} == {
        (s["problem_id"], s["sample_idx"]) for s in samples
    }
    assert (out / "budget.jsonl").is_file() and "executions.jsonl" in said
    # --force starts over: old grades go with the old samples
    assert main(argv + ["--force"]) == 0
    again = (out / "executions.jsonl").read_text().splitlines()
    assert len(again) == len(graded)
