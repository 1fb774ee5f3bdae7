"""Start-up time of the ``ekt`` command: ``--help`` of ekt and of every command, and a small
``ekt verify`` (10 programs of a two-question task file), each a fresh process, wall time from
process start to exit.

Each ``--help`` is timed twice: uncached (an empty help cache, ``$EKT_CACHE_DIR`` pointed at a
fresh folder before every run: the first call after an install or an edit, when the parser is
built) and cached (the page ``ekt.helpcache`` kept from an earlier call).

The targets (issue 26): every ``--help`` within 1 s, the small verify within 3 s, on this
machine. Each figure is the median of ``--repeat`` runs (the minimum and maximum beside it),
so one busy moment on a shared machine does not decide it; the CPU seconds (user + system)
of the runs are printed beside the wall time, as a figure that a busy machine inflates less.

Usage::

    python benchmarks/startup.py                      # the ekt on sys.path (this checkout)
    python benchmarks/startup.py --src /tmp/old/src   # another source tree (before/after)
    python benchmarks/startup.py --json               # machine-readable
    python benchmarks/startup.py --only train         # the cases whose name holds "train"
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = ("generate", "verify", "filter", "train", "evaluate", "run", "demo", "report",
            "models", "tasks", "export")  # fmt: skip
HELP_TARGET_S, VERIFY_TARGET_S = 1.0, 3.0


def small_verify_inputs(root: Path) -> list[str]:
    """A task file with two questions and 10 programs for them; the verify arguments."""
    for split, rows in (("train", [("Ann has 3 pens and buys 4. Pens?", 7),
                                   ("Bo has 10 cups and breaks 2. Cups?", 8)]),
                        ("test", [("Cy has 2 bags of 5 apples. Apples?", 10)])):  # fmt: skip
        (root / f"{split}.jsonl").write_text(
            "".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows)
        )
    spec = root / "bench.yaml"
    spec.write_text("name: bench\ndata: '{split}.jsonl'\nquestion: question\nanswer: answer\n")
    programs = root / "programs.jsonl"
    lines = []
    for i in range(10):
        value = 7 + (i % 2) if i < 8 else 0  # eight right, two wrong
        lines.append({"problem_id": f"bench/train/{i % 2}", "sample_idx": i // 2,
                      "program": f"def solution():\n    x = {value}\n    return x\n"})  # fmt: skip
    programs.write_text("".join(json.dumps(o) + "\n" for o in lines))
    return ["verify", "--task", str(spec), "--programs", str(programs),
            "--out", str(root / "out.jsonl"), "--workers", "1"]  # fmt: skip


CPU: dict[str, list[float]] = {}  # CPU seconds (user + system) of each timed run, by argv


def timed(args: list[str], env: dict[str, str], before=None) -> float:
    if before is not None:
        before()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "ekt", *args], env=env, capture_output=True,
                       text=True)  # fmt: skip
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
    CPU.setdefault(" ".join(args) + str(env.get("EKT_CACHE_DIR")), []).append(cpu)
    if r.returncode != 0:
        raise SystemExit(f"ekt {' '.join(args)} failed ({r.returncode}): {r.stderr[-2000:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", help="the source tree to time (its folder holding ekt/)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per figure (median shown)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--only", help="time only the cases whose name contains this text")
    a = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if a.src:
        env["PYTHONPATH"] = str(Path(a.src).resolve())
    where = subprocess.run([sys.executable, "-c", "import ekt; print(ekt.__file__)"], env=env,
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    figures: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="ekt-startup-") as tmp:
        verify_args = small_verify_inputs(Path(tmp))
        out = Path(tmp) / "out.jsonl"
        empty = Path(tmp) / "help-cache"
        fresh = {**env, "EKT_CACHE_DIR": str(empty)}  # no page kept: the parser is built

        def no_cache() -> None:
            shutil.rmtree(empty, ignore_errors=True)

        helps = [("ekt --help", ["--help"])]
        helps += [(f"ekt {c} --help", [c, "--help"]) for c in COMMANDS]
        cases = [(f"{name} (uncached)", args, fresh, no_cache) for name, args in helps]
        cases += [(f"{name} (cached)", args, env, None) for name, args in helps]
        cases += [("ekt verify (10 programs)", verify_args, env,
                   lambda: out.unlink(missing_ok=True))]  # fmt: skip
        cases = [c for c in cases if not a.only or a.only in c[0]]
        timed(["--help"], env)  # warm the file cache once, as any second run finds it
        for _, args, e, before in cases:  # a cached page exists before it is timed
            if e is env and before is None:
                timed(args, env)
        for name, args, e, before in cases:
            figures[name] = [timed(args, e, before) for _ in range(a.repeat)]
            cpu[name] = CPU[" ".join(args) + str(e.get("EKT_CACHE_DIR"))][-a.repeat :]
    rows = {k: {"median_s": round(statistics.median(v), 3), "min_s": round(min(v), 3),
                "max_s": round(max(v), 3), "cpu_median_s": round(statistics.median(cpu[k]), 3)}
            for k, v in figures.items()}  # fmt: skip
    if a.json:
        print(json.dumps({"ekt": where, "python": sys.version.split()[0], "figures": rows},
                         indent=2))  # fmt: skip
        return
    print(f"ekt from {where} (python {sys.version.split()[0]}; median of {a.repeat} runs)")
    worst_help = {"uncached": 0.0, "cached": 0.0}
    for name, r in rows.items():
        target = VERIFY_TARGET_S if "verify (" in name else HELP_TARGET_S
        ok = "ok" if r["median_s"] <= target else f"over {target:.0f} s"
        print(f"  {name:<38} {r['median_s']:6.2f} s  (min {r['min_s']:.2f}, max "
              f"{r['max_s']:.2f}; cpu {r['cpu_median_s']:.2f} s)  {ok}")  # fmt: skip
        for kind in worst_help:
            if name.endswith(f"({kind})"):
                worst_help[kind] = max(worst_help[kind], r["median_s"])
    print(f"  slowest --help: uncached {worst_help['uncached']:.2f} s, cached "
          f"{worst_help['cached']:.2f} s (target {HELP_TARGET_S:.0f} s); verify target "
          f"{VERIFY_TARGET_S:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
