"""Help and discovery: the resolved config, "did you mean", `ekt tasks FILE`, a missing split
file, the presets' install state and the help texts that name what a flag takes."""

from __future__ import annotations

import yaml
from test_provenance import write_task
from test_startup import _python

from ekt.cli import command_parser, main
from ekt.models import PRESETS, _package_dir
from ekt.sandbox.config import LAYERS


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_run_show_prints_the_resolved_config(tmp_path, capsys):
    spec = write_task(tmp_path / "data")
    config = tmp_path / "c.yaml"
    config.write_text(f"task: {spec}\nteacher: smollm2-135m\neval: {{n: 4, k: [1, 4]}}\n")
    for flag in ("--show", "--print_config", "--print-config"):
        assert main(["run", str(config), "--eval.limit", "3", flag]) == 0
        shown = yaml.safe_load(capsys.readouterr().out)
        assert shown["eval"]["limit"] == 3 and shown["eval"]["n"] == 4  # override and file
        assert shown["train"]["learning_rate"] == 1e-4  # and the defaults
        assert shown["teacher"] == "smollm2-135m" and shown["task"] == str(spec)
    assert not (tmp_path / "runs").exists()  # nothing written


def test_mistyped_keys_get_did_you_mean(tmp_path, capsys):
    spec = write_task(tmp_path / "data")
    config = tmp_path / "c.yaml"
    config.write_text(f"task: {spec}\n")
    assert main(["run", str(config), "--eval.limt", "3", "--show"]) == 2
    assert "(did you mean --eval.limit" in _one_line_error(capsys)
    assert main(["verify", "--programs", "p", "--out", "o", "--sandbox.timout", "3"]) == 2
    assert "(did you mean --sandbox.timeout?)" in _one_line_error(capsys)
    assert main(["verify", "--programs", "p", "--out", "o", "--timout", "3"]) == 2
    assert "(did you mean --timeout?)" in _one_line_error(capsys)
    config.write_text(f"task: {spec}\nevl: {{n: 3}}\nsandbox: {{timout: 2}}\n")
    assert main(["run", str(config), "--show"]) == 2
    err = _one_line_error(capsys)
    assert "evl (did you mean eval?)" in err
    config.write_text(f"task: {spec}\nsandbox: {{timout: 2}}\n")
    assert main(["run", str(config), "--show"]) == 2
    assert "timout (did you mean timeout?)" in _one_line_error(capsys)


def test_tasks_file_checks_and_shows_prompts_without_a_model(tmp_path):
    spec = write_task(tmp_path / "data")
    got = _python("from ekt.__main__ import run\nout['rc'] = run()", tmp_path, "tasks", str(spec))
    assert got["rc"] == 0 and got["heavy"] == []  # no torch, no model
    text = got["stdout"]
    assert "train: 3 problems" in text and "test: 2 problems" in text
    assert "teacher prompt (function) for homework/train/0, gold answer 7" in text
    assert "student prompt (function)" in text
    assert text.count("# Question: Ann has 3 apples and buys 4. How many?") == 2  # both prompts
    chat = _python("from ekt.__main__ import run\nout['rc'] = run()", tmp_path, "tasks",
                   str(spec), "--prompt_format", "chat")  # fmt: skip
    assert "[system]" in chat["stdout"] and "[user]" in chat["stdout"]


def test_a_bad_task_file_is_one_line(tmp_path, capsys):
    spec = write_task(tmp_path / "data")
    (tmp_path / "data" / "train.jsonl").write_text('{"question": "q?", "answer": "seven"}\n')
    assert main(["tasks", str(spec)]) == 2
    assert "unparsable gold answer" in _one_line_error(capsys)


def test_a_missing_split_file_names_splits_and_the_files_there(tmp_path, capsys):
    spec = write_task(tmp_path / "data")
    spec.write_text(spec.read_text() + "splits: {train: train, test: validation}\n")
    assert main(["tasks", str(spec)]) == 2
    err = _one_line_error(capsys)
    assert "validation.jsonl: not found" in err and "`splits:`" in err
    assert "test.jsonl, train.jsonl" in err and "test: validation" in err


def test_help_texts_name_what_flags_take():
    text = command_parser("verify").format_help()
    assert all(layer in " ".join(text.split()) for layer in LAYERS)  # --sandbox.disable
    assert "splits:" in command_parser("generate").format_help()  # --task


def test_models_lists_installed_presets_as_installed(capsys):
    assert main(["models"]) == 0
    lines = dict(line.split("\t", 1) for line in capsys.readouterr().out.strip().splitlines())
    for name, preset in PRESETS.items():
        installed = _package_dir(preset.module) is not None
        assert ("needs `pip install" in lines[name]) != installed
        assert ("installed" in lines[name]) == installed
