"""`ekt generate` SIGKILLed mid-run and run again gives the records of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def varied_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with amplified residual branches, so samples differ and run long."""
    from conftest import amplified_model

    return amplified_model(tiny_model_dir, tmp_path_factory.mktemp("varied") / "model", 40)


def _cmd(model: Path, data_dir: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "ekt", "generate", "--model", str(model), "--task", "gsm8k",
        "--data-dir", str(data_dir), "--split", "train", "--limit", "10", "--n", "4",
        "--temperature", "1.0", "--max-new-tokens", "40", "--seed", "5",
        "--shard-size", "4", "--batch-size", "6", "--device", "cpu", "--out", str(out),
    ]  # fmt: skip


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _lines(out: Path) -> list[str]:
    return [
        line
        for p in sorted((out / "samples").glob("shard-*.jsonl"))
        for line in p.read_text().splitlines()
    ]


def _kill_after(cmd: list[str], ready, deadline: float = 300.0) -> bool:
    """Start ``cmd``, SIGKILL it as soon as ``ready()``; False if it finished first."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    try:
        while proc.poll() is None and time.monotonic() - t0 < deadline:
            if ready():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    return False


@pytest.mark.slow
def test_killed_generate_resumes_to_identical_records(varied_model_dir, data_dir, tmp_path):
    whole = tmp_path / "whole"
    subprocess.run(_cmd(varied_model_dir, data_dir, whole), env=_env(), check=True)
    want = _lines(whole)
    assert len(want) == 10 * 4

    part = tmp_path / "part"
    cmd = _cmd(varied_model_dir, data_dir, part)
    shard0 = part / "samples" / "shard-00000.jsonl"
    shard1 = part / "samples" / "shard-00001.jsonl"

    def written(path: Path, at_least: int):
        return lambda: path.exists() and path.read_bytes().count(b"\n") >= at_least

    # Killed twice: inside the first shard, then inside the second (after shard 0 is done).
    killed = [_kill_after(cmd, written(shard0, 3)), _kill_after(cmd, written(shard1, 5))]
    assert all(killed), f"the job finished before it could be killed: {killed}"
    got_before = _lines(part)
    assert len(got_before) < len(want)
    subprocess.run(cmd, env=_env(), check=True, capture_output=True)
    got = _lines(part)
    assert got == want  # same records, same order, nothing torn, nothing doubled
    assert sorted((part / "samples").glob("*.done")) and len(list(part.glob("samples/*.done"))) == 3
