"""Teacher sampling speed of the embedded presets with ``TransformersSampler``.

For each preset: load it (converting the GGUF once if needed), then sample
``--n`` completions of the few-shot teacher prompt for the first ``--k`` GSM8K
train questions and report generated tokens per second. The last line is
machine-readable::

    smollm2-135m_tokens_per_s=<x> gemma3-270m_tokens_per_s=<y>

Usage: ``EKT_DATA_DIR=../shared/data/gsm8k python benchmarks/teacher_speed.py``
"""

from __future__ import annotations

import argparse
import os
import time


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--k", type=int, default=4, help="number of GSM8K train questions")
    ap.add_argument("--n", type=int, default=8, help="samples per question")
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--data-dir", default=os.environ.get("EKT_DATA_DIR"))
    args = ap.parse_args(argv)

    import torch

    from ekt.data.prompts import teacher_prompt
    from ekt.data.tasks import get_task
    from ekt.generation import qkernel
    from ekt.generation.backends.torch_sampler import TransformersSampler
    from ekt.generation.config import SamplingParams
    from ekt.models import load_model

    if not args.data_dir:
        raise SystemExit("set EKT_DATA_DIR or pass --data-dir (the GSM8K folder)")
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    problems = get_task("gsm8k", data_dir=args.data_dir).load("train")[: args.k]
    requests = [(p.id, teacher_prompt(p)) for p in problems]
    params = SamplingParams(
        n=args.n, temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=0
    )
    print(
        f"torch {torch.__version__}, threads={torch.get_num_threads()}, k={args.k}, n={args.n}, "
        f"T={args.temperature}, max_new_tokens={args.max_new_tokens}, batch={args.batch_size}",
        flush=True,
    )
    rates: dict[str, float] = {}
    for name in args.presets:
        t0 = time.perf_counter()
        model, tok = load_model(name, device=args.device)
        load_s = time.perf_counter() - t0
        quantized = qkernel.for_spec(model, name)  # the default decode (backend.gguf_decode)
        sampler = TransformersSampler(
            model, tok, batch_size=args.batch_size, progress=False, quantized=quantized
        )
        t0 = time.perf_counter()
        out = list(sampler.sample(requests, params))
        wall = time.perf_counter() - t0
        tokens = sum(c.n_tokens for c in out)
        rates[name] = tokens / wall if wall > 0 else 0.0
        stopped = sum(c.n_tokens < args.max_new_tokens for c in out)
        print(
            f"{name}: load {load_s:.1f}s, {len(out)} samples, {tokens} tokens "
            f"({stopped} stopped early) in {wall:.1f}s = {rates[name]:.1f} tokens/s "
            f"on {next(model.parameters()).device} ({next(model.parameters()).dtype})",
            flush=True,
        )
        del model, sampler
    print(" ".join(f"{name}_tokens_per_s={rate:.1f}" for name, rate in rates.items()))


if __name__ == "__main__":
    main()
