"""Start-up: `ekt --help`, every `COMMAND --help` (uncached: its parser built) and `ekt verify`
load neither torch nor transformers, datasets, ray or trl (they are imported where they are
used); building a parser imports none of the stages' modules either; a help page is printed
from its cache without importing the CLI at all. Timings: benchmarks/startup.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers", "datasets", "ray", "vllm", "trl", "peft")
# the stages' own modules and what only they need: a parser is built without them
STAGES = ("ekt.generation.generate", "ekt.verification.verify", "ekt.evaluation.evaluate",
          "ekt.data.tasks", "ekt.training.train", "ekt.pipeline.experiment", "jinja2")  # fmt: skip
REPO = Path(__file__).resolve().parents[1]


def _python(code: str, tmp_path: Path, *argv: str) -> dict:
    """Run ``code`` (which fills ``out``) in a fresh interpreter; its ``out`` as JSON."""
    paths = [str(REPO / "src"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "EKT_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(str(Path(p).resolve()) for p in paths)}  # fmt: skip
    script = (
        "import io, json, sys, contextlib\n"
        f"sys.argv = ['ekt', *{list(argv)!r}]\n"
        "out = {}\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        + "".join(f"    {line}\n" for line in code.splitlines())
        + "out['stdout'] = buf.getvalue()\n"
        f"out['heavy'] = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "out['cli'] = 'ekt.cli' in sys.modules\n"
        f"out['stages'] = sorted(m for m in {STAGES!r} if m in sys.modules)\n"
        "print(json.dumps(out))\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                       cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


COMMANDS = ["--help", "generate", "verify", "filter", "train", "evaluate", "run", "demo",
            "report", "models", "tasks", "export"]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_help_imports_no_heavy_package(tmp_path, command):
    argv = ["--help"] if command == "--help" else [command, "--help"]
    got = _python("from ekt.__main__ import run\nout['rc'] = run()", tmp_path, *argv)
    assert got["rc"] == 0 and got["heavy"] == [] and "usage: ekt" in got["stdout"]
    assert got["stages"] == []  # the parser is built from the options' classes alone
    again = _python("from ekt.__main__ import run\nout['rc'] = run()", tmp_path, *argv)
    assert again["stdout"] == got["stdout"]  # the same page, from the cache
    assert again["cli"] is False  # printed without importing the CLI


def test_train_help_lists_its_training_arguments(tmp_path):
    first = _python("from ekt.__main__ import run\nout['rc'] = run()", tmp_path, "train", "-h")
    assert "--train.learning_rate" in first["stdout"] and "--train.lr_scheduler_type" in first[
        "stdout"] and first["heavy"] == []  # fmt: skip


def test_help_cache_follows_the_source(tmp_path, monkeypatch):
    from ekt import helpcache

    monkeypatch.setenv("EKT_CACHE_DIR", str(tmp_path))
    helpcache._key.cache_clear()
    assert helpcache.help_topic(["verify", "--out", "x", "-h"]) == "verify"
    assert helpcache.help_topic(["--debug", "--help"]) == "ekt"
    assert helpcache.help_topic(["verify", "--out", "x"]) is None
    helpcache.store("verify", "page\n")
    assert helpcache.cached(["verify", "--help"]) == "page\n"
    monkeypatch.setenv("COLUMNS", "57")  # another width: rendered again
    helpcache._key.cache_clear()  # (the key is computed once per process)
    assert helpcache.cached(["verify", "--help"]) is None


def test_verify_loads_no_heavy_package(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from startup import small_verify_inputs
    finally:
        sys.path.pop(0)
    argv = small_verify_inputs(tmp_path)
    got = _python("from ekt.__main__ import run\nout['rc'] = run()", tmp_path, *argv)
    assert got["rc"] == 0 and got["heavy"] == []
    assert "verify: 10 programs (10 run" in got["stdout"] and "8 correct" in got["stdout"]
