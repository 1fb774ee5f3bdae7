"""Teacher sampling throughput: ekt's ``TransformersSampler`` against a plain ``generate`` loop.

Workload (the same for both sides): the ``smollm2-135m`` preset (``--model``), the first
``--k`` train questions (default 8) of ``--task`` (default gsm8k; a procedural task such as
``procedural_mix`` needs no data folder) with the task's real few-shot teacher prompt
(``--prompt student``: the zero-shot student prompt), ``--n`` samples each (default 16),
temperature 0.6, top-p 1.0, at most 128 new tokens, stop at the prompt format's stop strings
(``ekt.data.prompts.STOP_STRINGS`` for GSM8K), seed 0, the same dtype and torch threads.

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

    tokens_per_s=<ekt> llamacpp_tokens_per_s=<llama.cpp> vs_llamacpp=<ratio>x \
        batched_bench_tg_tokens_per_s=<engine> vs_engine=<ratio>x

Two llama.cpp figures, two bars:

* ``vs_llamacpp``: against ``llama-server`` on the very same requests, end to end, as ekt's
  sampler is measured: it includes llama.cpp's sampling, HTTP, stop strings, prompt processing
  (of what the prompt cache does not hold) and samples that end early.
* ``vs_engine``: against llama.cpp's engine alone, ``llama-batched-bench`` (also built by
  ``make llama-server``) on the same GGUF: ``-npl`` = ekt's batch (the server's slots), ``-npp``
  = the mean prompt length of the requests in tokens (shared by the sequences, ``-pps``),
  ``-ntg`` = ``--max-new-tokens``, ``-t``/``-tb`` = ``--threads``, ``--poll 0`` as the server.
  (``-npl`` is the number of samples where a small workload has fewer than a batch.)
  Its ``S_TG`` column is the pure batched decode speed (tokens/s over all sequences, every
  sequence decoding all ``-ntg`` tokens): no sampling at all (it feeds random tokens), no
  HTTP, no stop strings, the prompt outside the clock. It is the stricter bar: what any
  sampler driving llama.cpp could at best reach on this batch.

``--model`` may be a local HF folder, e.g. a fine-tuned float32 student as ``ekt train``
writes it. ekt's side samples the folder itself (float32 decoding, as students decode today);
llama.cpp gets the same weights at the same precision: the folder converted once to an F32
GGUF by the ``convert_hf_to_gguf.py`` that the llama-cpp-python sdist of
``LLAMA_CPP_VERSION`` vendors (fetched with pip into
``$EKT_CACHE_DIR/llama.cpp/converter-<version>/``), cached as
``$EKT_CACHE_DIR/llama.cpp/converted/<sha256 of the folder's files>.f32.gguf``.

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


def run_llamacpp(args, gguf, requests, params, batch: int) -> float:
    """Tokens/s of llama-server on the same workload (``batch`` slots, ``args.threads``)."""
    import tempfile
    from pathlib import Path

    from ekt.generation.backends import BackendConfig
    from ekt.generation.backends.llamacpp_server import LlamaServerProcess, LlamaServerSampler

    log = Path(tempfile.mkdtemp(prefix="ekt-llamacpp-")) / "server.log"
    with LlamaServerProcess(gguf, slots=batch, threads=args.threads, log=log) as srv:
        backend = BackendConfig("openai", base_url=srv.base_url)
        sampler = LlamaServerSampler(args.model, backend, progress=False)
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


BATCHED_BENCH_TG = "S_TG t/s"  # the column of pure batched decode speed


def parse_batched_bench(text: str) -> list[dict[str, float]]:
    """The rows of ``llama-batched-bench``'s markdown table, each keyed by the table's own
    column names (``PP``, ``TG``, ``B``, ``N_KV``, ``T_PP s``, ``S_PP t/s``, ``T_TG s``,
    ``S_TG t/s``, ``T s``, ``S t/s``). Log lines around the table are skipped."""
    header: list[str] | None = None
    rows: list[dict[str, float]] = []
    for line in text.splitlines():
        line = line.strip()
        if not (line.startswith("|") and line.endswith("|")):
            continue
        cells = [c.strip() for c in line[1:-1].split("|")]
        if header is None:
            if BATCHED_BENCH_TG in cells:
                header = cells
            continue
        if len(cells) != len(header) or all(set(c) <= set("-:") for c in cells):
            continue  # the separator line, or a table of another shape
        try:
            rows.append(dict(zip(header, map(float, cells))))
        except ValueError:
            continue
    return rows


def find_batched_bench() -> str:
    """``llama-batched-bench``: ``$EKT_LLAMA_BATCHED_BENCH``, next to the ``llama-server`` ekt
    uses (``scripts/build_llama_server.sh`` caches both), else ``PATH``."""
    import shutil

    from ekt.generation.backends.llamacpp_server import find_llama_server

    env = os.environ.get("EKT_LLAMA_BATCHED_BENCH")
    if env:
        return env
    server = find_llama_server()
    if server is not None and (server.parent / "llama-batched-bench").is_file():
        return str(server.parent / "llama-batched-bench")
    found = shutil.which("llama-batched-bench")
    if found:
        return found
    raise SystemExit(
        "llama-batched-bench not found: `make llama-server` (scripts/build_llama_server.sh) "
        "builds it next to llama-server, or set EKT_LLAMA_BATCHED_BENCH"
    )


def run_batched_bench(args, gguf, batch: int, prompt_len: float) -> float:
    """Tokens/s of llama.cpp's engine decoding ``batch`` sequences at once (S_TG of
    ``llama-batched-bench``): the same GGUF, threads, prompt length and new tokens."""
    import subprocess
    import tempfile
    from pathlib import Path

    npp, ntg = max(1, round(prompt_len)), args.max_new_tokens
    cmd = [find_batched_bench(), "-m", str(gguf)]
    cmd += ["-npp", str(npp), "-ntg", str(ntg), "-npl", str(batch)]
    # -pps: the n samples of a question share its prompt (as on both other sides); the
    # context holds every sequence whole (a row that does not fit is skipped silently).
    cmd += ["-pps", "-c", str(batch * (npp + ntg))]
    # The server's threads and thread-pool polling (LlamaServerProcess: -t, --poll 0).
    cmd += ["-t", str(args.threads), "-tb", str(args.threads), "--poll", "0"]
    log = Path(tempfile.mkdtemp(prefix="ekt-batched-bench-")) / "batched_bench.log"
    print(f"llama-batched-bench: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    log.write_text(f"$ {' '.join(cmd)}\n{done.stdout}\n--- stderr ---\n{done.stderr}")
    want = {"PP": npp, "TG": ntg, "B": batch}
    rows = [
        r
        for r in parse_batched_bench(done.stdout) or parse_batched_bench(done.stderr)
        if all(r.get(k) == v for k, v in want.items())
    ]
    if done.returncode != 0 or not rows:
        raise SystemExit(
            f"llama-batched-bench gave no row for PP={npp} TG={ntg} B={batch} "
            f"(exit {done.returncode}); its output: {log}"
        )
    row = rows[0]
    print(
        f"llama.cpp engine (batched-bench): PP={npp} TG={ntg} B={batch}: decode "
        f"{row['T_TG s']:.2f}s = {row[BATCHED_BENCH_TG]:.1f} tokens/s, prompt "
        f"{row['S_PP t/s']:.1f} tokens/s, all {row['S t/s']:.1f} tokens/s "
        f"({args.threads} threads, {wall:.0f}s with loading; log {log})",
        flush=True,
    )
    return row[BATCHED_BENCH_TG]


def folder_digest(folder) -> str:
    """16 hex of the sha256 of a model folder's own files (names and bytes; not subfolders
    such as checkpoints, nor ``ekt train``'s logs): two students of the same shape that
    differ in their weights differ here."""
    import hashlib
    from pathlib import Path

    h = hashlib.sha256()
    for f in sorted(Path(folder).iterdir()):
        if not f.is_file() or f.name.startswith(("train_", "training_")):
            continue
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()[:16]


def gguf_converter():
    """llama.cpp's ``convert_hf_to_gguf.py`` (with its ``conversion`` package and its own
    ``gguf-py``) from the llama-cpp-python sdist whose llama.cpp ekt builds, extracted once
    to ``$EKT_CACHE_DIR/llama.cpp/converter-<version>/``."""
    import shutil
    import subprocess
    import sys
    import tarfile
    import tempfile
    from pathlib import Path

    from ekt.generation.backends.llamacpp_server import LLAMA_CPP_VERSION as version
    from ekt.models import cache_dir

    root = cache_dir() / "llama.cpp"
    home = root / f"converter-{version}"
    script = home / "convert_hf_to_gguf.py"
    if script.is_file():
        return script
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"converter-{version}.", dir=root))
    print(f"fetching convert_hf_to_gguf.py from llama-cpp-python=={version} (one time)")
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--dest", str(work)]
    pip += ["--no-binary", "llama-cpp-python", f"llama-cpp-python=={version}"]
    subprocess.run(pip, check=True)
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    keep = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "models/templates/")
    out = work / "converter"
    with tarfile.open(work / f"llama_cpp_python-{version}.tar.gz") as tar:
        members = []
        for m in tar.getmembers():
            rel = m.name[len(prefix) :] if m.name.startswith(prefix) else ""
            if rel.startswith(keep) and (m.isfile() or m.isdir()):
                m.name = rel
                members.append(m)
        tar.extractall(out, members=members, filter="data")
    if not (out / "convert_hf_to_gguf.py").is_file():
        raise SystemExit(f"no {prefix}convert_hf_to_gguf.py in the sdist ({work})")
    try:
        out.rename(home)  # atomic: a concurrent run either finds it or keeps its own
    except OSError:
        pass
    shutil.rmtree(work, ignore_errors=True)
    return script


def converted_gguf(folder):
    """A HF model folder as an F32 GGUF (the precision a student decodes at), converted once
    with llama.cpp's own converter: ``$EKT_CACHE_DIR/llama.cpp/converted/<digest>.f32.gguf``."""
    import subprocess
    import sys
    from pathlib import Path

    from ekt.models import cache_dir

    folder = Path(folder).expanduser().resolve()
    target = cache_dir() / "llama.cpp" / "converted" / f"{folder_digest(folder)}.f32.gguf"
    if target.is_file():
        print(f"GGUF of {folder}: {target} (converted before)", flush=True)
        return target
    script = gguf_converter()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(script), str(folder), "--outtype", "f32", "--outfile", str(tmp)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise SystemExit(
            f"convert_hf_to_gguf.py failed on {folder} (exit {done.returncode}):\n"
            + (done.stderr or done.stdout)[-3000:]
        )
    tmp.replace(target)
    print(f"GGUF of {folder}: {target} (F32, converted in {time.perf_counter() - t0:.0f}s)")
    return target


def llamacpp_gguf(spec: str):
    """The GGUF llama.cpp runs for ``--model``: a preset's or a .gguf file as it ships, a HF
    folder converted at F32."""
    from pathlib import Path

    from ekt.models import shipped_gguf

    shipped = shipped_gguf(spec)
    if shipped is not None:
        return shipped
    if Path(spec).expanduser().is_dir():
        return converted_gguf(spec)
    raise SystemExit(f"--vs llama.cpp needs a preset, a .gguf file or a local HF folder: {spec}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model",
        default="smollm2-135m",
        help="a preset, a .gguf file, or a local HF folder (a student `ekt train` wrote)",
    )
    ap.add_argument(
        "--task", default="gsm8k", help="whose train questions (gsm8k needs EKT_DATA_DIR)"
    )
    ap.add_argument(
        "--prompt",
        choices=["teacher", "student"],
        default="teacher",
        help="the task's few-shot teacher prompt (default) or the zero-shot student prompt",
    )
    ap.add_argument("--k", type=int, default=8, help="number of train questions")
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
    ap.add_argument("--data-dir", default=None, help="the task's data folder (GSM8K: EKT_DATA_DIR)")
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

    from ekt.data.prompt_format import load_format
    from ekt.data.tasks import get_task
    from ekt.generation import qkernel
    from ekt.generation.backends.torch_sampler import TransformersSampler
    from ekt.generation.config import SamplingParams
    from ekt.models import load_model

    task = get_task(args.task, data_dir=args.data_dir)
    if task.name == "gsm8k" and not task.data_dir:
        raise SystemExit("set EKT_DATA_DIR or pass --data-dir (the GSM8K folder)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.vs == "llama.cpp":
        find_batched_bench()  # fail before the measurements, not after them
    problems = task.load("train")[: args.k]
    fmt = load_format(task.prompt_format(None))
    build = fmt.teacher if args.prompt == "teacher" else fmt.student
    requests = [(p.id, build(p)) for p in problems]
    if not all(isinstance(prompt, str) for _, prompt in requests):
        raise SystemExit(f"task {task.name}: its prompt format is a chat format, not text")
    stops = tuple(fmt.stop)
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
        f"({next(model.parameters()).dtype}), task={task.name} ({args.prompt} prompt), "
        f"k={len(requests)} questions, n={args.n}, "
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
        gguf = llamacpp_gguf(args.model)
        rate = run_llamacpp(args, gguf, requests, params, batch=batch)
        # The engine decodes as many sequences at once as ekt can have in flight.
        engine = run_batched_bench(args, gguf, min(batch, len(out)), prompt_len)
        print(
            f"tokens_per_s={ekt_rate:.1f} llamacpp_tokens_per_s={rate:.1f} "
            f"vs_llamacpp={ekt_rate / rate:.2f}x "
            f"batched_bench_tg_tokens_per_s={engine:.1f} vs_engine={ekt_rate / engine:.2f}x"
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
