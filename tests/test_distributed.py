"""`--ray`: verify and generate over shards on a local Ray cluster give the single-process records.

The cluster (2 CPUs) is started by the module fixture. Each path is run once locally and
once on Ray with several shards and two actors; a further run has one actor's process
SIGKILLed mid-run and must still finish with every record once.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'ekt[ray]'")
# one Ray cluster for the module: its tests stay on one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("ray")


@pytest.fixture(scope="module")
def ray_cluster():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _actor_pids(kind: str) -> list[int]:
    """Processes of live Ray actors of class ``kind`` (Ray titles them ``ray::<Class>...``)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if cmd.startswith(f"ray::{kind}".encode()):
            pids.append(int(d.name))
    return pids


def _kill_when(kind: str, ready, deadline: float = 120.0) -> threading.Thread:
    """In the background: once ``ready()``, SIGKILL one ``kind`` actor process."""
    killed: list[int] = []

    def watch() -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < deadline:
            if ready():
                pids = _actor_pids(kind)
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
                    return
            time.sleep(0.01)

    t = threading.Thread(target=watch, daemon=True)
    t.killed = killed  # type: ignore[attr-defined]
    t.start()
    return t


# -- verify ----------------------------------------------------------------------------------


def _programs(task, path: Path, n: int = 40) -> None:
    """A few dozen programs over training questions: right, wrong, raising, slowish."""
    problems = task.load("train")[:10]
    with open(path, "w") as fh:
        for i in range(n):
            p = problems[i % len(problems)]
            kind = i % 4
            if kind == 0:
                body = f"    return {p.answer!r}"
            elif kind == 1:
                body = f"    return {p.answer!r} + 1"
            elif kind == 2:
                body = "    return 1 / 0"
            else:  # keeps the run long enough to be killed in the middle
                body = f"    import time\n    time.sleep(0.1)\n    return {p.answer!r}"
            prog = f"def solution():\n{body}\n"
            rec = {"problem_id": p.id, "sample_idx": i // len(problems), "program": prog}
            fh.write(json.dumps(rec) + "\n")


def _records(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        rec.pop("ms")  # wall-clock time of the run: the one field that differs
        out.append(rec)
    return out


@pytest.fixture(scope="module")
def verify_case(data_dir, tmp_path_factory):
    from ekt.data.tasks import get_task
    from ekt.verification.verify import verify

    task = get_task("gsm8k", str(data_dir))
    d = tmp_path_factory.mktemp("verify")
    _programs(task, d / "programs.jsonl")
    verify(d / "programs.jsonl", d / "local.jsonl", task, progress=False)
    return task, d, _records(d / "local.jsonl")


@pytest.mark.slow
def test_ray_verify_matches_local(ray_cluster, verify_case):
    from ekt.pipeline.distributed import RayCluster
    from ekt.verification.verify import verify

    task, d, want = verify_case
    assert len(want) == 40 and {r["status"] for r in want} == {"ok", "error"}
    cluster = RayCluster(verifiers=2, cpus_per_verifier=1, verify_shard_size=6)
    s = verify(d / "programs.jsonl", d / "ray.jsonl", task, progress=False, cluster=cluster)
    assert (s.programs, s.new) == (40, 40)
    assert _records(d / "ray.jsonl") == want  # same records, same order
    # resumable as before: a rerun finds everything done and runs nothing
    s = verify(d / "programs.jsonl", d / "ray.jsonl", task, progress=False, cluster=cluster)
    assert s.new == 0 and _records(d / "ray.jsonl") == want


@pytest.mark.slow
def test_ray_verify_survives_a_killed_actor(ray_cluster, verify_case, capfd):
    from ekt.pipeline.distributed import RayCluster
    from ekt.verification.verify import verify

    task, d, want = verify_case
    out = d / "killed.jsonl"
    cluster = RayCluster(verifiers=2, cpus_per_verifier=1, verify_shard_size=4)
    watcher = _kill_when("_Verifier", lambda: out.exists() and out.stat().st_size > 0)
    verify(d / "programs.jsonl", out, task, progress=False, cluster=cluster)
    watcher.join(timeout=5)
    assert watcher.killed, "no verifier was killed: the run finished first"  # type: ignore
    assert "ray: lost the actor running verify shard" in capfd.readouterr().err
    got = _records(out)
    keys = [(r["problem_id"], r["sample_idx"]) for r in got]
    assert len(keys) == len(set(keys)) == 40  # nothing lost, nothing doubled
    assert got == want


# -- generate --------------------------------------------------------------------------------


def _gen(model: Path, problems, out: Path, cluster=None):
    from ekt.generation.backends import make_sampler
    from ekt.generation.config import SamplingParams
    from ekt.generation.generate import GenerateSettings, generate

    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=24, seed=7)
    return generate(
        make_sampler(str(model), "cpu", 6),
        problems,
        out,
        params,
        GenerateSettings(shard_size=2),
        cluster=cluster,
    )


def _lines(out: Path) -> dict[str, list[str]]:
    return {
        p.name: p.read_text().splitlines() for p in sorted((out / "samples").glob("shard-*.jsonl"))
    }


@pytest.fixture(scope="module")
def generate_case(tiny_model_dir, data_dir, tmp_path_factory):
    from ekt.data.tasks import get_task

    problems = get_task("gsm8k", str(data_dir)).load("train")[:10]
    d = tmp_path_factory.mktemp("generate")
    _gen(tiny_model_dir, problems, d / "local")
    want = _lines(d / "local")
    assert len(want) == 5 and sum(map(len, want.values())) == 30
    return problems, d, want


@pytest.mark.slow
def test_ray_generate_matches_local(ray_cluster, tiny_model_dir, generate_case):
    from ekt.pipeline.distributed import RayCluster

    problems, d, want = generate_case
    out = d / "ray"
    # a partial shard left by an earlier (local) run: completed, nothing written twice
    (out / "samples").mkdir(parents=True)
    first = want["shard-00001.jsonl"]
    (out / "samples" / "shard-00001.jsonl").write_text("\n".join(first[:2]) + "\n")
    s = _gen(tiny_model_dir, problems, out, RayCluster(replicas=2))
    assert s.new_samples == 28
    assert _lines(out) == want  # byte for byte, line for line
    assert len(list((out / "samples").glob("*.done"))) == 5
    assert _gen(tiny_model_dir, problems, out, RayCluster(replicas=2)).new_samples == 0


@pytest.mark.slow
def test_ray_generate_survives_a_killed_actor(
    ray_cluster, tiny_model_dir, generate_case, capfd
):
    from ekt.pipeline.distributed import RayCluster

    problems, d, want = generate_case
    out = d / "killed"
    watcher = _kill_when("_Generator", lambda: any((out / "samples").glob("*.done")))
    _gen(tiny_model_dir, problems, out, RayCluster(replicas=2))
    watcher.join(timeout=5)
    assert watcher.killed, "no generator was killed: the run finished first"  # type: ignore
    assert "ray: lost the actor running generate shard" in capfd.readouterr().err
    assert _lines(out) == want  # nothing lost, nothing doubled, same samples


@pytest.mark.slow
def test_ray_adaptive_rounds_match_local(ray_cluster, tiny_model_dir, data_dir, generate_case):
    """budget: adaptive on Ray: every shard's next round goes out as soon as its last one is
    judged, on two replicas kept for the whole stage; the same shards, line for line, and
    the same round log as one process drawing the shards one after another."""
    from ekt.data.tasks import get_task
    from ekt.generation.backends import make_sampler
    from ekt.generation.budget import AdaptiveBudget
    from ekt.generation.config import SamplingParams
    from ekt.generation.generate import GenerateSettings, generate
    from ekt.pipeline.distributed import RayCluster
    from ekt.sandbox.pool import SandboxConfig
    from ekt.verification.verify import RoundJudge

    problems, d, _ = generate_case
    task = get_task("gsm8k", str(data_dir))
    params = SamplingParams(n=6, temperature=1.0, max_new_tokens=16, seed=7)
    budget = AdaptiveBudget(round_size=2, keep="first", target=1, give_up_after=4)
    logs = {}
    for name, cluster in (("adaptive-local", None), ("adaptive-ray", RayCluster(replicas=2))):
        out = d / name
        with RoundJudge(out, out / "executions.jsonl", task, SandboxConfig(workers=1)) as judge:
            s = generate(
                make_sampler(str(tiny_model_dir), "cpu", 6),
                problems,
                out,
                params,
                GenerateSettings(shard_size=2, budget=budget),
                cluster=cluster,
                judge=judge,
            )  # fmt: skip
        logs[name] = sorted((out / "budget.jsonl").read_text().splitlines())
        assert s.samples == 40  # the tiny model solves nothing: 4 samples each, then given up
    assert _lines(d / "adaptive-ray") == _lines(d / "adaptive-local")
    assert logs["adaptive-ray"] == logs["adaptive-local"] and len(logs["adaptive-ray"]) == 10


@pytest.mark.slow
def test_a_cluster_reaches_verify_only_when_passed(ray_cluster, verify_case):
    """No global cluster: verify(cluster=...) runs on Ray, a plain verify() runs here."""
    from ekt.pipeline.distributed import RayCluster
    from ekt.verification.verify import verify

    task, d, want = verify_case
    cluster = RayCluster(verifiers=1, cpus_per_verifier=2, verify_shard_size=16)
    verify(d / "programs.jsonl", d / "ctx.jsonl", task, progress=False, cluster=cluster)
    assert _records(d / "ctx.jsonl") == want


@pytest.mark.slow
def test_cli_verify_with_ray_flag(ray_cluster, verify_case, capsys):
    """`ekt verify --ray` joins the running cluster and writes the local path's records."""
    from ekt.cli import main, parse

    task, d, want = verify_case
    options, _ = parse("verify", ["--programs", "x", "--out", "y", "--ray"])
    assert options.ray.address is None and options.ray.verifiers == 0
    out = d / "cli.jsonl"
    rc = main([
        "verify", "--data-dir", str(task.data_dir), "--programs", str(d / "programs.jsonl"),
        "--out", str(out), "--ray", "--ray-verifiers", "2", "--workers", "1",
    ])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert "verify: 40 programs (40 run" in capsys.readouterr().out
    assert _records(out) == want


@pytest.mark.slow
def test_ray_evaluate_matches_local(ray_cluster, tiny_model_dir, data_dir, tmp_path):
    """`ekt evaluate --ray`: greedy and sampled generation and verification on the cluster."""
    from ekt.data.tasks import get_task
    from ekt.evaluation.evaluate import EvalConfig, evaluate
    from ekt.generation.backends import make_sampler
    from ekt.pipeline.distributed import RayCluster

    task = get_task("gsm8k", str(data_dir))
    problems = task.load("test")[:4]
    cfg = EvalConfig(n=3, k=[1, 3], max_new_tokens=16, batch_size=4)

    def run(out, cluster=None):
        sampler = make_sampler(str(tiny_model_dir), "cpu", 4)
        return evaluate(sampler, problems, out, cfg, task, progress=False, cluster=cluster)

    local = run(tmp_path / "local")
    on_ray = run(tmp_path / "ray", RayCluster(replicas=2, verifiers=2, cpus_per_verifier=1))
    drop = ("seconds",)
    assert {k: v for k, v in on_ray.items() if k not in drop} == {
        k: v for k, v in local.items() if k not in drop
    }
    for part in ("greedy", "sampled"):
        assert _lines(tmp_path / "ray" / part) == _lines(tmp_path / "local" / part)
        assert _records(tmp_path / "ray" / part / "executions.jsonl") == _records(
            tmp_path / "local" / part / "executions.jsonl"
        )
