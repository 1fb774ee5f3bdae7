"""verify, filter and evaluate take the task from the records' problem ids when --task is left
out (the README's stage-by-stage commands leave it out); a task they cannot find is one line
naming the --task to pass. Stages and the CLI are the real ones; generation uses the tiny model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_provenance import TEST, write_task

from ekt.cli import main
from ekt.data.discover import find_task, task_name
from ekt.errors import EktError
from ekt.records import read_jsonl


def _records(path: Path) -> list[dict]:
    return [o for _, o in read_jsonl(path)]


def _generate(spec: Path, out: Path, split: str = "train") -> None:
    from tiny_models import make_tiny_model

    model = out.parent / "tiny"
    if not model.exists():
        make_tiny_model(model)
    args = ["generate", "--model", str(model), "--task", str(spec), "--split", split,
            "--n", "1", "--max-new-tokens", "8", "--seed", "1", "--out", str(out),
            "--device", "cpu"]  # fmt: skip
    assert main(args) == 0


def test_task_name_and_unknown_task(tmp_path):
    assert task_name(["hw/train/0", "hw/test/3"], "x") == "hw"
    with pytest.raises(EktError, match="several tasks"):
        task_name(["a/train/0", "b/train/0"], "x")
    with pytest.raises(EktError, match="no problem ids"):
        task_name(["17"], "x")
    assert find_task(["gsm8k/train/4"], [tmp_path], "x").task == "gsm8k"
    with pytest.raises(EktError) as e:
        find_task(["homework/train/0"], [tmp_path / "p.jsonl"], "--programs p.jsonl")
    msg = str(e.value)
    assert "\n" not in msg and "'homework'" in msg and "--task FILE" in msg


def test_stage_by_stage_without_task(tmp_path, capsys):
    """The README's layout: samples in DIR/teacher, verdicts in DIR/executions.jsonl."""
    spec = write_task(tmp_path / "data")
    run = tmp_path / "work" / "run"
    _generate(spec, run / "teacher")
    # the task file is moved out of the way of a cwd-relative lookup: found by generate.json
    ex, pairs = run / "executions.jsonl", run / "train_pairs.jsonl"
    assert main(["verify", "--programs", str(run / "teacher"), "--out", str(ex)]) == 0
    assert {r["problem_id"] for r in _records(ex)} == {f"homework/train/{i}" for i in range(3)}
    assert main(["filter", "--executions", str(ex), "--out", str(pairs)]) == 0
    assert "filter: 3 verified samples" in capsys.readouterr().out


def test_hand_written_programs_of_a_task_file_need_task(tmp_path, capsys):
    spec = write_task(tmp_path / "data")
    programs = tmp_path / "mine" / "programs.jsonl"
    programs.parent.mkdir()
    program = {"problem_id": "homework/train/0", "sample_idx": 0,
               "program": "def solution():\n    return 7\n"}  # fmt: skip
    programs.write_text(json.dumps(program) + "\n")
    out = tmp_path / "mine" / "ex.jsonl"
    assert main(["verify", "--programs", str(programs), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--task FILE" in err and "homework" in err
    assert not out.exists()
    args = ["verify", "--task", str(spec), "--programs", str(programs), "--out", str(out)]
    assert main(args) == 0
    assert _records(out)[0]["correct"] is True
    # filter finds no side file either: the same one line
    assert main(["filter", "--executions", str(out), "--out", str(tmp_path / "p.jsonl")]) == 2
    assert "--task FILE" in capsys.readouterr().err


def test_builtin_task_and_data_dir_from_the_run_config(tmp_path, data_dir, monkeypatch):
    """gsm8k ids with a data folder named in a run folder's config.yaml: no hub, no --task."""
    monkeypatch.delenv("EKT_DATA_DIR", raising=False)
    run = tmp_path / "run"
    (run / "teacher").mkdir(parents=True)
    local = tmp_path / "gsm"
    shutil.copytree(data_dir, local)
    (run / "config.yaml").write_text(f"task: gsm8k\ndata_dir: {local}\n")
    programs = run / "teacher" / "programs.jsonl"
    first = json.loads((local / "train.jsonl").read_text().splitlines()[0])
    gold = first["answer"].rsplit("####", 1)[1].strip().replace(",", "")
    program = {"problem_id": "gsm8k/train/0", "sample_idx": 0,
               "program": f"def solution():\n    return {gold}\n"}  # fmt: skip
    programs.write_text(json.dumps(program) + "\n")
    ex = run / "teacher" / "executions.jsonl"
    assert main(["verify", "--programs", str(programs), "--out", str(ex), "--timeout", "5"]) == 0
    assert _records(ex)[0]["correct"] is True


def test_evaluate_takes_the_task_of_its_earlier_records(tmp_path, capsys):
    from tiny_models import make_tiny_model

    spec = write_task(tmp_path / "data")
    out, model = tmp_path / "eval", make_tiny_model(tmp_path / "tiny")
    args = ["evaluate", "--model", str(model), "--out", str(out), "--n", "1", "--k", "1",
            "--no-greedy", "--max-new-tokens", "8", "--device", "cpu"]  # fmt: skip
    assert main([*args, "--task", str(spec)]) == 0
    first = json.loads((out / "scores.json").read_text())
    (out / "scores.json").unlink()
    assert main(args) == 0, capsys.readouterr().err  # resumed: the task of its records
    again = json.loads((out / "scores.json").read_text())
    assert again["settings"]["task"] == "homework" and again["problems"] == len(TEST)
    assert again["pass@1"] == first["pass@1"]
    assert again["settings"]["data_sha256"] == first["settings"]["data_sha256"]
