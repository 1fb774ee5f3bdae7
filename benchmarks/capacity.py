"""Capacity table for the published-scale run on 1, 8 and 64 GPUs, from per-component rates.

Every input is a rate measured somewhere, named in the output with where and how:

* token counts of the workload, measured here: the few-shot teacher prompt and the
  student prompt tokenised (``--tokenizer``, default the smollm2-135m preset's BPE,
  standing in for GPT-J's GPT-2 BPE, which cannot be downloaded here) over GSM8K
  questions; completion length as ``--gen-tokens`` (default 256, the published
  ``max_new_tokens``: a ceiling; ``runs/demo`` teacher samples averaged ~93);
* verification: sandbox programs per second per CPU core (``--verify-per-core``),
  measured by ``benchmarks/verify_scaling.py`` (strict isolation, local pool and Ray);
* GPU decoding: no GPU was available where this was written, so the generation rate
  is a roofline *ceiling* derived from the model's shape and two hardware rates that
  were measured on this workplace's H100 (``--tflops`` bf16 matrix product,
  ``--hbm-tbs`` device memory traffic), not an end-to-end measurement. Measure the
  real rate on the target GPU with ``ekt generate ... --backend vllm --limit 200`` (its
  summary prints tok/s) and pass it as ``--teacher-tok-s`` / ``--student-tok-s``.

Scaling: generation shards (``--shard-size`` questions each) are dealt to replicas, one
per GPU, so the makespan is ceil(shards / GPUs) shard-times; verification runs on
``--cores-per-gpu`` sandbox workers per GPU; training is small (FLOPs = 6 x params x
tokens) and shown for completeness.

Usage: ``EKT_DATA_DIR=../shared/data/gsm8k python benchmarks/capacity.py``
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
from dataclasses import dataclass


@dataclass
class Model:
    name: str
    params: float
    layers: int
    hidden: int  # K and V per layer per token: hidden values each (multi-head attention)

    @property
    def weight_bytes(self) -> float:
        return 2 * self.params  # bf16

    @property
    def kv_bytes_per_token(self) -> float:
        return 2 * self.layers * self.hidden * 2  # K and V, bf16


GPTJ = Model("GPT-J-6B", 6.05e9, 28, 4096)
NEO13 = Model("GPT-Neo-1.3B", 1.32e9, 24, 2048)


def decode_ceiling(m: Model, prompt: int, gen: int, batch: int, shared_prefix: bool,
                   tflops: float, hbm_tbs: float) -> float:
    """Tokens/s one GPU cannot exceed: each decode step reads the weights and every live
    sequence's KV cache (the shared prompt once per sequence, or once in all with
    shared-prefix attention) and does 2 x params FLOPs per token; the slower bound wins."""
    live_gen = gen / 2  # a sequence is on average half way through its completion
    per_seq = live_gen + (0 if shared_prefix else prompt)
    kv = batch * per_seq * m.kv_bytes_per_token + (prompt * m.kv_bytes_per_token
                                                   if shared_prefix else 0)
    t_mem = (m.weight_bytes + kv) / (hbm_tbs * 1e12)
    t_flop = batch * 2 * m.params / (tflops * 1e12)
    return batch / max(t_mem, t_flop)


def token_counts(data_dir: str | None, tokenizer: str) -> tuple[float, float, float]:
    """(teacher prompt, student prompt, reference program) mean tokens, measured."""
    from transformers import AutoTokenizer

    from ekt.data.prompts import student_prompt, teacher_prompt
    from ekt.data.supervised import reference_program
    from ekt.data.tasks import get_task
    from ekt.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(tokenizer))
    problems = get_task("gsm8k", data_dir=data_dir).load_file("train")[:500]
    tp = statistics.mean(len(tok(teacher_prompt(p)).input_ids) for p in problems)
    sp = statistics.mean(len(tok(student_prompt(p)).input_ids) for p in problems)
    progs = [x for x in (reference_program(p.solution) for p in problems) if x]
    return tp, sp, statistics.mean(len(tok(x).input_ids) for x in progs)


def hours(s: float) -> str:
    if s >= 360:
        return f"{s / 3600:.2f} h"
    return f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("EKT_DATA_DIR"))
    ap.add_argument("--tokenizer", default="smollm2-135m")
    ap.add_argument("--questions", type=int, default=6973, help="train minus the 500 dev")
    ap.add_argument("--test-questions", type=int, default=1319)
    ap.add_argument("--n", type=int, default=100, help="samples per question")
    ap.add_argument("--gen-tokens", type=int, default=256, help="tokens per completion")
    ap.add_argument("--shard-size", type=int, default=25, help="questions per generate shard")
    ap.add_argument("--batch", type=int, default=256, help="sequences decoded together")
    ap.add_argument("--tflops", type=float, default=798.0,
                    help="bf16 matmul TFLOP/s (measured: H100 80GB HBM3, this workplace)")
    ap.add_argument("--hbm-tbs", type=float, default=3.0,
                    help="device memory TB/s (measured: H100 copy, bytes read + written)")
    ap.add_argument("--verify-per-core", type=float, default=1148.0,
                    help="programs/s per core (measured: verify_scaling.py, 2,296/s on 2)")
    ap.add_argument("--cores-per-gpu", type=int, default=16)
    ap.add_argument("--teacher-tok-s", type=float, default=0.0, help="measured; 0: ceiling")
    ap.add_argument("--student-tok-s", type=float, default=0.0, help="measured; 0: ceiling")
    ap.add_argument("--train-tokens", type=float, default=7e6,
                    help="student training tokens (pairs x ~200 tokens x methods/epochs)")
    args = ap.parse_args(argv)

    tp, sp, prog = token_counts(args.data_dir, args.tokenizer)
    print(f"measured tokens ({args.tokenizer} BPE, 500 GSM8K train questions): teacher "
          f"prompt {tp:.0f}, student prompt {sp:.0f}, reference program {prog:.0f}; "
          f"completion budget {args.gen_tokens}")
    gen = args.gen_tokens
    rates = {}
    for label, m, prompt, given in (("teacher", GPTJ, tp, args.teacher_tok_s),
                                    ("student", NEO13, sp, args.student_tok_s)):
        lo = decode_ceiling(m, prompt, gen, args.batch, False, args.tflops, args.hbm_tbs)
        hi = decode_ceiling(m, prompt, gen, args.batch, True, args.tflops, args.hbm_tbs)
        rates[label] = given or lo
        src = "measured" if given else "ceiling, per-sequence prompt KV reads"
        print(f"{label} {m.name}: decode ceiling per GPU {lo:,.0f} tok/s (prompt KV read per "
              f"sequence) to {hi:,.0f} tok/s (shared-prefix attention); used: "
              f"{rates[label]:,.0f} tok/s ({src})")

    teacher_samples = args.questions * args.n
    eval_samples = args.test_questions * (args.n + 1)  # + greedy
    t_tokens = teacher_samples * gen
    e_tokens = eval_samples * gen
    print(f"workload: teacher {teacher_samples:,} samples, {t_tokens / 1e6:.0f}M tokens; each "
          f"evaluation {eval_samples:,} samples, {e_tokens / 1e6:.1f}M tokens")
    print()
    print("| GPUs | teacher generation | teacher verification | one evaluation (gen + verify) "
          "| training, 1.3B student (FLOP bound) |")
    print("|---|---|---|---|---|")
    for gpus in (1, 8, 64):
        shards = math.ceil(args.questions / args.shard_size)
        shard_s = args.shard_size * args.n * gen / rates["teacher"]
        t_gen = math.ceil(shards / gpus) * shard_s
        cores = gpus * args.cores_per_gpu
        t_ver = teacher_samples / (args.verify_per_core * cores)
        e_shards = math.ceil(args.test_questions / args.shard_size)
        e_shard_s = args.shard_size * (args.n + 1) * gen / rates["student"]
        e_gen = math.ceil(e_shards / gpus) * e_shard_s
        e_ver = eval_samples / (args.verify_per_core * cores)
        train = 6 * NEO13.params * args.train_tokens / (args.tflops * 1e12 * gpus)
        print(f"| {gpus} | {hours(t_gen)} ({shards} shards) | {hours(t_ver)} ({cores} cores) "
              f"| {hours(e_gen + e_ver)} | {hours(train)} |")
    print()
    print("GPU columns: from ceilings (measured matmul and memory rates) unless "
          "--teacher-tok-s/--student-tok-s are given; real engines reach a fraction of a "
          "ceiling, so they are lower bounds on time. Verification: measured per-core rate.")


if __name__ == "__main__":
    main()
