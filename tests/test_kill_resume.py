"""SIGKILL ``ekt run`` in every stage, resume each time, and get what an uninterrupted run gets.

A tiny random model (teacher and student), seeded, runs the whole pipeline in a
few seconds: teacher sampling, verification, filtering, supervised pairs,
training with a checkpoint every step, evaluation of three models, results and
report. The tests compare the final run folder with one from an uninterrupted run:
every record (samples, executions, pairs, per-question rows), every score, the
trained weights and the training log must be the same, with no record missing or
duplicated.

How the kills are placed. ``test_kill_at_exact_points`` needs to land a SIGKILL at
exact points (after the n-th record of a file, half-way through a line, between a
temporary file and its rename, inside a checkpoint save), which watching the run
folder from outside cannot do reliably. So ekt is started through this file run
as a script: with ``EKT_TEST_KILL_AT`` set, it wraps a few functions (the JSONL
writer, ``os.replace``, ``Path.write_text``, ``TrainerState.save_to_json``,
``torch.save``) so that the process sends itself SIGKILL at that point, then calls
``ekt.cli.main`` as ``python -m ekt`` would. The hook lives only here; ekt itself
has none. The kill is a real SIGKILL: no handler, no cleanup, no flush.
``test_kill_from_outside`` adds kills sent by this test process when it sees a file
appear, which land wherever the run happens to be.

After every kill the test checks that the sandbox workers the run had started
went away with it, and records every finished record on disk: the final folder
must still hold each one, unchanged (finished work is never lost or rewritten).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HOOK_ENV = "EKT_TEST_KILL_AT"
RUN_DIR_ENV = "EKT_TEST_RUN_DIR"
CHILDREN_ENV = "EKT_TEST_CHILDREN_FILE"

# One process per entry, each resuming the folder the previous one was killed in.
KILL_POINTS = [
    "write:eval/teacher/greedy/samples/*.jsonl:1",  # evaluate the teacher (first): sampling
    "write:teacher/samples/*.jsonl:1",  # generate: after the first sample
    "write:teacher/samples/*.jsonl:2:torn",  # generate: half-way through writing a line
    "marker:teacher/samples/*.done",  # generate: every sample written, no marker yet
    "write:teacher/executions.jsonl:2",  # verify
    "write:teacher/executions.jsonl:2:torn",  # verify: torn line
    "replace:train_pairs.jsonl",  # filter: temporary file written, not renamed
    "write:supervised/executions.jsonl:2",  # verify the reference programs
    "ckpt-saved:2",  # train: right after checkpoint-2 is complete
    "ckpt-partial:3",  # train: checkpoint-3 has its weights but no optimizer state yet
    "replace:students/supervised/train_summary.json",  # train: model saved, summary not
    "write:eval/student-base/sampled/executions.jsonl:3:torn",  # evaluate: verification
    "replace:eval/student-supervised/scores.json",  # evaluate: scoring
    "replace:results.json",  # results and report
]

CONFIG = """\
name: kill-resume
data_dir: {data_dir}
teacher: {model}
student: {model}
methods: [ekt, supervised]
train_limit: 4
device: cpu
teacher_sampling: {{n: 2, temperature: 0.8, max_new_tokens: 16, seed: 3, batch_size: 4}}
train:
  warmup_steps: 0
  batch_size: 2
  per_device_train_batch_size: 2
  logging_steps: 1
  save_steps: 1
  max_steps: 4
eval: {{limit: 3, n: 2, k: [1, 2], max_new_tokens: 8, batch_size: 4, seed: 5}}
sandbox: {{workers: 1, timeout: 5}}
"""


# -- the wrapper (this file run as a script) ------------------------------------------


def _children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _die() -> None:
    """Note this process's children (sandbox workers) for the test, then SIGKILL ourselves."""
    Path(os.environ[CHILDREN_ENV]).write_text(json.dumps(_children_of(os.getpid())))
    os.kill(os.getpid(), signal.SIGKILL)


def _install_kill_hook(spec: str, run_dir: Path) -> None:
    kind, _, rest = spec.partition(":")

    def matches(path: object, glob: str) -> bool:
        try:
            rel = Path(os.fspath(path)).resolve().relative_to(run_dir)  # type: ignore[arg-type]
        except ValueError:
            return False
        return fnmatch.fnmatch(str(rel), glob)

    if kind == "write":
        from ekt.records import JsonlWriter, to_dict

        glob, n, *torn = rest.split(":")
        count = 0
        write = JsonlWriter.write

        def hooked_write(self, record):  # type: ignore[no-untyped-def]
            nonlocal count
            if matches(self.path, glob):
                count += 1
                if count == int(n):
                    if torn:  # half a line reaches the file, as if killed inside write()
                        obj = record if isinstance(record, dict) else to_dict(record)
                        line = (json.dumps(obj, ensure_ascii=False) + "\n").encode()
                        with open(self.path, "ab") as fh:
                            fh.write(line[: len(line) // 2])
                        _die()
                    write(self, record)
                    _die()
            write(self, record)

        JsonlWriter.write = hooked_write  # type: ignore[method-assign]
    elif kind == "replace":
        replace = os.replace

        def hooked_replace(src, dst, *a, **k):  # type: ignore[no-untyped-def]
            if matches(dst, rest):
                _die()
            return replace(src, dst, *a, **k)

        os.replace = hooked_replace
    elif kind == "marker":
        write_text = Path.write_text

        def hooked_write_text(self, *a, **k):  # type: ignore[no-untyped-def]
            if matches(self, rest):
                _die()
            return write_text(self, *a, **k)

        Path.write_text = hooked_write_text  # type: ignore[method-assign]
    elif kind == "ckpt-saved":
        from transformers.trainer_callback import TrainerState

        save_to_json = TrainerState.save_to_json

        def hooked_save_to_json(self, json_path):  # type: ignore[no-untyped-def]
            save_to_json(self, json_path)
            if f"checkpoint-{rest}{os.sep}" in str(json_path):
                _die()

        TrainerState.save_to_json = hooked_save_to_json  # type: ignore[method-assign]
    elif kind == "ckpt-partial":
        import torch

        save = torch.save

        def hooked_save(obj, f, *a, **k):  # type: ignore[no-untyped-def]
            name = str(f)
            if f"checkpoint-{rest}{os.sep}" in name and name.endswith("optimizer.pt"):
                _die()
            return save(obj, f, *a, **k)

        torch.save = hooked_save
    else:
        raise SystemExit(f"unknown kill point {spec!r}")


if __name__ == "__main__":
    if os.environ.get(HOOK_ENV):
        _install_kill_hook(os.environ[HOOK_ENV], Path(os.environ[RUN_DIR_ENV]).resolve())
    from ekt.cli import main

    sys.exit(main(sys.argv[1:]))


# -- the tests ------------------------------------------------------------------------

import pytest  # noqa: E402  (the wrapper above runs without pytest)

from ekt.records import read_jsonl  # noqa: E402

# the uninterrupted run (a module fixture) is built once: every test of the file on one worker
pytestmark = pytest.mark.xdist_group("kill_resume")

_VOLATILE = {"ms", "seconds", "stage_seconds"}  # wall-clock figures, different every run
_APPEND_ONLY = ("samples/shard-", "executions.jsonl")  # files whose records only accumulate


def _env(tmp: Path, run_dir: Path, kill_at: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            RUN_DIR_ENV: str(run_dir),
            CHILDREN_ENV: str(tmp / "children.json"),
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONHASHSEED": "0",
        }
    )
    env.pop(HOOK_ENV, None)
    if kill_at:
        env[HOOK_ENV] = kill_at
    return env


def _command(config: Path, run_dir: Path) -> list[str]:
    return [sys.executable, __file__, "run", str(config), "--out", str(run_dir)]


def _ekt_run(
    config: Path, run_dir: Path, kill_at: str | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(config, run_dir),
        env=_env(config.parent, run_dir, kill_at),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _assert_no_strays(children_file: Path) -> None:
    """The killed run's sandbox workers exit by themselves (their pipe to ekt closed)."""
    pids = json.loads(children_file.read_text()) if children_file.exists() else []
    children_file.unlink(missing_ok=True)
    deadline = time.time() + 15
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if _alive(p)], "sandbox workers outlived the killed run"


def _normalise(obj: object, run_dir: Path) -> object:
    """Drop wall-clock fields; the run folder's own path reads the same in every folder."""
    text = json.dumps(obj, sort_keys=True).replace(str(run_dir), "<RUN>")

    def strip(x: object) -> object:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in _VOLATILE}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return strip(json.loads(text))


def _key(rec: dict, line: int) -> tuple:
    if "problem_id" in rec:
        return (rec["problem_id"], rec.get("sample_idx", rec.get("program", line)))
    return (line,)


def _records(run_dir: Path) -> dict[tuple, object]:
    """Every finished record and result file: (file, key) -> normalised content.

    Also checks that no file holds a key twice and that no atomically written file
    is ever seen half-written.
    """
    out: dict[tuple, object] = {}
    for path in sorted(run_dir.rglob("*.jsonl")):
        rel = str(path.relative_to(run_dir))
        if rel.startswith("students/"):
            continue  # the training log is compared separately
        for line, rec in read_jsonl(path):
            key = (rel, _key(rec, line))
            assert key not in out, f"duplicate record {key}"
            out[key] = _normalise(rec, run_dir)
    for path in sorted(run_dir.rglob("*.json")):
        rel = str(path.relative_to(run_dir))
        if rel.startswith("students/") and not rel.endswith("train_summary.json"):
            continue
        if rel == "manifest.json":
            continue  # holds stage timings
        try:
            obj = json.loads(path.read_text())
        except ValueError:
            pytest.fail(f"{rel} is half-written")
        if rel.endswith("train_summary.json"):
            keep = ("pairs", "steps", "final_loss", "program_tokens", "tokens_trained", "dropped")
            obj = {k: obj[k] for k in keep}
        out[(rel,)] = _normalise(obj, run_dir)
    return out


def _train_log(run_dir: Path) -> list[dict]:
    rows = [o for _, o in read_jsonl(run_dir / "students/supervised/train_log.jsonl")]
    return [r for r in rows if "loss" in r]  # per-step rows; the last row holds run times


def _assert_same_results(expected: Path, got: Path) -> None:
    a, b = _records(expected), _records(got)
    assert sorted(a) == sorted(b), "different records or files"
    for key in a:
        assert a[key] == b[key], f"{key} differs"
    counts = {
        "teacher/executions.jsonl": 4 * 2,  # train questions x teacher samples
        "eval/teacher/sampled/executions.jsonl": 3 * 2,  # eval questions x samples
        "eval/student-supervised/greedy/executions.jsonl": 3,
    }
    for rel, n in counts.items():
        assert sum(1 for k in b if k[0] == rel) == n, rel
    weights = "students/supervised/model.safetensors"
    assert (expected / weights).read_bytes() == (got / weights).read_bytes()
    assert _train_log(expected) == _train_log(got)
    scores = json.loads((got / "eval/student-supervised/scores.json").read_text())
    assert scores["problems"] == 3 and "pass@2" in scores


def _assert_kept(seen: dict[tuple, object], final: dict[tuple, object]) -> None:
    """Every record that was finished on disk at some kill is in the final folder, unchanged."""
    for key, value in seen.items():
        assert key in final, f"{key} was finished, then lost"
        if key[0].endswith(".jsonl") and any(s in key[0] for s in _APPEND_ONLY):
            assert final[key] == value, f"{key} was rewritten"


@pytest.fixture(scope="module")
def config(tmp_path_factory, tiny_model_dir, data_dir) -> Path:
    path = tmp_path_factory.mktemp("kill") / "run.yaml"
    path.write_text(CONFIG.format(data_dir=data_dir, model=tiny_model_dir))
    return path


@pytest.fixture(scope="module")
def uninterrupted(config) -> Path:
    run_dir = config.parent / "uninterrupted"
    proc = _ekt_run(config, run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_kill_at_exact_points(config, uninterrupted):
    run_dir = config.parent / "killed"
    seen: dict[tuple, object] = {}
    logs = []
    for spec in KILL_POINTS:
        proc = _ekt_run(config, run_dir, kill_at=spec)
        logs.append(proc.stdout)
        assert proc.returncode == -signal.SIGKILL, (
            f"{spec}: the run was not killed there (exit {proc.returncode})\n{proc.stderr[-3000:]}"
        )
        _assert_no_strays(config.parent / "children.json")
        seen.update(_records(run_dir))
    proc = _ekt_run(config, run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = "".join(logs) + proc.stdout
    assert "cut short while being saved" in out and "train: resuming from" in out
    final = _records(run_dir)
    _assert_kept(seen, final)
    _assert_same_results(uninterrupted, run_dir)
    assert not list(run_dir.rglob("*.tmp*")), "temporary files left behind"


WATCH = [  # kill as soon as this path exists (and, for files, holds something)
    "teacher/samples/shard-00000.jsonl",
    "supervised/executions.jsonl",
    "students/supervised/checkpoints/checkpoint-1",
    "eval/student-base/sampled/samples/shard-00000.jsonl",
    "eval/student-supervised/greedy/executions.jsonl",
]


@pytest.mark.slow
def test_kill_from_outside(config, uninterrupted):
    run_dir = config.parent / "killed-outside"
    for rel in WATCH:
        target = run_dir / rel
        proc = subprocess.Popen(
            _command(config, run_dir),
            env=_env(config.parent, run_dir, None),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        children: list[int] = []
        while proc.poll() is None:
            if target.is_dir() or (target.is_file() and target.stat().st_size > 0):
                children = _children_of(proc.pid)
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        assert proc.wait(timeout=60) == -signal.SIGKILL, f"finished before {rel} appeared"
        (config.parent / "children.json").write_text(json.dumps(children))
        _assert_no_strays(config.parent / "children.json")
    proc = subprocess.run(
        _command(config, run_dir),
        env=_env(config.parent, run_dir, None),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_results(uninterrupted, run_dir)


@pytest.mark.slow
def test_changed_config_is_refused_and_force_redoes_only_what_changed(config, uninterrupted):
    """A resume with another eval temperature is refused (naming the key); --force removes the
    evaluations and results only: teacher samples and the trained student stay as they are."""
    run_dir = config.parent / "changed"
    shutil.copytree(uninterrupted, run_dir)
    kept = ["teacher/samples/shard-00000.jsonl", "students/supervised/model.safetensors"]
    stamps = {rel: (run_dir / rel).stat().st_mtime_ns for rel in kept}
    changed = config.parent / "changed.yaml"
    changed.write_text(config.read_text().replace("seed: 5}", "seed: 5, temperature: 0.9}"))
    proc = _ekt_run(changed, run_dir)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert "holds results of another config (eval.temperature: 0.6 -> 0.9)" in line, line
    assert "--force" in line and "removes: eval, report.html, results.json, results.md" in line
    harmless = config.parent / "harmless.yaml"  # more sandbox workers, a note: not a change
    harmless.write_text(config.read_text().replace("workers: 1", "workers: 2") + "note: hi\n")
    proc = _ekt_run(harmless, run_dir)
    assert proc.returncode == 0 and "(0 new)" in proc.stdout, proc.stderr[-3000:]
    proc = subprocess.run(
        [*_command(changed, run_dir), "--force"],
        env=_env(config.parent, run_dir, None),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"--force: removing {run_dir / 'eval'}" in proc.stdout
    assert {rel: (run_dir / rel).stat().st_mtime_ns for rel in kept} == stamps
    assert "already trained" in proc.stdout
    scores = json.loads((run_dir / "eval/student-base/scores.json").read_text())
    assert scores["settings"]["eval"]["temperature"] == 0.9


GRPO_CONFIG = """\
name: kill-resume-grpo
data_dir: {data_dir}
teacher: {model}
student: {model}
methods: [grpo]
train_limit: 4
device: cpu
evaluate_teacher: false
grpo:
  trl: {{max_steps: 4, save_steps: 1, num_generations: 2, per_device_train_batch_size: 4,
         max_completion_length: 12}}
eval: {{limit: 2, n: 1, k: [1], max_new_tokens: 8, batch_size: 4, seed: 5}}
sandbox: {{workers: 1, timeout: 5}}
"""
GRPO_KILLS = [
    "ckpt-saved:2",  # right after checkpoint-2 is complete (steps 1-2 rolled out and trained)
    "write:students/grpo/rollouts.jsonl:3:torn",  # resumed at step 3: half its third rollout
    "ckpt-partial:4",  # the last checkpoint has its weights but no optimizer state yet
]


@pytest.mark.slow
def test_killed_grpo_run_resumes_to_the_uninterrupted_records(tmp_path, tiny_model_dir, data_dir):
    """`ekt run` with grpo, SIGKILLed at three points (each rerun resuming from the last
    complete checkpoint), ends with the uninterrupted run's rollouts (byte for byte), reward
    log, weights and scores."""
    config = tmp_path / "run.yaml"
    config.write_text(GRPO_CONFIG.format(data_dir=data_dir, model=tiny_model_dir))
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert (proc := _ekt_run(config, whole)).returncode == 0, proc.stderr[-3000:]
    for spec in GRPO_KILLS:
        proc = _ekt_run(config, cut, kill_at=spec)
        assert proc.returncode == -signal.SIGKILL, f"{spec}: not killed\n{proc.stderr[-3000:]}"
        _assert_no_strays(config.parent / "children.json")
    proc = _ekt_run(config, cut)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resum" in proc.stdout + proc.stderr
    a, b = whole / "students" / "grpo", cut / "students" / "grpo"
    assert (a / "rollouts.jsonl").read_bytes() == (b / "rollouts.jsonl").read_bytes()
    steps = [r["step"] for _, r in read_jsonl(b / "rollouts.jsonl")]
    assert steps == [s for s in (1, 2, 3, 4) for _ in range(4)]

    def rewards(d: Path) -> list:
        rows = [o for _, o in read_jsonl(d / "train_log.jsonl") if "reward" in o]
        return [(o["step"], o["reward"], o.get("loss")) for o in rows]

    assert rewards(a) == rewards(b) and len(rewards(b)) == 4
    weights = "model/model.safetensors"
    assert (a / weights).read_bytes() == (b / weights).read_bytes()
    ra = _normalise(json.loads((whole / "results.json").read_text())["rows"], whole)
    rb = _normalise(json.loads((cut / "results.json").read_text())["rows"], cut)
    assert ra == rb
