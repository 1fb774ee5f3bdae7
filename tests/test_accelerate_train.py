"""`accelerate launch` on two CPU processes (DDP over gloo) trains like one process.

Fine-tuning (sft) and knowledge distillation with a live teacher (kd) are both run.

Both runs take two optimizer steps at the same global batch (4 examples: one process
accumulating two micro-batches of 2, or two processes with one micro-batch of 2 each),
from the same initial weights and data order; the per-step losses and the final
weights must agree to float tolerance. The launch uses the shipped
configs/accelerate/cpu_ddp.yaml, so that config is checked too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ekt.records import TrainPair, write_jsonl_atomic

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "accelerate" / "cpu_ddp.yaml"

PAIRS = [
    TrainPair(
        f"gsm8k/train/{i}",
        f"Ann has {i + 1} apples and buys {2 * i + 3} more. How many apples now?",
        f"def solution():\n    apples = {i + 1}\n    bought = {2 * i + 3}\n"
        f"    return apples + bought\n",
    )
    for i in range(8)
]

ARGS = [
    "--max-steps", "2", "--batch-size", "4", "--per-device-train-batch-size", "2",
    "--learning-rate", "3e-3", "--warmup-steps", "0", "--logging-steps", "1",
    "--device", "cpu", "--seed", "0",
]  # fmt: skip


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(out: Path) -> list[float]:
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sft", "kd"])
def test_two_gloo_processes_match_one(tiny_model_dir, tmp_path, method):
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which(
        "accelerate"
    )
    if launcher is None:
        pytest.skip("the accelerate launcher is not installed")
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl_atomic(pairs, PAIRS)
    common = ["train", "--student", str(tiny_model_dir), "--pairs", str(pairs), *ARGS]
    if method == "kd":  # a live teacher on every rank (here the same tiny model)
        common += ["--method", "kd", "--teacher", str(tiny_model_dir)]

    one = tmp_path / "one"
    subprocess.run(
        [sys.executable, "-m", "ekt", *common, "--out", str(one)],
        env=_env(), check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    two = tmp_path / "two"
    proc = subprocess.run(
        [
            launcher, "launch", "--config_file", str(CONFIG), "--num_processes", "2",
            "--main_process_port", str(_free_port()), "-m", "ekt", *common, "--out", str(two),
        ],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    s1 = json.loads((one / "train_summary.json").read_text())
    s2 = json.loads((two / "train_summary.json").read_text())
    assert (s1["steps"], s2["steps"]) == (2, 2)
    assert s1["effective_batch"] == s2["effective_batch"] == 4
    assert (s1["gradient_accumulation_steps"], s2["gradient_accumulation_steps"]) == (2, 1)
    assert s1["tokens_trained"] == s2["tokens_trained"]  # the same examples, all of them
    l1, l2 = _losses(one), _losses(two)
    assert len(l1) == len(l2) == 2
    assert l1 == pytest.approx(l2, rel=1e-4), (l1, l2)
    w1, w2 = _weights(one), _weights(two)
    assert w1.keys() == w2.keys()
    for k in w1:
        diff = (w1[k] - w2[k]).abs().max().item()
        assert diff < 1e-4, f"{k}: weights differ by {diff}"


def test_each_rank_loads_onto_its_own_gpu(monkeypatch):
    """Under a multi-process launch a default/bare cuda device becomes cuda:LOCAL_RANK (the
    student and a KD teacher land on the rank's GPU); anything explicit is left alone."""
    import torch

    from ekt.training.train import local_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert local_device(None) is None and local_device("cuda") == "cuda"
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert local_device(None) == "cuda:3" and local_device("cuda") == "cuda:3"
    assert local_device("cpu") == "cpu" and local_device("cuda:5") == "cuda:5"
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert local_device(None) is None
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert local_device(None) is None  # CPU ranks (gloo) stay on the CPU
