"""verify's input: ekt's own samples follow the torn-record rule, a file someone wrote does not."""

from __future__ import annotations

import json

import pytest

from ekt.errors import EktError
from ekt.verification.verify import iter_inputs

ROWS = [
    {"problem_id": f"t/train/{i}", "sample_idx": 0, "program": f"def solution():\n    return {i}\n"}
    for i in range(3)
]
TEXT = "\n".join(json.dumps(r) for r in ROWS)  # as "\n".join writes it: no final newline


def _ids(path) -> list[str]:
    return [obj["problem_id"] for _, _, obj in iter_inputs(path)]


def test_a_hand_written_file_is_read_to_its_last_line(tmp_path, capsys):
    (tmp_path / "progs.jsonl").write_text(TEXT)
    assert _ids(tmp_path / "progs.jsonl") == ["t/train/0", "t/train/1", "t/train/2"]
    assert "incomplete" not in capsys.readouterr().err


def test_a_hand_written_file_cut_mid_record_is_an_error_naming_the_line(tmp_path):
    (tmp_path / "progs.jsonl").write_text(TEXT[:-5])
    with pytest.raises(EktError, match=r"progs\.jsonl:3: malformed JSON"):
        _ids(tmp_path / "progs.jsonl")


def test_a_generate_shard_without_its_last_newline_is_incomplete(tmp_path, capsys):
    """generate redoes an unterminated last record when it resumes, so verify must not grade
    it now (whether it parses or not)."""
    samples = tmp_path / "gen" / "samples"
    samples.mkdir(parents=True)
    (tmp_path / "gen" / "generate.json").write_text("{}")
    (samples / "shard-00000.jsonl").write_text(TEXT)
    assert _ids(tmp_path / "gen") == ["t/train/0", "t/train/1"]
    assert _ids(samples / "shard-00000.jsonl") == ["t/train/0", "t/train/1"]
    assert "shard-00000.jsonl:3: the last line has no newline" in capsys.readouterr().err


def test_train_reads_a_pairs_file_without_its_final_newline(tmp_path, tiny_model_dir, capsys):
    """``ekt train --pairs`` takes a whole file someone wrote: all of its pairs count."""
    from ekt.training.train import TrainConfig, train_student

    rows = [
        {"problem_id": f"t/train/{i}", "question": f"What is {i} + 1?",
         "program": f"def solution():\n    return {i} + 1\n", "source": "hand"}
        for i in range(3)
    ]  # fmt: skip
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = TrainConfig(max_steps=1, batch_size=3, per_device_train_batch_size=3, warmup_steps=0)
    result = train_student(str(tiny_model_dir), pairs, tmp_path / "s", cfg, device="cpu")
    assert result is not None and result.pairs == 3
