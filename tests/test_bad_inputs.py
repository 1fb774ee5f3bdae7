"""Bad input of every kind, through the ``ekt`` command line: one clear line, exit 2, work intact.

Each row of ``CASES`` builds its inputs in a fresh folder, runs ``ekt.cli.main``
(what ``python -m ekt`` runs; argparse's own errors arrive as ``SystemExit``) and
checks: the exit code is 2, stderr is exactly one line ``ekt <command>: error:
...`` without a traceback, the line names the problem and the file:line or the
option, and every file that existed before the command is unchanged after it.
Cases that need a real process (a read-only or full file system, and ``python -m
ekt`` itself) run in a subprocess below the table.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ekt.cli import main

GOOD_TRAIN = [
    {"question": "Weng earns $12 an hour. She worked 50 minutes. How much?", "answer": "#### 10"},
    {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3+4=7\n#### 7"},
]
GOOD_TEST = [{"question": "What is 2 plus 2?", "answer": "#### 4"}]


@dataclass
class Case:
    id: str
    argv: list[str]  # {tmp} {data} {model} are filled in
    message: str  # a regular expression the error line must match
    files: dict[str, str | bytes | list] = field(default_factory=dict)  # path -> content
    setup: Callable[[Path], None] | None = None


def _jsonl(rows: list) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def data(train: list | str | bytes | None = None, test: list | None = None) -> dict:
    """A GSM8K folder ``data/``; a list is written as JSON lines, str/bytes as they are."""
    return {
        "data/train.jsonl": GOOD_TRAIN if train is None else train,
        "data/test.jsonl": test or GOOD_TEST,
    }


def _gen(*extra: str) -> list[str]:
    """``ekt generate`` on the case's data: the data is read before any model is loaded."""
    return ["generate", "--model", "{model}", "--data-dir", "{data}", "--limit", "1"] + [
        *extra,
        "--out",
        "{tmp}/gen",
    ]


def _verify(programs: str = "{tmp}/progs.jsonl") -> list[str]:
    return ["verify", "--data-dir", "{data}", "--programs", programs, "--out", "{tmp}/ver.jsonl"]


def _filter(*paths: str) -> list[str]:
    return ["filter", "--data-dir", "{data}", "--executions", *paths, "--out", "{tmp}/pairs.jsonl"]


def _train(*extra: str) -> list[str]:
    return [
        "train",
        "--student",
        "{model}",
        "--pairs",
        "{tmp}/pairs.jsonl",
        *extra,
        "--out",
        "{tmp}/st",
    ]


def _eval(*extra: str) -> list[str]:
    return ["evaluate", "--model", "{model}", "--data-dir", "{data}", *extra, "--out", "{tmp}/ev"]


def _run(config: str, out: str = "{tmp}/run") -> tuple[list[str], dict]:
    return ["run", "{tmp}/c.yaml", "--out", out], {"c.yaml": config}


PROG = {
    "problem_id": "gsm8k/train/0",
    "sample_idx": 0,
    "program": "def solution():\n    return 10\n",
}
EXEC = {**PROG, "status": "ok", "value": 10, "type": "int", "correct": True}
PAIR = {
    "problem_id": "gsm8k/train/0",
    "question": "q?",
    "program": "def solution():\n    return 1\n",
}
RUN_OK = "data_dir: {data}\nteacher: {model}\nstudent: {model}\n"
BIG = "x" * (9 << 20)  # a 9 MB question: over the 8 MiB a record line may hold


def _prior_run(tmp: Path) -> None:
    """A run folder made with eval.n 2: resuming it with eval.n 4 must be refused."""
    from ekt.pipeline.config import dump_config, load_config

    old = tmp / "old.yaml"
    old.write_text((tmp / "c.yaml").read_text().replace("n: 4", "n: 2"))
    (tmp / "run" / "teacher").mkdir(parents=True)
    (tmp / "run" / "config.yaml").write_text(dump_config(load_config(old)))
    (tmp / "run" / "teacher" / "executions.jsonl").write_text(_jsonl([EXEC]))


def _cases() -> list[Case]:
    c: list[Case] = []

    def add(id: str, argv: list[str], message: str, files: dict | None = None, setup=None) -> None:
        c.append(Case(id, argv, message, {**data(), **(files or {})}, setup))

    # -- the dataset ------------------------------------------------------------------
    ok = GOOD_TRAIN[0]
    add(
        "data-malformed-json",
        _gen(),
        r"data/train\.jsonl:2: malformed JSON",
        data(_jsonl([ok]) + '{"question": "q", "answer": "#### 1"\n'),
    )
    add(
        "data-latin1",
        _gen(),
        r"data/train\.jsonl:2: not valid UTF-8",
        data(
            _jsonl([ok]).encode()
            + '{"question": "caf\xe9?", "answer": "#### 1"}\n'.encode("latin-1")
        ),
    )
    add(
        "data-missing-field",
        _gen(),
        r"data/train\.jsonl:2: missing field 'answer'",
        data([ok, {"question": "q"}]),
    )
    add(
        "data-gold-no-marker",
        _gen(),
        r"data/train\.jsonl:2: unparsable gold answer: no '####'",
        data([ok, {"question": "q", "answer": "it is 12"}]),
    )
    add(
        "data-gold-not-numeric",
        _gen(),
        r"train\.jsonl:2: unparsable gold answer: gold answer 'twelve'",
        data([ok, {"question": "q", "answer": "#### twelve"}]),
    )
    add(
        "data-gold-bad-commas",
        _gen(),
        r"train\.jsonl:2: .*'1,2,3' is not a number \(misplaced ','\)",
        data([ok, {"question": "q", "answer": "#### 1,2,3"}]),
    )
    add(
        "data-answer-not-string",
        _gen(),
        r"train\.jsonl:2: field 'answer' must be a string",
        data([ok, {"question": "q", "answer": 12}]),
    )
    add(
        "data-empty-question",
        _gen(),
        r"train\.jsonl:2: field 'question' is empty",
        data([ok, {"question": " ", "answer": "#### 1"}]),
    )
    add(
        "data-not-an-object",
        _gen(),
        r"train\.jsonl:2: expected a JSON object, got list",
        data(_jsonl([ok]) + '["q", "#### 1"]\n'),
    )
    add("data-empty-file", _gen(), r"data/train\.jsonl: file is empty", data(""))
    add(
        "data-line-of-9mb",
        _gen(),
        r"data/train\.jsonl:2: line longer than 8 MiB",
        data(_jsonl([ok, {"question": BIG, "answer": "#### 1"}])),
    )
    c.append(
        Case(
            "data-folder-missing",
            _gen()[:4] + ["{tmp}/nowhere"] + _gen()[5:],
            r"data directory .*/nowhere does not exist",
        )
    )
    add(
        "data-folder-is-a-file",
        _gen()[:4] + ["{tmp}/data/train.jsonl"] + _gen()[5:],
        r"data directory .*train\.jsonl is not a folder",
    )
    add(
        "data-split-file-missing",
        _gen("--split", "test"),
        r"data/test\.jsonl: not found",
        {"data/test.jsonl": None},
    )

    # -- programs to verify -----------------------------------------------------------
    add(
        "programs-malformed-json",
        _verify(),
        r"progs\.jsonl:2: malformed JSON",
        {"progs.jsonl": _jsonl([PROG]) + "{oops\n" + _jsonl([PROG])},
    )
    add(
        "programs-latin1",
        _verify(),
        r"progs\.jsonl:1: not valid UTF-8",
        {"progs.jsonl": b'{"problem_id": "gsm8k/train/0", "program": "# \xe9"}\n'},
    )
    add(
        "programs-missing-field",
        _verify(),
        r"progs\.jsonl:1: missing field 'program'",
        {"progs.jsonl": [{"problem_id": "gsm8k/train/0", "sample_idx": 0}]},
    )
    add(
        "programs-unknown-problem",
        _verify(),
        r"progs\.jsonl:1: unknown problem id 'gsm8k/train/99'",
        {"progs.jsonl": [{**PROG, "problem_id": "gsm8k/train/99"}]},
    )
    add(
        "programs-duplicate-id",
        _verify(),
        r"progs\.jsonl:2: duplicate of .*progs\.jsonl:1",
        {"progs.jsonl": [PROG, PROG]},
    )
    add(
        "programs-empty-file",
        _verify(),
        r"progs\.jsonl: no programs to verify",
        {"progs.jsonl": ""},
    )
    add(
        "programs-missing-file", _verify("{tmp}/none.jsonl"), r"none\.jsonl: no such file or folder"
    )

    # -- verified samples to filter ---------------------------------------------------
    ex = "{tmp}/ex.jsonl"
    add(
        "executions-missing-field",
        _filter(ex),
        r"ex\.jsonl:1: missing field 'correct'",
        {"ex.jsonl": [PROG]},
    )
    add(
        "executions-wrong-type",
        _filter(ex),
        r"ex\.jsonl:1: field 'correct' must be true or false",
        {"ex.jsonl": [{**EXEC, "correct": "yes"}]},
    )
    add(
        "executions-duplicate-id",
        _filter(ex),
        r"ex\.jsonl:2: duplicate record for gsm8k/train/0 sample 0",
        {"ex.jsonl": [EXEC, EXEC]},
    )
    add("executions-empty-file", _filter(ex), r"ex\.jsonl: no verified samples", {"ex.jsonl": "\n"})

    # -- training pairs ---------------------------------------------------------------
    add(
        "pairs-missing-field",
        _train(),
        r"pairs\.jsonl:1: missing field\(s\) program",
        {"pairs.jsonl": [{"problem_id": "p", "question": "q"}]},
    )
    add(
        "pairs-extra-field",
        _train(),
        r"pairs\.jsonl:2: unknown field\(s\) progam",
        {"pairs.jsonl": [PAIR, {**PAIR, "progam": "x"}]},
    )
    add(
        "pairs-wrong-type",
        _train(),
        r"pairs\.jsonl:1: field 'question' must be a string, got a number",
        {"pairs.jsonl": [{**PAIR, "question": 5}]},
    )
    add("pairs-missing-file", _train(), r"pairs\.jsonl: no such file")

    # -- models -----------------------------------------------------------------------
    add(
        "model-unknown-spec",
        _gen()[:2] + ["no-such-preset"] + _gen()[3:],
        r"unknown model 'no-such-preset'",
    )
    add(
        "model-folder-not-a-model",
        _gen()[:2] + ["{tmp}/data"] + _gen()[3:],
        r"--model .*/data: folder has no config\.json",
    )
    add(
        "model-missing-gguf",
        _gen()[:2] + ["{tmp}/m.gguf"] + _gen()[3:],
        r"--model .*m\.gguf: no such \.gguf file",
    )

    # -- option values ----------------------------------------------------------------
    add("option-n-below-1", _eval("--n", "0"), r"--n must be >= 1 \(an integer\), got 0")
    add("option-k-above-n", _eval("--n", "2", "--k", "1,5"), r"--k 5 exceeds --n 2")
    add("option-k-not-integers", _eval("--k", "1,ten"), r"--k: expected int, got ten")
    add(
        "option-negative-temperature", _eval("--temperature", "-0.5"), r"--temperature must be >= 0"
    )
    add("option-nan-temperature", _gen("--temperature", "nan"), r"--temperature: expected float")
    add("option-top-p-zero", _gen("--top-p", "0"), r"--top-p must be in \(0, 1\]")
    add(
        "option-n-not-integer",
        _gen("--n", "abc"),
        r"--n: expected int, got abc",
    )
    add(
        "option-timeout-zero",
        _verify()[:-2] + ["--timeout", "0", "--out", "{tmp}/v.jsonl"],
        r"--timeout must be > 0",
        {"progs.jsonl": [PROG]},
    )
    add(
        "option-learning-rate",
        _train("--learning-rate", "-1"),
        r"--learning-rate must be > 0",
        {"pairs.jsonl": [PAIR]},
    )
    add(
        "option-batch-multiple",
        _train("--batch-size", "3", "--per-device-train-batch-size", "2"),
        r"--batch-size 3 is not a multiple of --per-device-train-batch-size 2",
        {"pairs.jsonl": [PAIR]},
    )
    add("option-unknown", _eval("--nn", "3"), r"unrecognized arguments: --nn 3")

    # -- run configs ------------------------------------------------------------------
    for id, text, message in [
        ("config-invalid-yaml", "name: [unclosed\n", r"c\.yaml:\d+: invalid YAML"),
        ("config-unknown-key", RUN_OK + "teachr: x\n", r"c\.yaml: unknown key\(s\) teachr"),
        (
            "config-unknown-nested-key",
            RUN_OK + "eval: {nn: 3}\n",
            r"c\.yaml: eval: unknown key\(s\) nn",
        ),
        (
            "config-wrong-type",
            RUN_OK + "eval: {n: ten}\n",
            r"c\.yaml: eval\.n: expected int, got ten",
        ),
        (
            "config-n-below-1",
            RUN_OK + "teacher_sampling: {n: 0}\n",
            r"teacher_sampling\.n must be >= 1",
        ),
        (
            "config-k-above-n",
            RUN_OK + "eval: {n: 2, k: [1, 5]}\n",
            r"c\.yaml: eval\.k 5 exceeds --n 2",
        ),
        (
            "config-negative-temperature",
            RUN_OK + "teacher_sampling: {temperature: -1}\n",
            r"teacher_sampling\.temperature must be >= 0",
        ),
        (
            "config-duplicate-key",
            RUN_OK + "eval:\n  n: 2\n  n: 4\n",
            r"c\.yaml:6: invalid YAML \(key 'n' given twice\)",
        ),
        (
            "config-unknown-method",
            RUN_OK + "methods: [ekt, magic]\n",
            r"methods: expected one of ekt, supervised, kd, seq-kd, expert-iteration, grpo, "
            r"on-policy, got magic",
        ),
        (
            "config-unknown-model",
            "data_dir: {data}\nteacher: gemma-typo\n",
            r"teacher: unknown model 'gemma-typo'",
        ),
        ("config-not-a-mapping", "- name\n", r"c\.yaml: expected a mapping, got list"),
    ]:
        argv, files = _run(text)
        add(id, argv, message, files)
    add(
        "config-latin1",
        _run("")[0],
        r"c\.yaml: not valid UTF-8",
        {"c.yaml": "name: caf\xe9\n".encode("latin-1")},
    )
    add("config-missing", ["run", "{tmp}/none.yaml"], r"none\.yaml: config file not found")
    argv, files = _run(RUN_OK + "eval: {n: 4, k: [1]}\n")
    add(
        "run-folder-other-config",
        argv,
        r"holds results of another config \(eval\.n: 2 -> 4\); .*--force",
        files,
        _prior_run,
    )

    # -- where results go -------------------------------------------------------------
    add(
        "out-under-a-file",
        _filter(ex)[:-1] + ["{tmp}/ex.jsonl/pairs.jsonl"],
        r"ex\.jsonl: File exists \(a file stands where a folder is needed\)",
        {"ex.jsonl": [EXEC]},
    )
    add(
        "out-is-a-file",
        _gen()[:-1] + ["{tmp}/data/test.jsonl"],
        r"test\.jsonl/samples: Not a directory",
    )
    add(
        "out-on-full-disk",
        _filter(ex)[:-1] + ["{tmp}/full.jsonl"],
        r"full\.jsonl: No space left on device; free some space, then rerun",
        {"ex.jsonl": [EXEC]},
        # the writer's temporary is named by its pid (main runs in this process)
        lambda tmp: os.symlink("/dev/full", tmp / f"full.jsonl.tmp.{os.getpid()}"),
    )
    add("report-missing-run", ["report", "{tmp}/norun"], r"run folder not found")
    return c


CASES = _cases()


def _fill(text: str, tmp: Path, model: Path | None = None) -> str:
    return (
        text.replace("{tmp}", str(tmp))
        .replace("{data}", str(tmp / "data"))
        .replace("{model}", str(model or ""))
    )


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


def test_at_least_thirty_distinct_cases():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    for rel, content in case.files.items():
        if content is None:
            continue
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, list):
            content = _jsonl(content)
        if isinstance(content, str):
            content = _fill(content, tmp_path, tiny_model_dir).encode()
        p.write_bytes(content)
    if case.setup:
        case.setup(tmp_path)
    before = _snapshot(tmp_path)
    argv = [_fill(a, tmp_path, tiny_model_dir) for a in case.argv]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2, f"exit {code}: {err}"
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert lines[0].startswith(f"ekt {argv[0]}: error: "), lines[0]
    assert re.search(case.message, lines[0]), f"{case.message!r} not in {lines[0]!r}"
    after = _snapshot(tmp_path)
    changed = [k for k, v in before.items() if after.get(k) != v]
    assert not changed, f"files changed by a failed command: {changed}"


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    from ekt.errors import EktError

    with pytest.raises(EktError, match="none.jsonl: no such file"):
        main(["--debug", "verify", "--programs", str(tmp_path / "none.jsonl"), "--out", "x"])


# -- in a real process: python -m ekt, read-only and full file systems ---------------------


def _ekt(*args: str, env: dict | None = None, pre: list[str] | None = None, **kw):
    return subprocess.run(
        [*(pre or []), sys.executable, "-m", "ekt", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        **kw,
    )


def _one_error_line(proc: subprocess.CompletedProcess, command: str) -> str:
    """The one error line (progress bars of the stages that ran may come before it)."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith(f"ekt {command}: error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


@pytest.mark.slow
def test_python_m_ekt_exit_code_and_one_line(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("eval: {n: 2, k: [1, 5]}\n")
    proc = _ekt("run", str(tmp_path / "c.yaml"))
    assert proc.stderr.count("\n") == 1
    assert "eval.k 5 exceeds --n 2" in _one_error_line(proc, "run")
    proc = _ekt("evaluate", "--model", "x", "--out", "y", "--n", "0")
    assert proc.stderr.count("\n") == 1 and "--n must be >= 1" in _one_error_line(proc, "evaluate")


def _can_mount() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt && umount /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


needs_mount = pytest.mark.skipif(
    not _can_mount(), reason="needs root and mount namespaces (unshare -m) for a real tmpfs"
)

RUN_CONFIG = """\
data_dir: {data}
teacher: {model}
student: {model}
methods: [supervised]
train_limit: 3
device: cpu
evaluate_teacher: false
teacher_sampling: {{n: 2, max_new_tokens: 8}}
train: {{warmup_steps: 0, batch_size: 2, per_device_train_batch_size: 2, max_steps: 2,
        save_steps: 1}}
eval: {{limit: 2, n: 2, k: [1, 2], max_new_tokens: 8}}
sandbox: {{workers: 1}}
"""


@needs_mount
@pytest.mark.slow
def test_read_only_output_folder(tmp_path: Path, data_dir: Path) -> None:
    """A read-only bind mount refuses root too (chmod would not)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    (tmp_path / "ex.jsonl").write_text(_jsonl([{**EXEC, "problem_id": "gsm8k/train/1"}]))
    mount = f'mount --bind {ro} {ro} && mount -o remount,ro,bind {ro} && exec "$@"'
    proc = _ekt(
        "filter",
        "--data-dir",
        str(data_dir),
        "--executions",
        str(tmp_path / "ex.jsonl"),
        "--out",
        str(ro / "pairs.jsonl"),
        pre=["unshare", "-m", "sh", "-c", mount, "sh"],
    )
    assert "ro/pairs.jsonl: Read-only file system" in _one_error_line(proc, "filter")


@needs_mount
@pytest.mark.slow
def test_full_disk_mid_run_then_resume(
    tmp_path: Path, data_dir: Path, tiny_model_dir: Path
) -> None:
    """A 1 MB tmpfs fills while the first training checkpoint is written: one line, exit 2;
    once the disk is larger the same command finishes, and what was done before is untouched."""
    (tmp_path / "c.yaml").write_text(RUN_CONFIG.format(data=data_dir, model=tiny_model_dir))
    disk, keep = tmp_path / "disk", tmp_path / "kept"
    disk.mkdir()
    cmd = f"{sys.executable} -m ekt run {tmp_path / 'c.yaml'} --out {disk}/run"
    script = f"""
mount -t tmpfs -o size=1m tmpfs {disk} || exit 99
{cmd} > {tmp_path}/1.out 2> {tmp_path}/1.err; echo $? > {tmp_path}/1.rc
cp -a {disk}/run {keep}
mount -o remount,size=64m {disk}
{cmd} > {tmp_path}/2.out 2> {tmp_path}/2.err; echo $? > {tmp_path}/2.rc
cp -a {disk}/run {tmp_path}/final
"""
    subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        timeout=400,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    first = subprocess.CompletedProcess(
        [], int((tmp_path / "1.rc").read_text()), "", (tmp_path / "1.err").read_text()
    )
    line = _one_error_line(first, "run")
    assert "is full" in line and "rerun the same command to resume" in line
    assert (tmp_path / "2.rc").read_text().strip() == "0", (tmp_path / "2.err").read_text()[-3000:]
    final = tmp_path / "final"
    for rel in ("supervised/programs.jsonl", "supervised/executions.jsonl", "config.yaml"):
        assert (keep / rel).read_bytes() == (final / rel).read_bytes(), rel
    assert "cut short while being saved" in (tmp_path / "2.out").read_text()
    results = json.loads((final / "results.json").read_text())
    assert {r["label"] for r in results["rows"]} >= {"student-base", "student-supervised"}
