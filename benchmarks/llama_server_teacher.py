"""The teacher through llama.cpp's ``llama-server`` against ekt's built-in sampler, same workload.

Workload: one preset (default ``smollm2-135m``), the first ``--k`` GSM8K train
questions (default 8) with the few-shot teacher prompt, ``--n`` samples each
(default 4), temperature 0.6, top-p 1, at most ``--max-new-tokens`` (256) new
tokens, seed 0. Both sides go through ``ekt.generation.generate.generate`` and
``ekt.verification.verify.verify`` into fresh folders:

* **llama-server**: the cached build (``make llama-server``) serving the
  preset's GGUF as it ships, ``-np --slots`` (8), ``--threads`` (2), reached as
  ``--backend openai`` is (``make_sampler`` finds llama.cpp behind the URL);
* **built-in**: ``TransformersSampler`` on the same GGUF, dequantised by
  transformers (``--backend transformers``, ekt's default), torch threads
  ``--threads``.

For each side it prints how many samples hold a program, how many of those ran
(sandbox status ``ok`` or ``error``), how many were correct (the yield) and the
generated tokens per second of the sampling step. For the server's records it
checks every sample's token count against the model's tokenizer in two ways:

* **exact**: the server returns the ids it generated (``return_tokens``); the
  tokenizer decodes them, and they must spell the record (the held-back
  newline, the text, the stop string that ended it, or an EOS token), and
  ``n_tokens`` must be their number. ``token_error`` is the largest
  ``|n_tokens - len(ids)|``, ``spelled`` the records whose ids spell them.
* **re-encoded**: the tokenizer encodes the text the model wrote (held newline,
  text, stop string, plus one for an EOS). A model may write a string in more
  tokens than the tokenizer's own encoding (``"\n"``, ``"\n"``, ``"\n"`` for
  one ``"\n\n\n"`` token), so this can come out lower than what was generated;
  ``reencode_error`` is the largest difference, ``reencode_within_1`` the share
  of records within one token.

It also checks that every ``prompt_tokens`` equals the tokenizer's count of the
prompt sent. The last line is machine-readable::

    server_runs=<share> builtin_runs=<share> server_tokens_per_s=<x> builtin_tokens_per_s=<y>
    token_error=<n> spelled=<a>/<b> reencode_error=<n> reencode_within_1=<a>/<b>

Usage: ``EKT_DATA_DIR=../shared/data/gsm8k python benchmarks/llama_server_teacher.py``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def side(name: str, sampler, problems, params, task, out: Path) -> dict:
    from ekt.generation.generate import generate, read_completions
    from ekt.sandbox.pool import SandboxConfig
    from ekt.verification.verify import verify

    t0 = time.perf_counter()
    summary = generate(sampler, problems, out / "gen", params)
    wall = time.perf_counter() - t0
    verify(out / "gen", out / "exec.jsonl", task, sandbox=SandboxConfig(), progress=False)
    import json

    rows = [json.loads(line) for line in (out / "exec.jsonl").open()]
    has_program = [r for r in rows if r["program"] and r.get("status") != "no_program"]
    ran = [r for r in has_program if r["status"] in ("ok", "error")]
    correct = sum(bool(r.get("correct")) for r in rows)
    res = {
        "samples": len(rows),
        "program": len(has_program),
        "ran": len(ran),
        "correct": correct,
        "tokens": summary.tokens,
        "seconds": wall,
        "records": read_completions(out / "gen"),
    }
    print(
        f"{name}: {len(rows)} samples, {len(has_program)} hold a program, {len(ran)} ran "
        f"({len(ran) / len(rows):.1%}), {correct} correct (yield {correct / len(rows):.1%}); "
        f"{summary.tokens} tokens in {wall:.1f}s = {summary.tokens / wall:.1f} tokens/s",
        flush=True,
    )
    return res


def exact_errors(records, token_ids: dict, tok) -> tuple[int, int]:
    """(largest |n_tokens - generated ids|, records whose generated ids spell them)."""
    worst = spelled = 0
    specials = set(tok.all_special_ids)
    for c in records:
        ids = token_ids[(c.problem_id, c.sample_idx)]
        worst = max(worst, abs(c.n_tokens - len(ids)))
        wrote = tok.decode([t for t in ids if t not in specials])
        held = "\n" if wrote.startswith("\n") and not c.text.startswith("\n") else ""
        spelled += wrote.startswith(held + c.text + c.stop)
    return worst, spelled


def token_errors(records, prompts: dict[str, str], tok, max_new: int) -> tuple[int, int, int]:
    """(largest |n_tokens - re-encoded count|, records within 1, records whose prompt_tokens
    differ)."""
    worst = bad_prompt = within = 0
    for c in records:
        sent = prompts[c.problem_id].rstrip()
        base = len(tok(sent).input_ids)
        if c.prompt_tokens != base:
            bad_prompt += 1
        # The newline held back from the prompt was written by the model (and taken off the
        # text) when the text starts a line; count it in context, as the model wrote it.
        held = "\n" if not c.text or c.text[0] in " \t\n" else ""
        want = len(tok(sent + held + c.text + c.stop).input_ids) - base
        if not c.stop and c.n_tokens < max_new:
            want += 1  # ended by the EOS token: generated, but no text
        worst = max(worst, abs(c.n_tokens - want))
        within += abs(c.n_tokens - want) <= 1
    return worst, within, bad_prompt


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="a GGUF preset")
    ap.add_argument("--k", type=int, default=8, help="GSM8K train questions")
    ap.add_argument("--n", type=int, default=4, help="samples per question")
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slots", type=int, default=8, help="llama-server -np")
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp and torch threads")
    ap.add_argument("--skip-builtin", action="store_true")
    ap.add_argument("--data-dir", default=os.environ.get("EKT_DATA_DIR"))
    args = ap.parse_args(argv)
    if not args.data_dir:
        raise SystemExit("set EKT_DATA_DIR or pass --data-dir (the GSM8K folder)")

    import torch
    from transformers import AutoTokenizer

    from ekt.data.prompts import teacher_prompt
    from ekt.data.tasks import get_task
    from ekt.generation import qkernel
    from ekt.generation.backends import BackendConfig, make_sampler
    from ekt.generation.backends.llamacpp_server import LlamaServerProcess
    from ekt.generation.backends.torch_sampler import TransformersSampler
    from ekt.generation.config import SamplingParams
    from ekt.models import load_model, preset_gguf, resolve_model

    torch.set_num_threads(args.threads)
    task = get_task("gsm8k", data_dir=args.data_dir)
    problems = task.load("train")[: args.k]
    params = SamplingParams(
        n=args.n,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    prompts = {p.id: teacher_prompt(p) for p in problems}
    print(
        f"model={args.model}, k={args.k} questions, n={args.n}, T={args.temperature}, "
        f"max_new_tokens={args.max_new_tokens}, threads={args.threads}, slots={args.slots}",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="ekt-llama-bench-"))
    with LlamaServerProcess(
        preset_gguf(args.model), slots=args.slots, threads=args.threads, log=work / "server.log"
    ) as srv:
        sampler = make_sampler(
            args.model, None, 1, BackendConfig(name="openai", base_url=srv.base_url)
        )()
        sampler.progress = False
        sampler.token_ids = {}  # keep the generated ids: the exact token check below
        server = side("llama-server", sampler, problems, params, task, work / "server")
        print(f"llama-server prompt tokens from its cache: {sampler.prompt_cached}")
    tok = AutoTokenizer.from_pretrained(resolve_model(args.model))
    records = server["records"]
    exact, spelled = exact_errors(records, sampler.token_ids, tok)
    worst, within, bad_prompt = token_errors(records, prompts, tok, args.max_new_tokens)
    print(
        f"llama-server token counts over {len(records)} records: n_tokens vs the generated ids "
        f"off by at most {exact}, ids spell the record on {spelled}; vs re-encoding the text "
        f"off by at most {worst}, within 1 on {within}; prompt_tokens off on {bad_prompt}"
    )
    s_runs = server["ran"] / server["samples"]
    line = f"server_runs={s_runs:.3f}"
    if not args.skip_builtin:
        model, htok = load_model(args.model, device="cpu")
        builtin = side(
            "built-in",
            TransformersSampler(
                model, htok, progress=False, quantized=qkernel.for_spec(model, args.model)
            ),
            problems, params, task, work / "builtin",
        )  # fmt: skip
        line += f" builtin_runs={builtin['ran'] / builtin['samples']:.3f}"
        line += f" server_tokens_per_s={server['tokens'] / server['seconds']:.1f}"
        line += f" builtin_tokens_per_s={builtin['tokens'] / builtin['seconds']:.1f}"
    else:
        line += f" server_tokens_per_s={server['tokens'] / server['seconds']:.1f}"
    line += f" token_error={exact} spelled={spelled}/{len(records)}"
    print(line + f" reencode_error={worst} reencode_within_1={within}/{len(records)}")


if __name__ == "__main__":
    main()
