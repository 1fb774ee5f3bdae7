"""The demo's evaluation workload: prompts prefilled one by one against packed together.

A student evaluation decodes one greedy program for each of a few hundred short zero-shot
prompts. On a CPU the float32 model is compute-bound there (a decode step of 25-64 rows
and a 35-token prompt both run the same matrix products), and the prompts are about half of
the work. Each prompt used to be prefilled alone (a product of ~35 rows); the sampler now
prefills the prompts admitted in one step packed into one forward pass
(``ekt.generation.backends.torch_sampler.PREFILL_TOKENS`` tokens at most), each attending
only to itself.

Workload: ``--model`` (default: the smollm2-135m preset; a trained student folder such as
``runs/demo/students/ekt`` is what the demo evaluates), questions ``--start``..``--start+k``
of the ``--split`` split of ``--task`` (default procedural_mix train 500..600: questions
the demo neither trains nor evaluates on) in the student prompt, greedy, ``--max-new-tokens``
(64) and ``--batch-size`` (64), torch's threads. Sides, alternated ``--reps`` times in one
process so that a busy machine slows both alike:

* **alone**: ``PREFILL_TOKENS = 1`` (every prompt in its own forward pass, as before);
* **packed**: the default.

Both sides must produce the same programs (greedy; the products differ only in the order of
summation); the script says how many differ. Last line (machine-readable)::

    alone_tokens_per_s=<a> packed_tokens_per_s=<p> speedup=<p/a>x same_programs=<m>/<k>

Usage: ``python benchmarks/eval_speed.py [--model DIR] [--k 100] [--reps 2]``.
"""

from __future__ import annotations

import argparse
import platform
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="procedural_mix")
    ap.add_argument("--split", default="train")
    ap.add_argument("--start", type=int, default=500)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--prompt-format", default="function")
    args = ap.parse_args()

    import torch

    import ekt.generation.backends.torch_sampler as sampling
    from ekt.data.prompt_format import load_format
    from ekt.data.tasks import get_task
    from ekt.generation.backends import make_sampler
    from ekt.generation.config import SamplingParams

    fmt = load_format(args.prompt_format)
    problems = get_task(args.task).load(args.split)[args.start : args.start + args.k]
    requests = [(p.id, fmt.student(p.question)) for p in problems]
    params = SamplingParams(
        n=1, temperature=0.0, max_new_tokens=args.max_new_tokens, stop=tuple(fmt.stop)
    )
    sampler = make_sampler(args.model, "cpu", args.batch_size)()
    sampler.progress = False
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if "model name" in ln),
        platform.processor(),
    )
    print(
        f"torch {torch.__version__}, threads={torch.get_num_threads()}, cpu={cpu}, "
        f"model={args.model}, {len(requests)} {args.task} {args.split} questions, "
        f"batch {args.batch_size}, max_new_tokens {args.max_new_tokens}, greedy"
    )
    default = sampling.PREFILL_TOKENS
    seconds: dict[str, list[float]] = {"alone": [], "packed": []}
    texts: dict[str, dict] = {}
    tokens: dict[str, int] = {}
    for rep in range(args.reps):
        for side, limit in (("alone", 1), ("packed", default)):
            sampling.PREFILL_TOKENS = limit
            t0 = time.perf_counter()
            out = list(sampler.sample(requests, params))
            dt = time.perf_counter() - t0
            seconds[side].append(dt)
            texts[side] = {c.problem_id: c.text for c in out}
            tokens[side] = sum(c.n_tokens for c in out)
            print(f"rep {rep} {side}: {tokens[side]} tokens in {dt:.1f}s")
    sampling.PREFILL_TOKENS = default
    rate = {s: tokens[s] / min(v) for s, v in seconds.items()}
    same = sum(texts["alone"][k] == texts["packed"].get(k) for k in texts["alone"])
    print(
        f"alone_tokens_per_s={rate['alone']:.1f} packed_tokens_per_s={rate['packed']:.1f} "
        f"speedup={rate['packed'] / rate['alone']:.2f}x same_programs={same}/{len(requests)}"
    )


if __name__ == "__main__":
    main()
