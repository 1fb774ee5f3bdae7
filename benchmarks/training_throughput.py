"""Training throughput: ekt's packed trainer against transformers.Trainer with dynamic padding.

Both fine-tune ``smollm2-135m`` (the embedded preset, fp32) on the same pairs:
supervised reference programs built by ``ekt.data.supervised`` from the calculator
annotations of the first GSM8K training questions (not run through the
sandbox: this measures speed only). Same examples and data order (same seed),
same micro-batch, accumulation, effective batch and number of optimizer
steps, same optimizer settings. Measured: program tokens (the tokens with a
loss) trained per second of ``trainer.train()``; model loading is excluded.

* ekt: ``ekt.training.train.build_trainer``: each micro-batch packed into one row with
  attention kept inside each example, logits only where a target is predicted.
  With its default ``precision: auto``, which on a CPU with AMX or AVX512-BF16
  units (this machine) trains under bf16 autocast, fp32 elsewhere.
* padded: plain ``transformers.Trainer`` with ``DataCollatorForSeq2Seq`` (the
  standard dynamic-padding collator that also pads ``labels``, with -100),
  the model computing full logits and its own loss, with Trainer's defaults (fp32).

Two more runs separate the two gains: ``ekt-fp32`` (packing and kept logits only)
and ``padded-bf16`` (the plain Trainer with ``bf16=True``).

The per-step losses of both runs are printed side by side: the objective is
the same, so they agree up to float rounding. The runs alternate
(``--repeats``) because the machine may be shared; the ratio uses the median.
The last line is machine-readable (ekt with its defaults against the plain Trainer with its)::

    train_tokens_per_s=<ekt> vs_padded=<ratio>x

Usage: ``EKT_DATA_DIR=../shared/data/gsm8k python benchmarks/training_throughput.py``
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


class Counting:
    """Wraps a collator; counts the program tokens (labels other than -100) it batches."""

    def __init__(self, collator):
        self.collator = collator
        self.tokens = 0

    def __call__(self, feats):
        self.tokens += sum(sum(1 for x in f["labels"] if x != -100) for f in feats)
        return self.collator(feats)


def run_once(kind: str, args, data, tok_dir: str) -> tuple[float, int, list[float]]:
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    from ekt.training.train import TrainConfig, build_trainer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tok_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    out = tempfile.mkdtemp(prefix=f"ekt-bench-{kind}-")
    cfg = TrainConfig(
        learning_rate=1e-4,
        warmup_steps=0,
        batch_size=args.batch_size,
        per_device_train_batch_size=args.per_device_batch_size,
        max_steps=args.steps,
        logging_steps=1,
        seed=0,
    )
    if kind.startswith("ekt"):
        cfg.precision = "fp32" if kind == "ekt-fp32" else "auto"
        trainer = build_trainer(model, tok, data, cfg, out, "cpu", save=False)
    else:
        targs = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=cfg.per_device_train_batch_size,
            gradient_accumulation_steps=cfg.accumulation_steps(),
            learning_rate=cfg.learning_rate,
            weight_decay=cfg.weight_decay,
            warmup_steps=0,
            lr_scheduler_type="linear",
            max_steps=cfg.max_steps,
            max_grad_norm=cfg.max_grad_norm,
            optim="adamw_torch",
            logging_steps=1,
            save_strategy="no",
            seed=0,
            use_cpu=True,
            bf16=kind == "padded-bf16",
            remove_unused_columns=False,
            report_to="none",
            dataloader_num_workers=0,
        )
        collator = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
        trainer = Trainer(
            model=model,
            args=targs,
            train_dataset=data,
            data_collator=collator,
            processing_class=tok,
        )
    counter = Counting(trainer.data_collator)
    trainer.data_collator = counter
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return seconds, counter.tokens, losses


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--pairs", type=int, default=256, help="first N GSM8K train questions")
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per run")
    ap.add_argument("--batch-size", type=int, default=32, help="effective batch (examples)")
    ap.add_argument("--per-device-batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1, help="alternating runs of each trainer")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--data-dir", default=os.environ.get("EKT_DATA_DIR"))
    ap.add_argument(
        "--kinds", default="padded,ekt,ekt-fp32,padded-bf16",
        help="runs to make (padded and ekt are needed for the last line)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    if not args.data_dir:
        raise SystemExit("set EKT_DATA_DIR or pass --data-dir (the GSM8K folder)")

    import torch
    from transformers import AutoTokenizer

    from ekt.data.supervised import reference_pairs
    from ekt.data.tasks import get_task
    from ekt.models import resolve_model
    from ekt.training.train import build_examples, cpu_has_fast_bf16

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    model_dir = resolve_model(args.model)  # converts the preset once, then a cached HF folder
    tok = AutoTokenizer.from_pretrained(model_dir)
    problems = get_task("gsm8k", data_dir=args.data_dir).load("train")[: args.pairs]
    data, _ = build_examples(tok, reference_pairs(problems), 400, "program")
    lengths = [len(d["input_ids"]) for d in data]
    print(
        f"torch {torch.__version__}, threads={torch.get_num_threads()}, {args.model}, "
        f"{len(data)} pairs (mean {statistics.mean(lengths):.0f} tokens, max {max(lengths)}), "
        f"{args.steps} steps x effective batch {args.batch_size} "
        f"(micro-batch {args.per_device_batch_size}); ekt precision auto = "
        f"{'bf16' if cpu_has_fast_bf16() else 'fp32'} on this CPU",
        flush=True,
    )
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    losses: dict[str, list[float]] = {}
    for rep in range(args.repeats):
        order = kinds if rep % 2 == 0 else kinds[::-1]
        for kind in order:
            seconds, tokens, loss = run_once(kind, args, data, model_dir)
            rates[kind].append(tokens / seconds)
            losses[kind] = loss
            print(
                f"{kind:>6}: {tokens} program tokens in {seconds:.1f}s = "
                f"{tokens / seconds:.1f} tokens/s; losses {[round(x, 4) for x in loss]}",
                flush=True,
            )
    for a, b in (("ekt", "padded"), ("ekt-fp32", "padded"), ("padded-bf16", "padded")):
        if a in losses and b in losses:
            diff = max(abs(x - y) for x, y in zip(losses[a], losses[b]))
            print(f"largest per-step loss difference {a} vs {b}: {diff:.2e}")
    med = {k: statistics.median(v) for k, v in rates.items()}
    for a, b in (("ekt-fp32", "padded"), ("padded-bf16", "padded"), ("ekt", "padded-bf16")):
        if a in med and b in med:
            print(f"{a} vs {b}: {med[a] / med[b]:.2f}x")
    ekt = statistics.median(rates["ekt"])
    ratio = ekt / statistics.median(rates["padded"])
    print(f"train_tokens_per_s={ekt:.1f} vs_padded={ratio:.2f}x")


if __name__ == "__main__":
    main()
