"""Calibration: which procedural task suits the embedded models? (training questions only)

For each candidate task it measures, on the first ``--questions`` TRAINING questions (never
the test split the demo reports):

- each embedded preset as the teacher, few-shot (the task's exemplars): pass@1 from
  ``--n`` samples at the demo's temperature;
- the base student (smollm2-135m), zero-shot, the same way.

It prints one table row per (task, teacher) and marks the rows that meet the demo's
criteria: teacher pass@1 between 15% and 70%, base student below 10%. Run from the
repository root:

    .venv/bin/python scripts/calibrate_procedural.py [--tasks a,b] [--questions 24] [--n 4]

Records go under ``--out`` (default runs/calibration/<task>/<model>/), so a rerun resumes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ekt.data.tasks import get_task
from ekt.evaluation.evaluate import EvalConfig, evaluate
from ekt.generation.backends import make_sampler
from ekt.sandbox.pool import SandboxConfig

CANDIDATES = (
    "leg_counting", "letter_counting", "basic_arithmetic", "time_intervals", "gsm_symbolic",
    "procedural_mix",
)  # fmt: skip
TEACHERS = ("gemma3-270m", "smollm2-135m")
STUDENT = "smollm2-135m"
TEACHER_RANGE = (0.15, 0.70)
STUDENT_MAX = 0.10


def measure(task_name: str, model: str, prompt: str, args: argparse.Namespace) -> float:
    task = get_task(task_name)
    problems = task.load("train")[: args.questions]
    cfg = EvalConfig(n=args.n, k=[1], greedy=False, temperature=args.temperature,
                     max_new_tokens=args.max_new_tokens, split="train", batch_size=16)  # fmt: skip
    fmt = task.prompt_format("function") if prompt == "teacher" else "function"
    scores = evaluate(
        make_sampler(model, "cpu", cfg.batch_size),
        problems,
        Path(args.out) / task_name / f"{model}-{prompt}",
        cfg,
        task,
        prompt=prompt,
        sandbox=SandboxConfig(timeout=5.0, isolation="standard"),
        settings={"model": model},
        prompt_format=fmt,
        progress=False,
    )
    return float(scores["pass@1"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=",".join(CANDIDATES))
    ap.add_argument("--teachers", default=",".join(TEACHERS))
    ap.add_argument("--questions", type=int, default=24)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--out", default="runs/calibration")
    args = ap.parse_args()
    rows = []
    for name in args.tasks.split(","):
        t0 = time.time()
        student = measure(name, STUDENT, "student", args)
        for teacher in args.teachers.split(","):
            tp = measure(name, teacher, "teacher", args)
            ok = TEACHER_RANGE[0] <= tp <= TEACHER_RANGE[1] and student < STUDENT_MAX
            rows.append({"task": name, "teacher": teacher, "teacher_pass@1": tp,
                         "student_pass@1": student, "meets": ok})  # fmt: skip
            print(f"{name:18s} teacher {teacher:13s} {tp:6.1%}  base student {student:6.1%}  "
                  f"{'meets' if ok else '-'}  ({time.time() - t0:.0f}s)", flush=True)  # fmt: skip
    print("\n| task | teacher (few-shot) | teacher pass@1 | base student pass@1 | meets |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['teacher']} | {r['teacher_pass@1']:.1%} | "
              f"{r['student_pass@1']:.1%} | {'yes' if r['meets'] else 'no'} |")  # fmt: skip
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "calibration.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
