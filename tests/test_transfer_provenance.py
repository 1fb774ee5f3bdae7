"""`eval.tasks` transfer sets are inputs of a run like its own task's data: their content hash
is in the manifest, and a changed transfer-set file stops a resumed run with a one-line
message (``--force`` redoes only what it invalidates: the transfer evaluations and the
training data they decontaminate)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_provenance import SANDBOX, TEST, write_task

from ekt.errors import EktError
from ekt.evaluation.evaluate import EvalConfig
from ekt.pipeline.config import RunConfig, TeacherSampling
from ekt.pipeline.run import Runner, stale_outputs


def _transfer(root: Path, rows) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "test.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n"
                                             for q, a in rows))  # fmt: skip
    spec = root / "other.yaml"
    spec.write_text("name: other\ndata: '{split}.jsonl'\nquestion: question\nanswer: answer\n"
                    "splits: {test: test}\n")  # fmt: skip
    return spec


def _config(spec: Path, transfer: Path) -> RunConfig:
    return RunConfig(
        task=str(spec), name="hw", teacher="gemma3-270m", student="smollm2-135m",
        methods=["ekt"], teacher_sampling=TeacherSampling(n=2, max_new_tokens=16),
        eval=EvalConfig(n=2, k=[1, 2], greedy=False, tasks=[str(transfer)]), sandbox=SANDBOX,
    )  # fmt: skip


def _start(runner: Runner) -> None:
    """What `ekt run` does first: its folder check, then the manifest."""
    runner.dir.mkdir(parents=True, exist_ok=True)
    runner._check_config()
    runner._write_manifest()


ROWS = [("Fay has 4 boxes of 3 pens. Pens?", 12), ("Gus had 9 cards and gave 4. Left?", 5)]


def test_a_changed_transfer_set_is_detected(tmp_path):
    spec = write_task(tmp_path / "data")
    transfer = _transfer(tmp_path / "other", ROWS)
    out = tmp_path / "run"
    _start(Runner(_config(spec, transfer), out))
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["data"]["transfer_sha256"]) == ["other/test"]
    assert set(manifest["data"]["sha256"]) == {"homework/train", "homework/test"}
    _start(Runner(_config(spec, transfer), out))  # unchanged: resumes

    # the results a changed transfer set invalidates, and one it does not
    (out / "eval" / "teacher" / "tasks" / "other").mkdir(parents=True)
    (out / "teacher").mkdir()
    _transfer(tmp_path / "other", [ROWS[0], (ROWS[1][0], 6)])  # a corrected gold answer
    with pytest.raises(EktError) as e:
        _start(Runner(_config(spec, transfer), out))
    msg = str(e.value)
    assert "\n" not in msg and "transfer:other/test" in msg and "--force" in msg
    assert "eval/teacher/tasks" in msg and "teacher," not in msg.split("removes:")[1]

    _start(Runner(_config(spec, transfer), out, force=True))
    assert not (out / "eval" / "teacher" / "tasks").exists() and (out / "teacher").is_dir()
    after = json.loads((out / "manifest.json").read_text())["data"]["transfer_sha256"]
    assert after["other/test"] != manifest["data"]["transfer_sha256"]["other/test"]
    _start(Runner(_config(spec, transfer), out))  # the new hash is the folder's now


def test_a_transfer_key_invalidates_only_what_depends_on_it(tmp_path):
    for p in ("teacher", "eval/student-ekt/tasks", "students/ekt", "train_pairs.jsonl"):
        (tmp_path / p).mkdir(parents=True)
    stale = {str(p.relative_to(tmp_path)) for p in stale_outputs(["transfer:x/test"], tmp_path)}
    # (the ekt student is trained on the pairs the transfer set decontaminates: its eval too)
    assert stale == {"eval/student-ekt", "students/ekt", "train_pairs.jsonl"}
    everything = stale_outputs(["data:homework/train"], tmp_path)  # the run's own data: all
    assert (tmp_path / "teacher") in everything
    assert TEST  # (the run's own test split, written by write_task)
