"""Logs sent to a file: progress is a whole line every few seconds (no \\r frames, no escape
codes), and training prints one readable line per logging step (not the Trainer's dicts)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from ekt.progress import LineProgress, progress
from ekt.training.train import log_line

REPO = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_line_progress_prints_a_line_every_interval():
    out, clock = io.StringIO(), Clock()
    bar = LineProgress(100, "verify", "prog", stream=out, every=5.0, clock=clock)
    for _ in range(10):  # 10 updates within 4.5 s: nothing yet
        clock.t += 0.45
        bar.update(1)
    assert out.getvalue() == ""
    clock.t = 5.0
    bar.update(10)
    bar.close()
    bar.close()  # once
    lines = out.getvalue().splitlines()
    assert lines[0] == "verify: 20/100 prog (20%), 4.0 prog/s, about 20 s left, 5 s"
    assert lines[1].startswith("verify: 20/100 prog (20%)") and len(lines) == 2
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_progress_is_a_bar_only_on_a_terminal():
    assert isinstance(progress(10, "x", "it", stream=io.StringIO()), LineProgress)


def test_log_line_is_readable():
    line = log_line(10, 100, 0.5263, {"loss": "1.916", "grad_norm": 0.5213,
                                      "learning_rate": 9e-05, "note": "warm"})  # fmt: skip
    assert line == ("train: step 10/100 (epoch 0.53): loss 1.916, grad_norm 0.5213, "
                    "learning_rate 9.0e-05, note warm")  # fmt: skip


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "EKT_PROGRESS_SECONDS": "0",
           "EKT_CACHE_DIR": str(cwd / "cache"), "HF_HUB_OFFLINE": "1"}  # fmt: skip
    with open(cwd / "log.txt", "w") as log:  # stdout and stderr to a file, as a batch job
        r = subprocess.run([sys.executable, "-m", "ekt", *args], stdout=log,
                           stderr=subprocess.STDOUT, env=env, cwd=cwd)  # fmt: skip
    r.stdout = (cwd / "log.txt").read_text()
    return r


def test_verify_and_train_logs_in_a_file(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from startup import small_verify_inputs
    finally:
        sys.path.pop(0)
    r = _run(small_verify_inputs(tmp_path), tmp_path)
    assert r.returncode == 0, r.stdout
    assert "\r" not in r.stdout and "\x1b" not in r.stdout
    progress_lines = [x for x in r.stdout.splitlines() if x.startswith("verify: ") and "/10" in x]
    assert progress_lines and progress_lines[-1].startswith("verify: 10/10 prog (100%)")

    from tiny_models import make_tiny_model

    from ekt.records import TrainPair, write_jsonl_atomic

    model = make_tiny_model(tmp_path / "tiny")
    pairs = [TrainPair(f"t/train/{i}", f"What is {i} plus 1?",
                       f"def solution():\n    return {i} + 1\n") for i in range(4)]  # fmt: skip
    write_jsonl_atomic(tmp_path / "pairs.jsonl", pairs)
    r = _run(["train", "--student", str(model), "--pairs", str(tmp_path / "pairs.jsonl"),
              "--out", str(tmp_path / "student"), "--device", "cpu", "--train.max_steps", "4",
              "--train.logging_steps", "1", "--train.batch_size", "2",
              "--train.per_device_train_batch_size", "2", "--train.warmup_steps", "0"],
             tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:]
    assert "\r" not in r.stdout and "\x1b" not in r.stdout
    assert "{'loss'" not in r.stdout and "{\"loss\"" not in r.stdout  # no raw dicts
    assert "|" not in r.stdout.split("train: step 1/4")[1]  # no bar frames after training
    steps = [x for x in r.stdout.splitlines() if x.startswith("train: step ")]
    assert [x.split(":")[1].strip().split(" (")[0] for x in steps[:4]] == [
        f"step {i}/4" for i in range(1, 5)]
    assert all(" loss " in x for x in steps[:4])
    logged = [json.loads(x) for x in (tmp_path / "student" / "train_log.jsonl").read_text()
              .splitlines()]  # fmt: skip
    assert [row["step"] for row in logged if "loss" in row] == [1, 2, 3, 4]
