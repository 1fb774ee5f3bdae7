"""Cost of the one grading rule in the ekt process: microseconds per graded value and per
majority vote, on a mix of the value shapes the sandbox reports (int, float noise, near
misses, Fraction, numpy float32, strings).

Usage: ``PYTHONPATH=src python benchmarks/grading_speed.py [--repeat N]``
"""

from __future__ import annotations

import argparse
import random
import time

from ekt.data.grading import grade_value, majority_vote


def cases(rng: random.Random, count: int) -> list[tuple[object, str, object]]:
    out: list[tuple[object, str, object]] = []
    for _ in range(count):
        gold = rng.choice([18, 2.5, 0.25, 1234.56, 192_000_000, -3, 10**9])
        kind = rng.randrange(6)
        if kind == 0:
            out.append((gold, "int" if isinstance(gold, int) else "float", gold))
        elif kind == 1:
            out.append((float(gold) / 7 * 7, "float", gold))  # float noise
        elif kind == 2:
            out.append((float(gold) + 1, "float", gold))  # near miss
        elif kind == 3:
            out.append(([int(gold * 4), 4], "Fraction", gold))
        elif kind == 4:
            out.append((float(gold) * (1 + 2**-23), "numpy.float32", gold))
        else:
            out.append((str(gold), "str", gold))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20_000, help="values graded")
    args = ap.parse_args()
    rng = random.Random(0)
    work = cases(rng, args.repeat)
    t0 = time.perf_counter()
    right = sum(grade_value(v, t, g) for v, t, g in work)
    dt = time.perf_counter() - t0
    print(f"grade_value: {1e6 * dt / len(work):.2f} us per value ({right}/{len(work)} right)")
    votes = [[(v, t) for v, t, _ in cases(rng, 100)] for _ in range(50)]
    t0 = time.perf_counter()
    for answers in votes:
        majority_vote(answers, 18)
    dt = time.perf_counter() - t0
    print(f"majority_vote: {1e3 * dt / len(votes):.2f} ms per question of 100 samples")


if __name__ == "__main__":
    main()
