"""`eval.parallel`: students evaluated side by side, each in a process of its own, write the
same records as one after the other; a failing one stops the run with its own error."""

from __future__ import annotations

import json

import pytest
from tiny_models import make_tiny_model

from ekt.errors import EktError
from ekt.pipeline.config import build_config
from ekt.pipeline.eval_pool import cpu_workers
from ekt.pipeline.run import Runner

CONFIG = {
    "task": "basic_arithmetic",
    "device": "cpu",
    "methods": ["ekt"],
    "evaluate_teacher": False,
    "eval": {"limit": 3, "n": 2, "k": [1, 2], "max_new_tokens": 10, "temperature": 0.9,
             "greedy": True, "batch_size": 4},
    "sandbox": {"workers": 1, "timeout": 3},
}  # fmt: skip


def _runner(tmp_path, name: str, tiny: str, parallel: int) -> Runner:
    cfg = build_config({**CONFIG, "teacher": tiny, "student": tiny, "name": name,
                        "eval": {**CONFIG["eval"], "parallel": parallel}})  # fmt: skip
    runner = Runner(cfg, tmp_path / name)
    runner.dir.mkdir(parents=True)
    return runner


def _records(runner: Runner) -> dict[str, list]:
    """Every record of the evaluations, less the sandbox's timings."""
    return {
        str(p.relative_to(runner.dir)): [
            {k: v for k, v in json.loads(line).items() if k != "ms"}
            for line in p.read_text().splitlines()
        ]
        for p in sorted((runner.dir / "eval").rglob("*.jsonl"))
    }


def test_side_by_side_writes_what_one_after_the_other_writes(tmp_path, tiny_model_dir, capsys):
    other = make_tiny_model(tmp_path / "other", seed=3)
    jobs = [("student-base", str(tiny_model_dir), "none"), ("student-x", str(other), "x")]
    serial = _runner(tmp_path, "serial", str(tiny_model_dir), 1)
    problems = serial.task.load("test")[:3]
    want = serial.eval_students(jobs, problems)
    assert "at a time" not in capsys.readouterr().out

    side = _runner(tmp_path, "side", str(tiny_model_dir), 2)
    got = side.eval_students(jobs, problems)
    out = capsys.readouterr().out
    assert out.count("(2 at a time, 1 thread(s) each)") == 2
    assert [r["label"] for r in got] == ["student-base", "student-x"]
    for a, b in zip(got, want):
        assert a["settings"]["eval"].pop("parallel") == 2
        assert b["settings"]["eval"].pop("parallel") == 1
        assert {k: v for k, v in a.items() if k != "seconds"} == {
            k: v for k, v in b.items() if k != "seconds"
        }
    assert _records(side) == _records(serial) and len(_records(side)) >= 6
    assert all(name in side.times for name in serial.times)


def test_a_failing_evaluation_is_raised_not_hung(tmp_path, tiny_model_dir):
    runner = _runner(tmp_path, "bad", str(tiny_model_dir), 2)
    problems = runner.task.load("test")[:2]
    jobs = [("student-base", str(tiny_model_dir), "none"),
            ("student-x", str(tmp_path / "no-such-model"), "x")]  # fmt: skip
    with pytest.raises(EktError, match="no-such-model"):
        runner.eval_students(jobs, problems)


@pytest.mark.parametrize(
    "requested,jobs,device,local,want",
    [(2, 5, "cpu", True, 2), (4, 3, "cpu", True, 3), (1, 5, "cpu", True, 1),
     (2, 1, "cpu", True, 1), (2, 5, "cpu", False, 1), (2, 5, "cuda", True, 1),
     (2, 5, "cuda:1", True, 1)],
)  # fmt: skip
def test_how_many_at_once(requested, jobs, device, local, want):
    assert cpu_workers(requested, jobs, device, local) == want
