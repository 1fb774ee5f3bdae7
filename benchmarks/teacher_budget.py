"""Teacher budget: full vs adaptive on the embedded teacher, and the projected saving.

One run of the demo's teacher (the ``gemma3-270m`` preset, few-shot ``function``
prompt, T=0.6, ``max_new_tokens`` 112 as in configs/demo.yaml) on ``--questions``
GSM8K train questions from index ``--first`` (default: the first two), twice from
one loaded model:

* ``full``: ``--n`` samples per question, then verification (``ekt generate`` +
  ``ekt verify``);
* ``adaptive`` (``keep: first``, rounds of ``--round-size``): sampling and
  verification interleaved round by round, a question leaving at its first correct
  program.

Both filter with ``keep: first``; the benchmark prints the completion tokens and
wall time (sampling + verification) of each, whether the pairs are identical, and
how many of adaptive's samples are byte-identical to full's sample of the same
index (the transformers sampler decodes a round with other batch neighbours than a
full call; its docstring says what that can change).

Then projections, computed exactly with ``ekt.generation.budget.projected_saving``
(full's samples over adaptive's expected samples; independent draws per question):
(a) from this teacher's measured success rates (correct/n per question, from the
full run), (b) for a teacher with pass@1 60%, ``n`` 32, the same round size: every
question at p = 0.6, and questions whose p follows a Beta distribution of mean 0.6
(fixed seeded draws), to show the sensitivity to hard questions. The embedded
teacher solves about 1 question in 160 samples, so its own saving is near 1x.

Last line::

    tokens_full=<a> tokens_adaptive=<b> saving=<a/b>x identical_pairs=yes|no \
projected_saving_p60=<x>x

Usage: ``EKT_DATA_DIR=../shared/data/gsm8k python benchmarks/teacher_budget.py``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path


def _tokens(out: Path) -> int:
    from ekt.generation.generate import usage

    return int(usage(out)["completion_tokens"])


def _samples(out: Path) -> dict[tuple[str, int], dict]:
    from ekt.generation.generate import shard_paths
    from ekt.records import read_jsonl

    return {
        (o["problem_id"], o["sample_idx"]): o for p in shard_paths(out) for _, o in read_jsonl(p)
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="gemma3-270m", help="model spec (a preset)")
    # defaults sized for about 10 minutes on the loaded 2-core development machine, where
    # the 270M teacher ran at ~1.5 tokens/s (two other jobs sharing the cores)
    ap.add_argument("--questions", type=int, default=2, help="N GSM8K train questions")
    ap.add_argument(
        "--first", type=int, default=0, help="position of the first one in the train split"
    )
    ap.add_argument("--n", type=int, default=4, help="samples per question (full budget)")
    ap.add_argument("--round-size", type=int, default=2, help="of the measured adaptive run")
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--max-new-tokens", type=int, default=112)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--workers", type=int, default=1, help="sandbox workers")
    ap.add_argument("--proj-n", type=int, default=32, help="n of the pass@1-60%% projection")
    ap.add_argument(
        "--proj-round-size", type=int, default=4, help="its round size (the config default)"
    )
    ap.add_argument("--data-dir", default=os.environ.get("EKT_DATA_DIR"))
    ap.add_argument("--out", default=None, help="keep the two generate folders here")
    args = ap.parse_args(argv)
    if not args.data_dir:
        raise SystemExit("set EKT_DATA_DIR or pass --data-dir (the GSM8K folder)")

    import torch

    from ekt.data.prompt_format import load_format
    from ekt.data.tasks import get_task
    from ekt.generation import qkernel
    from ekt.generation.backends.torch_sampler import TransformersSampler
    from ekt.generation.budget import AdaptiveBudget, projected_saving, success_rates
    from ekt.generation.config import SamplingParams
    from ekt.generation.generate import GenerateSettings, budget_usage, format_stops, generate
    from ekt.models import load_model
    from ekt.sandbox.pool import SandboxConfig
    from ekt.verification.filtering import filter_stage
    from ekt.verification.verify import RoundJudge, verify

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    task = get_task("gsm8k", args.data_dir)
    problems = task.load("train")[args.first : args.first + args.questions]
    params = format_stops(
        SamplingParams(
            n=args.n, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
            seed=args.seed,
        ),
        load_format("function"),
    )  # fmt: skip
    box = SandboxConfig(workers=args.workers, timeout=5.0, isolation="standard")
    budget = AdaptiveBudget(args.round_size, "first", 1, 0)
    print(
        f"teacher {args.teacher}: {len(problems)} questions ({', '.join(p.id for p in problems)}"
        f"), n={args.n}, round_size="
        f"{args.round_size}, T={args.temperature}, max_new_tokens={args.max_new_tokens}, "
        f"batch={args.batch_size}, torch threads={torch.get_num_threads()}",
        flush=True,
    )
    t0 = time.perf_counter()
    model, tok = load_model(args.teacher, device="cpu")
    quantized = qkernel.for_spec(model, args.teacher)  # the default decode (backend.gguf_decode)
    sampler = TransformersSampler(
        model, tok, batch_size=args.batch_size, progress=False, quantized=quantized
    )
    print(f"model loaded in {time.perf_counter() - t0:.1f}s", flush=True)

    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ekt-budget-"))
    full, adaptive = root / "full", root / "adaptive"
    pairs: dict[str, str] = {}
    secs: dict[str, float] = {}

    t0 = time.perf_counter()
    g = generate(sampler, problems, full, params, GenerateSettings(prompt="teacher", force=True))
    print(g.line(), flush=True)
    v = verify(full, full / "executions.jsonl", task, None, box, progress=False)
    secs["full"] = time.perf_counter() - t0
    print(v.line(), flush=True)

    t0 = time.perf_counter()
    (adaptive / "executions.jsonl").unlink(missing_ok=True)
    with RoundJudge(adaptive, adaptive / "executions.jsonl", task, box) as judge:
        g = generate(
            sampler,
            problems,
            adaptive,
            params,
            GenerateSettings(prompt="teacher", force=True, budget=budget),
            judge=judge,
        )  # fmt: skip
    secs["adaptive"] = time.perf_counter() - t0
    print(g.line(), flush=True)

    for name, out in (("full", full), ("adaptive", adaptive)):
        f = filter_stage(out / "executions.jsonl", out / "pairs.jsonl", task, keep="first")
        pairs[name] = (out / "pairs.jsonl").read_text()
        print(f"{name}: {f.line()}", flush=True)
    tokens = {name: _tokens(out) for name, out in (("full", full), ("adaptive", adaptive))}
    drawn = budget_usage(adaptive, len(problems), args.n)
    a, fs = _samples(adaptive), _samples(full)
    same = sum(1 for k, o in a.items() if fs.get(k) == o)
    identical = pairs["full"] == pairs["adaptive"]
    for name in ("full", "adaptive"):
        rate = tokens[name] / secs[name] if secs[name] else 0.0
        print(
            f"{name}: {tokens[name]} completion tokens, {secs[name]:.1f}s sampling + "
            f"verification ({rate:.1f} tok/s)"
        )
    print(
        f"adaptive drew {drawn['samples']} of {drawn['samples_full_budget']} samples; "
        f"{drawn['questions_left_early']} questions left early; {same}/{len(a)} of its samples "
        f"byte-identical to full's sample of the same index; pairs "
        f"{len(pairs['full'].splitlines())} full, {len(pairs['adaptive'].splitlines())} "
        f"adaptive, identical: {'yes' if identical else 'no'}"
    )

    # projections: exact expectations from per-question success probabilities
    correct: dict[str, int] = {p.id: 0 for p in problems}
    for line in (full / "executions.jsonl").read_text().splitlines():
        o = json.loads(line)
        correct[o["problem_id"]] += bool(o["correct"])
    measured = success_rates([correct[p.id] for p in problems], args.n)
    r, pr = args.round_size, args.proj_round_size
    print(
        f"(a) this teacher, measured p per question (correct/n, {sum(correct.values())} correct "
        f"of {len(problems) * args.n}): projected saving "
        f"{projected_saving(measured, args.n, r):.2f}x at n={args.n}, round {r}; "
        f"{projected_saving(measured, args.proj_n, pr):.2f}x at n={args.proj_n}, round {pr}"
    )
    p60 = projected_saving([0.6] * len(problems), args.proj_n, pr)
    p60r = projected_saving([0.6] * len(problems), args.proj_n, r)
    print(
        f"(b) pass@1 60%, every question p=0.6, n={args.proj_n}: {p60:.2f}x with rounds of "
        f"{pr}, {p60r:.2f}x with rounds of {r}"
    )
    rng = random.Random(0)
    for a_, b_ in ((6.0, 4.0), (1.5, 1.0), (0.6, 0.4)):
        ps = [rng.betavariate(a_, b_) for _ in range(2000)]
        mean = sum(ps) / len(ps)
        unsolvable = sum(p < 1 / args.proj_n for p in ps) / len(ps)
        print(
            f"    p ~ Beta({a_:g}, {b_:g}) (mean 0.6; 2000 seeded draws, mean {mean:.3f}, "
            f"{unsolvable:.0%} with p < 1/n): {projected_saving(ps, args.proj_n, pr):.2f}x "
            f"(rounds of {pr})"
        )
    saving = tokens["full"] / tokens["adaptive"] if tokens["adaptive"] else 0.0
    print(
        f"tokens_full={tokens['full']} tokens_adaptive={tokens['adaptive']} "
        f"saving={saving:.2f}x identical_pairs={'yes' if identical else 'no'} "
        f"projected_saving_p60={p60:.2f}x"
    )


if __name__ == "__main__":
    main()
