"""Teacher sampling throughput: ekt's ``TransformersSampler`` against a plain ``generate`` loop.

Workload (the same for both sides): the ``smollm2-135m`` preset, the first ``--k``
GSM8K train questions (default 8) with the real few-shot teacher prompt, ``--n``
samples each (default 16), temperature 0.6, top-p 1.0, at most 128 new tokens,
stop at ``ekt.data.prompts.STOP_STRINGS``, seed 0, the same dtype and torch threads.

* **naive**: what a user would write: for each question, ``model.generate(ids,
  do_sample=True, num_return_sequences=n, stop_strings=STOP_STRINGS, tokenizer=tok)``.
* **ekt**: ``TransformersSampler(model, tok).sample(requests, params)``.

Tokens are counted per sample up to and including the token that completes the
first stop string (or EOS, or the 128th token), on both sides; what ``generate``
computes for a row after it has stopped does not count. The last line is
machine-readable::

    tokens_per_s=<ekt> vs_naive=<ratio>x

Usage: ``EKT_DATA_DIR=../shared/data/gsm8k python benchmarks/sampling_throughput.py``
(``--skip-naive --naive-tokens-per-s X`` reuses a naive figure measured before).

``--vs llama.cpp`` compares with llama.cpp instead: the cached ``llama-server``
(``make llama-server``) serving the preset's GGUF as it ships, with as many
slots as ekt's batch (16 parallel sequences), the same threads (``--threads``,
default 2 here), the prompt cache on (the shared few-shot prefix is computed
once per slot), the same requests, temperature, top-p, stop strings and token
limit, driven by ``LlamaServerSampler`` (one request per sample, one in flight
per slot); tokens are counted by the server the way ekt counts them. ekt's
side samples the same GGUF dequantised by transformers. The last line is then::

    tokens_per_s=<ekt> llamacpp_tokens_per_s=<llama.cpp> vs_llamacpp=<ratio>x

``--ekt-backend llamacpp`` puts ekt's ``backend: llamacpp`` on ekt's side instead of its own
sampler (a ``llama-server`` that ekt starts with the same GGUF, slots and threads; the server
starts before the clock, as on the llama.cpp side).

ekt's side decodes as ``make_sampler`` does by default: with the GGUF's own quantised blocks
(``backend.gguf_decode``, ``ekt.generation.qkernel``); ``--float32-decode`` turns that off, and
``--compare-float32`` also samples the same workload with float32 decoding and counts the
samples that come out byte-identical.

Measured (2-core AMD EPYC with AVX-512, quiet, load ~1; ``--k 4 --n 16 --compare-float32``,
128 tokens, 16 slots, 2 threads; each line one run, both sides in it; passive thread pool)::

    smollm2  tokens_per_s=125.2 llamacpp_tokens_per_s=45.3 vs_llamacpp=2.77x
             (float32 decoding 82.3 tokens/s; identical samples 64/64)
    gemma3   tokens_per_s=119.0 llamacpp_tokens_per_s=57.0 vs_llamacpp=2.09x
             (float32 decoding 50.8 tokens/s; identical samples 64/64)

and with the default short spin (GOMP_SPINCOUNT=5000, below), the same day::

    gemma3   tokens_per_s=143.8 llamacpp_tokens_per_s=57.8 vs_llamacpp=2.49x
             (float32 decoding 46.0 tokens/s; identical samples 64/64)
    smollm2  tokens_per_s=160.0 llamacpp_tokens_per_s=47.9 vs_llamacpp=3.34x
             (float32 decoding 74.1 tokens/s; identical samples 64/64)

and, the same day before the kernel, gemma3 ``tokens_per_s=43.8 llamacpp_tokens_per_s=60.8
vs_llamacpp=0.72x``. The float32 output layer of gemma3-270m (262,144 x 640, 671 MB read every
step) took about half of a decode step; its Q8_0 blocks are 178 MB.

Import ekt before torch (this script does): ekt bounds how long torch's thread pool spins
(``GOMP_SPINCOUNT=5000`` unless the environment sets it or ``OMP_WAIT_POLICY``; see
``ekt/__init__.py``). The figures above were measured with ``OMP_WAIT_POLICY=PASSIVE``, ekt's
earlier default; llama-server inherits the same variables.
"""

from __future__ import annotations

import argparse
import os
import time

import ekt  # noqa: F401  (before torch: ekt sets torch's thread-pool wait policy, ekt/__init__.py)


def tokens_to_stop(tok, gen: list[int], stops, eos_ids) -> int:
    """Generated tokens up to and including the one that ends the sample."""
    for k, t in enumerate(gen, start=1):
        if t in eos_ids:
            return k
        text = tok.decode(gen[:k], skip_special_tokens=True)
        if any(s in text for s in stops):
            return k
    return len(gen)


def run_naive(model, tok, prompts: list[str], n: int, args, stops) -> tuple[int, float]:
    import torch

    eos = model.generation_config.eos_token_id
    eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
    eos_ids.add(tok.eos_token_id)
    tokens = 0
    t0 = time.perf_counter()
    counted = 0.0  # time spent counting tokens, not part of generation
    for i, prompt in enumerate(prompts):
        torch.manual_seed(args.seed + i)
        enc = tok(prompt, return_tensors="pt")
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=args.temperature,
            top_p=1.0,
            top_k=0,
            max_new_tokens=args.max_new_tokens,
            num_return_sequences=n,
            stop_strings=list(stops),
            tokenizer=tok,
            pad_token_id=tok.pad_token_id,
        )
        c0 = time.perf_counter()
        width = enc.input_ids.shape[1]
        for row in out[:, width:].tolist():
            tokens += tokens_to_stop(tok, row, stops, eos_ids)
        counted += time.perf_counter() - c0
        print(f"  naive question {i + 1}/{len(prompts)}: {tokens} tokens so far", flush=True)
    return tokens, time.perf_counter() - t0 - counted


def run_llamacpp(args, requests, params, batch: int) -> float:
    """Tokens/s of llama-server on the same workload (``batch`` slots, ``args.threads``)."""
    import tempfile
    from pathlib import Path

    from ekt.generation.backends.llamacpp_server import LlamaServerProcess, LlamaServerSampler
    from ekt.models import preset_gguf

    log = Path(tempfile.mkdtemp(prefix="ekt-llamacpp-")) / "server.log"
    with LlamaServerProcess(
        preset_gguf(args.model), slots=batch, threads=args.threads, log=log
    ) as srv:
        sampler = LlamaServerSampler(srv.base_url, args.model, progress=False)
        t0 = time.perf_counter()
        out = list(sampler.sample(requests, params))
        wall = time.perf_counter() - t0
    tokens = sum(c.n_tokens for c in out)
    print(
        f"llama.cpp: {len(out)} samples, {tokens} tokens ({tokens / len(out):.1f}/sample) "
        f"in {wall:.1f}s = {tokens / wall:.1f} tokens/s ({batch} slots, {args.threads} threads, "
        f"{sampler.prompt_cached} prompt tokens from the cache)",
        flush=True,
    )
    return tokens / wall


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--k", type=int, default=8, help="number of GSM8K train questions (>= 8)")
    ap.add_argument("--n", type=int, default=16, help="samples per question")
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=None, help="ekt batch (default: its own)")
    ap.add_argument("--dtype", default=None, help="model dtype for both sides (default float32)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--no-heal", action="store_true", help="ekt without token healing")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--naive-tokens-per-s", type=float, default=None)
    ap.add_argument("--data-dir", default=os.environ.get("EKT_DATA_DIR"))
    ap.add_argument("--vs", choices=["naive", "llama.cpp"], default="naive", help="other side")
    ap.add_argument(
        "--ekt-backend",
        choices=["transformers", "llamacpp"],
        default="transformers",
        help="ekt side: its own sampler (default) or backend llamacpp (a llama-server it starts)",
    )
    ap.add_argument(
        "--float32-decode",
        action="store_true",
        help="ekt side with backend.gguf_decode off: decode with the dequantised float32 weights",
    )
    ap.add_argument(
        "--compare-float32",
        action="store_true",
        help="also sample with float32 decoding and count the samples that come out identical",
    )
    args = ap.parse_args(argv)
    if args.vs == "llama.cpp" and not args.threads:
        args.threads = 2

    import torch

    from ekt.data.prompts import STOP_STRINGS, teacher_prompt
    from ekt.data.tasks import GSM8K
    from ekt.generation import qkernel
    from ekt.generation.sampling import SamplingParams, TransformersSampler
    from ekt.models import load_model

    if not args.data_dir:
        raise SystemExit("set EKT_DATA_DIR or pass --data-dir (the GSM8K folder)")
    if args.threads:
        torch.set_num_threads(args.threads)
    problems = GSM8K(data_dir=args.data_dir).load("train")[: args.k]
    requests = [(p.id, teacher_prompt(p)) for p in problems]
    stops = tuple(STOP_STRINGS)
    params = SamplingParams(
        n=args.n,
        temperature=args.temperature,
        top_p=1.0,
        max_new_tokens=args.max_new_tokens,
        stop=stops,
        seed=args.seed,
    )
    model, tok = load_model(args.model, device="cpu", dtype=args.dtype)
    prompt_len = sum(len(tok(p).input_ids) for _, p in requests) / len(requests)
    print(
        f"torch {torch.__version__}, threads={torch.get_num_threads()}, model={args.model} "
        f"({next(model.parameters()).dtype}), k={len(requests)} questions, n={args.n}, "
        f"T={args.temperature}, max_new_tokens={args.max_new_tokens}, "
        f"mean prompt {prompt_len:.0f} tokens",
        flush=True,
    )

    kw: dict = {} if args.batch_size is None else {"batch_size": args.batch_size}
    kw.update(progress=False, heal_prompt=not args.no_heal)
    # What backend.gguf_decode (on by default) gives make_sampler: the GGUF's own blocks.
    quantized = None if args.float32_decode else qkernel.for_spec(model, args.model)
    sampler = TransformersSampler(model, tok, quantized=quantized, **kw)
    if args.ekt_backend == "llamacpp":
        from ekt.generation.backends import BackendConfig, make_sampler

        backend = BackendConfig(name="llamacpp", threads=args.threads)
        sampler = make_sampler(args.model, "cpu", sampler.batch_size, backend)()
        sampler.progress = False
        sampler.start()  # the server starts before the clock, as on the llama.cpp side
    t0 = time.perf_counter()
    out = list(sampler.sample(requests, params))
    wall = time.perf_counter() - t0
    if args.ekt_backend == "llamacpp":
        sampler.close()
    assert len(out) == len(requests) * args.n
    ekt_tokens = sum(c.n_tokens for c in out)
    ekt_rate = ekt_tokens / wall
    print(
        f"ekt ({args.ekt_backend}): {len(out)} samples, {ekt_tokens} tokens "
        f"({ekt_tokens / len(out):.1f}/sample) in {wall:.1f}s = {ekt_rate:.1f} tokens/s"
        f" ({'float32' if quantized is None else 'GGUF blocks'} decode)",
        flush=True,
    )
    if args.compare_float32 and quantized is not None:
        t1 = time.perf_counter()
        plain = list(TransformersSampler(model, tok, **kw).sample(requests, params))
        plain_wall = time.perf_counter() - t1
        same = sum(a.text == b.text for a, b in zip(out, plain))
        plain_tokens = sum(c.n_tokens for c in plain)
        print(
            f"float32 decode: {plain_tokens} tokens in {plain_wall:.1f}s = "
            f"{plain_tokens / plain_wall:.1f} tokens/s; identical samples {same}/{len(out)} "
            f"(GGUF blocks {ekt_rate / (plain_tokens / plain_wall):.2f}x float32)",
            flush=True,
        )

    if args.vs == "llama.cpp":
        batch = args.batch_size or TransformersSampler(model, tok).batch_size
        rate = run_llamacpp(args, requests, params, batch=batch)
        print(
            f"tokens_per_s={ekt_rate:.1f} llamacpp_tokens_per_s={rate:.1f} "
            f"vs_llamacpp={ekt_rate / rate:.2f}x"
        )
        return
    if args.skip_naive:
        naive_rate = args.naive_tokens_per_s
    else:
        naive_tokens, naive_wall = run_naive(
            model, tok, [p for _, p in requests], args.n, args, stops
        )
        naive_rate = naive_tokens / naive_wall
        print(
            f"naive: {len(requests) * args.n} samples, {naive_tokens} tokens "
            f"({naive_tokens / (len(requests) * args.n):.1f}/sample) in {naive_wall:.1f}s "
            f"= {naive_rate:.1f} tokens/s",
            flush=True,
        )
    ratio = f"{ekt_rate / naive_rate:.2f}" if naive_rate else "nan"
    print(f"tokens_per_s={ekt_rate:.1f} vs_naive={ratio}x")


if __name__ == "__main__":
    main()
