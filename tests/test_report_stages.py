"""`ekt report` on a folder built stage by stage with the README's commands: generate into
DIR/teacher, verify into DIR/executions.jsonl, filter, train, evaluate into DIR/<any>. The
stages are the real ones (training trains the tiny model); the teacher's replies are fixed
per question, as in test_provenance."""

from __future__ import annotations

import html
import json

from test_provenance import PARAMS, TEST, TRAIN, FixedTeacher, answers_of, write_task
from tiny_models import make_tiny_model

from ekt.cli import main
from ekt.data.tasks import get_task
from ekt.evaluation.evaluate import EvalConfig, evaluate
from ekt.generation.generate import GenerateSettings, generate
from ekt.report.load import load_run, load_yields
from ekt.sandbox.pool import SandboxConfig
from ekt.training.config import TrainConfig
from ekt.training.train import train_student
from ekt.verification.filtering import filter_stage
from ekt.verification.verify import verify

SANDBOX = SandboxConfig(workers=1, timeout=5)


def test_report_of_a_stage_by_stage_folder(tmp_path, capsys):
    spec = write_task(tmp_path / "data")
    task = get_task(str(spec))
    d = tmp_path / "hw"
    answers = {**answers_of(TRAIN), **answers_of(TEST, "test")}
    answers["homework/train/1"] = -1  # one question the teacher gets wrong
    teacher = FixedTeacher(answers)
    generate(
        teacher,
        task.load("train"),
        d / "teacher",
        PARAMS,
        GenerateSettings(settings={"model": "my-teacher", "task": str(spec)}),
    )  # fmt: skip
    verify(d / "teacher", d / "executions.jsonl", task, sandbox=SANDBOX, progress=False)
    filter_stage(d / "executions.jsonl", d / "train_pairs.jsonl", task)
    base = make_tiny_model(tmp_path / "tiny")
    cfg = TrainConfig(learning_rate=1e-3, warmup_steps=0, batch_size=2,
                      per_device_train_batch_size=2, max_steps=1)  # fmt: skip
    train_student(str(base), d / "train_pairs.jsonl", d / "student", cfg, device="cpu")
    ev = EvalConfig(n=2, k=[1, 2], greedy=True)
    for label, model, prompt in (("eval-teacher", "my-teacher", "teacher"),
                                 ("eval-student", str(d / "student"), "student")):  # fmt: skip
        evaluate(teacher, task.load("test"), d / label, ev, task, prompt=prompt, sandbox=SANDBOX,
                 settings={"model": model}, progress=False)  # fmt: skip

    run = load_run(d)
    assert {e.label: e.method for e in run.evals} == {"eval-teacher": "few-shot",
                                                      "eval-student": "ekt"}  # fmt: skip
    assert all(len(e.problems) == len(TEST) for e in run.evals)
    (teacher_yield,) = load_yields(d)
    assert (teacher_yield.source, teacher_yield.samples, teacher_yield.correct) == ("teacher", 6, 4)
    assert teacher_yield.pairs == 2

    assert main(["report", str(d)]) == 0
    page = html.unescape((d / "report.html").read_text())
    assert "? -> ?" not in page and "? → ?" not in page
    assert f"my-teacher → {base}" in page
    assert "eval-student" in page and "eval-teacher" in page
    assert "report: " in capsys.readouterr().out
    assert json.loads((d / "eval-student" / "scores.json").read_text())["problems"] == 2

    # the drill-down shows the training questions too: the teacher's programs and verdicts
    train = page[page.index("Training questions") :]
    for pid in ("homework/train/0", "homework/train/1", "homework/train/2"):
        assert f"<code>{pid}</code>" in train
    wrong = train[train.index("<code>homework/train/1</code>") :].split("</details>")[0]
    assert "0/2 samples correct" in wrong and "✗ returned -1" in wrong and "def solution" in wrong
    right = train[train.index("<code>homework/train/0</code>") :].split("</details>")[0]
    assert "2/2 samples correct" in right and "✓ correct" in right
    assert TRAIN[0][0] in right  # its question, from the training pairs
