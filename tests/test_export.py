"""``ekt export``: the pairs of a run in TRL's formats and as an HF dataset, with round trips.

The messages file trains a tiny model with TRL's SFTTrainer; the hf folder loads with
``datasets.load_from_disk``; the prompt/completion rows are exactly what ekt trains on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ekt.data.prompts import PROGRAM_HEADER, student_prompt
from ekt.records import TrainPair, write_jsonl_atomic

# trains with TRL: `make test` only
pytestmark = pytest.mark.slow

PAIRS = [
    TrainPair(
        "gsm8k/train/0",
        "Ann has 3 pens and buys 4 more. How many pens?",
        PROGRAM_HEADER + "    pens = 3 + 4\n    return pens\n",
    ),
    TrainPair(
        "gsm8k/train/1",
        "A box holds 6 eggs. How many eggs in 5 boxes?",
        PROGRAM_HEADER + "    eggs = 6 * 5\n    return eggs\n",
        source="teacher",
    ),
    TrainPair(
        "gsm8k/train/2", "Half of 18?", PROGRAM_HEADER + "    return 18 / 2\n", source="supervised"
    ),
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}<|endoftext|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture()
def run_dir(tmp_path) -> Path:
    d = tmp_path / "run"
    write_jsonl_atomic(d / "train_pairs.jsonl", PAIRS[:2])
    write_jsonl_atomic(d / "supervised" / "train_pairs.jsonl", PAIRS[2:])
    return d


def _ekt(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "ekt", *args], capture_output=True, text=True, env=env
    )


def test_prompt_completion_is_what_ekt_trains_on(run_dir, tmp_path):
    out = tmp_path / "pc.jsonl"
    r = _ekt("export", str(run_dir), "--format", "prompt-completion", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "export: 2 ekt pairs" in r.stdout
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["problem_id"] for r in rows] == ["gsm8k/train/0", "gsm8k/train/1"]
    for row, pair in zip(rows, PAIRS):
        assert row["prompt"] == student_prompt(pair.question)
        assert row["prompt"].endswith(PROGRAM_HEADER)
        assert (
            row["prompt"] + row["completion"]
            == student_prompt(pair.question) + pair.program[len(PROGRAM_HEADER) :]
        )


def test_hf_folder_loads_with_load_from_disk(run_dir, tmp_path):
    import datasets

    out = tmp_path / "ds"
    r = _ekt("export", str(run_dir), "--format", "hf", "--out", str(out), "--method", "supervised")
    assert r.returncode == 0, r.stderr
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 1 and ds[0]["problem_id"] == "gsm8k/train/2"
    assert ds[0]["source"] == "supervised" and ds[0]["program"] == PAIRS[2].program
    # the reply the student learnt: the body after the prompt's `def solution():` line
    body = PAIRS[2].program[len(PROGRAM_HEADER) :]
    assert ds[0]["messages"][1] == {"role": "assistant", "content": body}
    assert ds[0]["messages"][0]["content"].endswith(PROGRAM_HEADER)
    assert (out / "README.md").is_file()  # its dataset card


def test_messages_file_trains_a_tiny_model_with_trl(run_dir, tmp_path, tiny_model_dir):
    trl = pytest.importorskip("trl")
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "messages.jsonl"
    r = _ekt("export", str(run_dir), "--format", "messages", "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [m["role"] for m in rows[0]["messages"]] == ["user", "assistant"]
    ds = datasets.load_dataset("json", data_files=str(out), split="train")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = CHAT_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = trl.SFTConfig(
        output_dir=str(tmp_path / "trl"),
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        assistant_only_loss=False,
        bf16=False,
    )
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    result = trainer.train()
    assert result.global_step == 3 and result.training_loss > 0
    changed = [k for k, v in model.state_dict().items() if not v.equal(before[k])]
    assert changed, "training changed no weight"


def test_bad_export_requests_are_clear_errors(run_dir, tmp_path):
    r = _ekt(
        "export", str(run_dir), "--format", "hf", "--out", str(tmp_path / "x"), "--method", "seq-kd"
    )
    assert r.returncode == 2 and "seq_kd/train_pairs.jsonl: not found" in r.stderr
    r = _ekt("export", str(tmp_path / "nope"), "--format", "messages", "--out", str(tmp_path / "y"))
    assert r.returncode == 2 and "run folder" in r.stderr
    r = _ekt(
        "export",
        str(run_dir),
        "--format",
        "messages",
        "--push-to-hub",
        "me/x",
        "--out",
        str(tmp_path / "z"),
    )
    assert r.returncode == 2 and "--push-to-hub uploads a dataset" in r.stderr


def test_push_to_hub_reaches_the_hub_call_and_fails_clearly_offline(run_dir, tmp_path):
    r = _ekt(
        "export",
        str(run_dir),
        "--format",
        "hf",
        "--out",
        str(tmp_path / "ds"),
        "--push-to-hub",
        "someone/ekt-pairs",
    )
    assert "export: 2 ekt pairs" in r.stdout  # the dataset was written before the push
    assert r.returncode == 2
    assert "could not push" in r.stderr and "someone/ekt-pairs" in r.stderr
