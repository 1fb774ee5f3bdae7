"""GRPO rollout throughput: TRL's own generate against ekt's ``TransformersSampler``.

Both sample the same zero-shot student prompts (the GRPO prompts of
``ekt.methods.grpo``), ``--generations`` completions each, at the same temperature and
token limit, on the same loaded model, one after the other in this process:

* **trl**: a real ``GRPOTrainer`` is built and its own generation path
  (``_generate_single_turn``: ``model.generate`` over the batch of repeated prompts, the
  way a training step calls it) samples the batch; no stop strings (TRL's transformers
  path has none), so a completion runs to EOS or the limit;
* **ekt**: ``TransformersSampler.sample`` (prompt prefilled once per question, rows leave
  the batch at a stop string, EOS or the limit; token healing on).

Reported per backend: wall seconds, completions/s, generated tokens/s, mean tokens per
completion, and the share of completions holding a program that extracts (the reward
needs one). Completions/s is what a GRPO step waits for.

Usage: ``python benchmarks/grpo_rollouts.py --model smollm2-135m --questions 8
--generations 8 --max-tokens 80``
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="basic_arithmetic")
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=80)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--batch-size", type=int, default=64, help="ekt sampler rows decoded together")
    ap.add_argument("--repeat", type=int, default=1, help="alternate the two this many times")
    args = ap.parse_args()

    import torch
    from datasets import Dataset
    from trl import GRPOTrainer

    from ekt.data.prompt_format import load_format
    from ekt.data.tasks import get_task
    from ekt.generation.backends.torch_sampler import TransformersSampler
    from ekt.generation.config import SamplingParams
    from ekt.methods.grpo import completion_program, grpo_config, student_prompts
    from ekt.models import load_model

    torch.set_num_threads(torch.get_num_threads())
    task = get_task(args.task)
    problems = task.load("train")[: args.questions]
    fmt = load_format("function")
    prompts, healed = student_prompts(fmt, problems)
    model, tok = load_model(args.model, dtype="float32")
    tok.padding_side = "left"
    g = args.generations
    cfg = grpo_config(
        "/tmp/ekt-grpo-bench", num_generations=g, per_device_train_batch_size=g * len(problems),
        max_completion_length=args.max_tokens, temperature=args.temperature, max_steps=1,
    )  # fmt: skip
    data = Dataset.from_list([{"prompt": p, "problem_id": q.id} for p, q in zip(prompts, problems)])
    trainer = GRPOTrainer(
        model=model, reward_funcs=lambda completions, **_: [0.0] * len(completions),
        args=cfg, train_dataset=data, processing_class=tok,
    )  # fmt: skip
    sampler = TransformersSampler(model, tok, batch_size=args.batch_size, progress=False)
    params = SamplingParams(
        n=g, temperature=args.temperature, max_new_tokens=args.max_tokens, stop=fmt.stop
    )

    def run_trl() -> tuple[float, int, int, int]:
        repeated = [p for p in prompts for _ in range(g)]
        t0 = time.perf_counter()
        prompt_ids, images, mm = trainer._tokenize_prompts(repeated)
        completion_ids, _ = trainer._generate_single_turn(prompt_ids, images, mm, g)
        dt = time.perf_counter() - t0
        texts = tok.batch_decode(completion_ids, skip_special_tokens=True)
        ok = sum(bool(completion_program(t, fmt, healed)[0]) for t in texts)
        return dt, len(texts), sum(map(len, completion_ids)), ok

    def run_ekt() -> tuple[float, int, int, int]:
        t0 = time.perf_counter()
        # the sampler heals the full prompt itself: give it the layout's own prompt
        got = list(sampler.sample([(q.id, fmt.student(q)) for q in problems], params))
        dt = time.perf_counter() - t0
        ok = sum(bool(completion_program(c.text, fmt, False)[0]) for c in got)
        return dt, len(got), sum(c.n_tokens for c in got), ok

    model.eval()
    rows = []
    with torch.no_grad():
        for _ in range(args.repeat):
            for name, fn in (("trl generate", run_trl), ("ekt sampler", run_ekt)):
                dt, n, toks, ok = fn()
                rows.append((name, dt, n, toks, ok))
    print(f"model {args.model}, task {args.task}: {len(problems)} questions x {g} generations, "
          f"max {args.max_tokens} tokens, temperature {args.temperature}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'backend':<14}{'seconds':>9}{'compl/s':>9}{'tok/s':>9}{'tok/compl':>11}{'program':>9}")
    for name, dt, n, toks, ok in rows:
        print(f"{name:<14}{dt:>9.1f}{n / dt:>9.2f}{toks / dt:>9.1f}{toks / n:>11.1f}"
              f"{ok / n:>9.0%}")  # fmt: skip


if __name__ == "__main__":
    main()
