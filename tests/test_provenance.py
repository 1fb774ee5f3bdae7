"""Provenance: a verdict is tied to the gold answer it was graded with, a sample to the question
it was drawn for, and a changed data file is graded again or refused at every stage.

The data is a custom task file with local JSONL splits (what a new user makes first). The
teacher is a sampler whose replies are fixed per question (the sandbox, the grader, the
stages and the CLI are the real ones): question ``i`` is answered ``ANSWERS[i]``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ekt.cli import main
from ekt.data.provenance import changed_problems, data_sha, gold_sha, question_sha, stale_line
from ekt.data.tasks import get_task
from ekt.errors import EktError
from ekt.evaluation.evaluate import EvalConfig, evaluate
from ekt.generation.config import SamplingParams
from ekt.generation.generate import GenerateSettings, generate
from ekt.pipeline.config import RunConfig, TeacherSampling
from ekt.pipeline.run import Runner
from ekt.records import Completion, Problem, read_jsonl
from ekt.sandbox.pool import SandboxConfig
from ekt.verification.filtering import filter_stage
from ekt.verification.verify import verify

SANDBOX = SandboxConfig(workers=1, timeout=5)
PARAMS = SamplingParams(n=2, temperature=0.8, max_new_tokens=16, seed=1)
TRAIN = [("Ann has 3 apples and buys 4. How many?", 7), ("Bo has 10 pens, loses 2. Left?", 8),
         ("Cy reads 5 pages a day for 3 days. Pages?", 15)]  # fmt: skip
TEST = [("Dee has 6 cups and breaks 1. How many left?", 5), ("Eve buys 2 packs of 6. Eggs?", 12)]


class FixedTeacher:
    """Every sample of question ``pid`` returns ``answers[pid]`` (a real ``Sampler``: the same
    requests give the same records)."""

    def __init__(self, answers: dict[str, int]):
        self.answers = answers

    def sample(self, requests, params, start=None):
        for pid, _ in requests:
            for i in range(start or 0, (start or 0) + params.n):
                yield Completion(pid, i, f"    x = {self.answers[pid]}\n    return x\n", 8)


def write_task(root: Path, train=TRAIN, test=TEST) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("test", test)):
        with open(root / f"{split}.jsonl", "w") as fh:
            for q, a in rows:
                fh.write(json.dumps({"question": q, "answer": a}) + "\n")
    spec = root / "homework.yaml"
    spec.write_text("name: homework\ndata: '{split}.jsonl'\nquestion: question\nanswer: answer\n")
    return spec


def answers_of(rows, split="train") -> dict[str, int]:
    return {f"homework/{split}/{i}": a for i, (_, a) in enumerate(rows)}


def _records(path: Path) -> list[dict]:
    return [o for _, o in read_jsonl(path)]


@pytest.fixture()
def stage_folder(tmp_path):
    """generate + `ekt verify` on the original data; returns (task file, samples, executions)."""
    spec = write_task(tmp_path / "data")
    task = get_task(str(spec))
    gen, ex = tmp_path / "gen", tmp_path / "executions.jsonl"
    generate(FixedTeacher(answers_of(TRAIN)), task.load("train"), gen, PARAMS)
    args = ["verify", "--task", str(spec), "--programs", str(gen), "--out", str(ex),
            "--workers", "1", "--timeout", "5"]  # fmt: skip
    assert main(args) == 0
    assert [r["correct"] for r in _records(ex)] == [True] * 6
    return spec, gen, ex


def _change_gold(spec: Path, index: int, gold: int) -> None:
    rows = list(TRAIN)
    rows[index] = (rows[index][0], gold)
    write_task(spec.parent, train=rows)


def _change_question(spec: Path, index: int) -> None:
    rows = list(TRAIN)
    rows[index] = (rows[index][0] + " Think.", rows[index][1])
    write_task(spec.parent, train=rows)


# -- pure parts -----------------------------------------------------------------------------


def test_hashes_follow_content_not_identity():
    p = Problem("t/train/0", "q?", 7, "train")
    assert question_sha("q?") == question_sha("q?") != question_sha("q? ")
    assert gold_sha(7, "number") != gold_sha(8, "number")
    assert gold_sha(7, "number") != gold_sha(7, "math")  # another grader, another verdict
    assert data_sha([p]) != data_sha([Problem("t/train/0", "q?", 8, "train")])
    assert data_sha([p], gold=False) == data_sha([Problem("t/train/0", "q?", 8, "train")], False)
    recs = [{"problem_id": p.id, "question_sha": question_sha("q?"), "gold_sha": gold_sha(8, "n")},
            {"problem_id": "t/train/9", "gold_sha": "x"}, {"problem_id": p.id}]  # fmt: skip
    assert changed_problems(recs, {p.id: p}, "n") == {p.id: "gold answer", "t/train/9": "removed"}
    line = stale_line({f"t/train/{i}": "question" for i in range(12)}, "X", "do Y")
    assert "12 problems" in line and "t/train/0 (question)" in line and "and 7 more" in line
    assert line.endswith("do Y") and "\n" not in line


# -- verify -------------------------------------------------------------------------------


def test_verify_regrades_a_changed_gold_answer(stage_folder, capsys):
    spec, gen, ex = stage_folder
    _change_gold(spec, 0, 8)  # the programs of homework/train/0 return 7
    capsys.readouterr()
    args = ["verify", "--task", str(spec), "--programs", str(gen), "--out", str(ex)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "(0 run" in out  # graded again from the stored values, not run again
    assert "re-graded" in out and "homework/train/0" in out and "homework/train/1" not in out
    recs = _records(ex)
    assert len(recs) == 6
    assert {r["problem_id"]: r["correct"] for r in recs} == {
        "homework/train/0": False, "homework/train/1": True, "homework/train/2": True}
    task = get_task(str(spec))
    golds = {p.id: task.gold_sha(p) for p in task.load("train")}
    assert all(r["gold_sha"] == golds[r["problem_id"]] for r in recs)
    # and back: the verdict follows the gold answer, whichever way it changes
    write_task(spec.parent)
    assert main(args) == 0
    assert all(r["correct"] for r in _records(ex))


def test_filter_refuses_verdicts_graded_with_another_gold(stage_folder, tmp_path, capsys):
    spec, gen, ex = stage_folder
    _change_gold(spec, 1, 9)
    pairs = tmp_path / "pairs.jsonl"
    capsys.readouterr()
    assert main(["filter", "--task", str(spec), "--executions", str(ex), "--out", str(pairs)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "homework/train/1 (gold answer)" in err and "ekt verify" in err
    assert not pairs.exists()
    # the way out it names: verify grades again, then filter keeps only what is right now
    assert main(["verify", "--task", str(spec), "--programs", str(gen), "--out", str(ex)]) == 0
    assert main(["filter", "--task", str(spec), "--executions", str(ex), "--out", str(pairs)]) == 0
    kept = {r["problem_id"] for r in _records(pairs)}
    assert kept == {"homework/train/0", "homework/train/2"}


def test_a_changed_question_is_refused_by_generate_verify_and_filter(stage_folder, capsys):
    spec, gen, ex = stage_folder
    _change_question(spec, 2)
    task = get_task(str(spec))
    with pytest.raises(EktError, match=r"homework/train/2 \(question\).*--force"):
        generate(FixedTeacher(answers_of(TRAIN)), task.load("train"), gen, PARAMS)
    capsys.readouterr()
    assert main(["verify", "--task", str(spec), "--programs", str(gen), "--out", str(ex)]) == 2
    err = capsys.readouterr().err
    assert "homework/train/2 (question)" in err and "sample them again" in err
    with pytest.raises(EktError, match=r"homework/train/2 \(question\)"):
        filter_stage(ex, ex.parent / "pairs.jsonl", task)
    # --force samples them again; the new samples carry the new question's hash
    generate(
        FixedTeacher(answers_of(TRAIN)),
        task.load("train"),
        gen,
        PARAMS,
        GenerateSettings(force=True),
    )
    new_ex = ex.parent / "new.jsonl"
    verify(gen, new_ex, task, sandbox=SANDBOX, progress=False)
    assert len(filter_stage(new_ex, ex.parent / "pairs.jsonl", task).__dict__) and all(
        r["question_sha"] == question_sha(task.by_id()[r["problem_id"]].question)
        for r in _records(new_ex)
    )


def test_a_removed_problem_is_refused(stage_folder, capsys):
    spec, gen, ex = stage_folder
    write_task(spec.parent, train=TRAIN[:2])  # homework/train/2 is gone
    task = get_task(str(spec))
    with pytest.raises(EktError, match=r"homework/train/2 \(removed\)"):
        verify(ex.parent / "gen", ex, task, sandbox=SANDBOX, progress=False)


def test_older_records_without_hashes_are_graded_again(stage_folder):
    spec, gen, ex = stage_folder
    legacy = []
    for r in _records(ex):  # an older ekt's output: no hashes, a verdict it can no longer prove
        r.pop("gold_sha")
        legacy.append(r)
    ex.write_text("".join(json.dumps(r) + "\n" for r in legacy))
    _change_gold(spec, 2, 16)
    summary = verify(gen, ex, get_task(str(spec)), sandbox=SANDBOX, progress=False)
    assert summary.new == 0 and summary.correct == 4
    assert {r["problem_id"] for r in _records(ex) if not r["correct"]} == {"homework/train/2"}


# -- evaluate -----------------------------------------------------------------------------


def test_evaluate_scores_the_current_gold_answers(tmp_path):
    spec = write_task(tmp_path / "data")
    task = get_task(str(spec))
    cfg = EvalConfig(n=2, k=[1, 2], greedy=True, limit=None)
    teacher = FixedTeacher(answers_of(TEST, "test"))
    out = tmp_path / "eval"
    first = evaluate(teacher, task.load("test"), out, cfg, task, sandbox=SANDBOX, progress=False)
    assert first["pass@1"] == 1.0
    assert first["settings"]["data_sha256"] == data_sha(task.load("test"))
    write_task(spec.parent, test=[TEST[0], (TEST[1][0], 13)])  # a gold answer corrected
    task = get_task(str(spec))
    again = evaluate(teacher, task.load("test"), out, cfg, task, sandbox=SANDBOX, progress=False)
    assert again["pass@1"] == 0.5 and again["greedy_pass@1"] == 0.5
    assert again["settings"]["data_sha256"] != first["settings"]["data_sha256"]
    rows = {r["problem_id"]: r for r in _records(out / "problems.jsonl")}
    assert rows["homework/test/1"]["gold"] == 13 and rows["homework/test/1"]["c"] == 0
    write_task(spec.parent, test=[(TEST[0][0] + "?", TEST[0][1]), TEST[1]])  # a question edited
    task = get_task(str(spec))
    with pytest.raises(EktError, match=r"homework/test/0 \(question\)"):
        evaluate(teacher, task.load("test"), out, cfg, task, sandbox=SANDBOX, progress=False)


# -- ekt run --------------------------------------------------------------------------------


def _run_config(spec: Path) -> RunConfig:
    return RunConfig(
        task=str(spec), name="hw", teacher="gemma3-270m", student="smollm2-135m",
        methods=["ekt"], evaluate_teacher=True, evaluate_base_student=False,
        teacher_sampling=TeacherSampling(n=2, max_new_tokens=16),
        eval=EvalConfig(n=2, k=[1, 2], greedy=False), sandbox=SANDBOX,
    )  # fmt: skip


def _factory(answers):
    return lambda spec, device, batch, backend: (lambda: FixedTeacher(answers))


def _teacher_stages(runner: Runner) -> Path:
    """What `ekt run` does before training: its folder check, then samples, verify, filter."""
    runner.dir.mkdir(parents=True, exist_ok=True)
    runner._check_config()
    runner._write_manifest()
    return runner.teacher_pairs(runner.task.load("train"))[0]


def test_run_refuses_a_folder_made_with_other_data(tmp_path):
    spec = write_task(tmp_path / "data")
    out = tmp_path / "run"
    answers = {**answers_of(TRAIN), **answers_of(TEST, "test")}
    pairs = _teacher_stages(Runner(_run_config(spec), out, sampler_factory=_factory(answers)))
    assert len(_records(pairs)) == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["source"].endswith("{split}.jsonl")  # the task file's data
    assert set(manifest["data"]["sha256"]) == {"homework/train", "homework/test"}

    _change_gold(spec, 0, 70)  # a corrected training answer
    runner = Runner(_run_config(spec), out, sampler_factory=_factory(answers))
    with pytest.raises(EktError) as e:
        _teacher_stages(runner)
    msg = str(e.value)
    assert "\n" not in msg and "homework/train/0 (gold answer)" in msg and "--force" in msg
    assert "homework/train/1" not in msg
    assert len(_records(pairs)) == 3  # nothing removed without --force

    forced = Runner(_run_config(spec), out, force=True, sampler_factory=_factory(answers))
    pairs = _teacher_stages(forced)  # redone: the program returning 7 is no longer a pair
    assert {r["problem_id"] for r in _records(pairs)} == {"homework/train/1", "homework/train/2"}
    assert all(r["correct"] == (r["problem_id"] != "homework/train/0")
               for r in _records(out / "teacher" / "executions.jsonl"))  # fmt: skip


def test_run_names_an_edited_question(tmp_path):
    spec = write_task(tmp_path / "data")
    out = tmp_path / "run"
    answers = answers_of(TRAIN)
    _teacher_stages(Runner(_run_config(spec), out, sampler_factory=_factory(answers)))
    _change_question(spec, 1)
    with pytest.raises(EktError, match=r"homework/train/1 \(question\).*--force"):
        _teacher_stages(Runner(_run_config(spec), out, sampler_factory=_factory(answers)))
