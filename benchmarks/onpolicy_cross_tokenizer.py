"""Cross-tokenizer on-policy distillation on the embedded pair (issue 28): which route?

Teacher gemma3-270m, student smollm2-135m (different tokenizers), on TRAINING questions of
configs/demo.yaml's task (procedural_mix; the test split is never read). Routes, each the
same steps, batch, max_completion_length 48, learning rate, temperature and seed, each in
a process of its own (so its peak RSS is its own):

- ``uld``: ekt's route, TRL's DistillationTrainer with ekt's ULD loss
  (``ekt.training.onpolicy_uld``);
- ``gold``: TRL's experimental GOLDTrainer, ``use_uld_loss=True``, ``lmbda=1.0`` (every
  batch on-policy), positional ULD (``use_extended_uld=False``);
- ``gold-hybrid``: the same with ``uld_use_hybrid_loss=True`` (JSD on tokens whose strings
  both vocabularies have, ULD on the rest);
- ``gold-extended``: GOLD's default ``use_extended_uld=True`` (byte-offset alignment and
  merging of split tokens);
- ``base``: no training, the outcome measure of the untrained student;
- ``loss-timing``: the two ULD losses alone on random logits (:func:`loss_timing`).

Figures per route: seconds per optimizer step (the trainer's ``train()`` wall time over its
steps, no checkpoints written), peak RSS, and the outcome on 16 held-aside training
questions (questions 40-55, not among those trained on): the student's greedy completion
(48 tokens, cut at its EOS) read by the teacher, (a) the mean ULD distance per aligned
completion token (i-th token with i-th, as both routes pair them), (b) the teacher's
negative log-likelihood of the student's completion text per character (how likely the
teacher finds what the student now writes: what reverse KL pushes down; independent of any
token pairing).

Usage: ``OMP_NUM_THREADS=1 python benchmarks/onpolicy_cross_tokenizer.py [STEPS [ROUTES]]``
(defaults 3 and base,uld,gold,gold-hybrid,gold-extended); prints one line per route and a
table.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
import traceback

STUDENT, TEACHER, TASK = "smollm2-135m", "gemma3-270m", "procedural_mix"
BATCH, MAX_LEN, LR, TEMP, SEED = 4, 48, 5e-5, 0.8, 0
HELD = slice(40, 56)


def prompts(sl: slice) -> list[str]:
    from ekt.data.prompt_format import load_format
    from ekt.data.tasks import get_task
    from ekt.methods.grpo import student_prompts

    return student_prompts(load_format(None), get_task(TASK).load("train")[sl])[0]


def outcome(model, tok, t_model, t_tok) -> dict:
    """The two outcome figures (module doc) on the held-aside questions."""
    import torch

    from ekt.training.kd import uld_per_position
    from ekt.training.onpolicy_uld import teacher_view

    model.eval()
    tok.padding_side = "left"
    ps = prompts(HELD)
    enc = tok(ps, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=MAX_LEN, do_sample=False,
                             pad_token_id=tok.pad_token_id)  # fmt: skip
    uld_sum, n_pairs, nll, chars = 0.0, 0, 0.0, 0
    for i in range(len(ps)):
        p_ids = enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist()
        c_ids = out[i, enc["input_ids"].shape[1] :].tolist()
        if tok.eos_token_id in c_ids:
            c_ids = c_ids[: c_ids.index(tok.eos_token_id) + 1]
        t_ids, n_t = teacher_view(tok, t_tok, p_ids, c_ids)
        with torch.no_grad():
            s_logits = model(torch.tensor([p_ids + c_ids])).logits[0, len(p_ids) - 1 : -1]
            t_logits = t_model(torch.tensor([t_ids])).logits[0, len(t_ids) - n_t - 1 : -1]
        n = min(len(c_ids), n_t)
        uld_sum += float(uld_per_position(s_logits[:n], t_logits[:n]).sum())
        n_pairs += n
        lp = torch.log_softmax(t_logits.float(), -1)
        nll -= float(lp.gather(-1, torch.tensor(t_ids[len(t_ids) - n_t :])[:, None]).sum())
        chars += len(tok.decode(c_ids, skip_special_tokens=True))
    return {"uld_per_token": round(uld_sum / max(n_pairs, 1), 4),
            "teacher_nll_per_char": round(nll / max(chars, 1), 4)}  # fmt: skip


def loss_timing(repeats: int = 3) -> dict:
    """Seconds for one loss forward and backward, GOLD's ``ULDLoss`` (positional) against ekt's
    ``uld_per_position``, on the same random logits: a batch of BATCH completions of MAX_LEN
    tokens after 30 prompt tokens, the two embedded vocabularies (the loss alone, no model)."""
    import torch
    from trl.experimental.gold import GOLDConfig
    from trl.experimental.gold.gold_trainer import ULDLoss

    from ekt.training.kd import uld_per_position

    torch.manual_seed(SEED)
    n_prompt, seq = 30, 30 + MAX_LEN
    s_logits = torch.randn(BATCH, seq, 49152, requires_grad=True)
    t_logits = torch.randn(BATCH, seq, 262144)
    labels = torch.full((BATCH, seq), -100)
    labels[:, n_prompt:] = 1
    cfg = GOLDConfig(output_dir="/tmp/unused", use_uld_loss=True, use_extended_uld=False,
                     report_to="none", use_cpu=True)  # fmt: skip
    gold = ULDLoss(cfg)
    ids = torch.ones(BATCH, seq, dtype=torch.long)
    out = {}
    for name in ("gold_uld", "ekt_uld"):
        times = []
        for _ in range(repeats):
            s_logits.grad = None
            t0 = time.time()
            if name == "gold_uld":
                loss = gold(s_logits, t_logits, labels, labels, ids, ids)
            else:
                rows = s_logits[:, n_prompt - 1 : -1].reshape(-1, 49152)
                t_rows = t_logits[:, n_prompt - 1 : -1].reshape(-1, 262144)
                loss = uld_per_position(rows, t_rows).mean()
            loss.backward()
            times.append(time.time() - t0)
        out[f"{name}_seconds"] = round(min(times), 2)
    return out


def one(route: str, steps: int) -> dict:
    import tempfile

    if route == "loss-timing":
        res = {"route": route, **loss_timing()}
        res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return res

    from datasets import Dataset

    from ekt.models import load_model, resolve_model

    model, tok = load_model(STUDENT, device="cpu", dtype="float32")
    t_model, t_tok = load_model(TEACHER, device="cpu", dtype="float32")
    tok.padding_side = "left"
    train = prompts(slice(0, steps * BATCH))
    res: dict = {"route": route, "steps": steps}
    out = tempfile.mkdtemp(prefix="ekt-onpolicy-bench-")
    common = dict(max_steps=steps, per_device_train_batch_size=BATCH, max_completion_length=MAX_LEN,
                  learning_rate=LR, temperature=TEMP, top_p=1.0, seed=SEED,
                  lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
                  report_to="none", disable_tqdm=True, use_cpu=True,
                  gradient_checkpointing=False)  # fmt: skip
    # top_p 1.0: TRL's DistillationConfig default (GOLDConfig's is 0.95); gradient
    # checkpointing off: ekt's CPU default (GOLDConfig, an SFTConfig, turns it on)
    try:
        if route == "uld":
            from ekt.methods.onpolicy import onpolicy_config
            from ekt.training.onpolicy_uld import uld_trainer_class

            cfg = onpolicy_config(out, "cpu", **common)
            cfg.shuffle_dataset = False
            trainer = uld_trainer_class()(
                model=model, teacher_model=t_model, teacher_tokenizer=t_tok, args=cfg,
                train_dataset=Dataset.from_list([{"prompt": p} for p in train]),
                processing_class=tok,
            )  # fmt: skip
        elif route.startswith("gold"):
            from trl.experimental.gold import GOLDConfig, GOLDTrainer

            cfg = GOLDConfig(output_dir=out, lmbda=1.0, beta=1.0, use_uld_loss=True,
                             use_extended_uld=route == "gold-extended",
                             uld_use_hybrid_loss=route == "gold-hybrid",
                             teacher_tokenizer_name_or_path=resolve_model(TEACHER),
                             **common)  # fmt: skip
            trainer = GOLDTrainer(
                model=model, teacher_model=t_model, args=cfg, processing_class=tok,
                train_dataset=Dataset.from_list([{"prompt": p, "completion": ""} for p in train]),
            )  # fmt: skip
        if route != "base":
            t0 = time.time()
            trainer.train()
            res["seconds_per_step"] = round((time.time() - t0) / steps, 1)
            res["losses"] = [round(h["loss"], 4) for h in trainer.state.log_history if "loss" in h]
            model = trainer.model
    except Exception as e:  # a route that cannot run is a finding: its exact error
        res["error"] = f"{type(e).__name__}: {e}"
        res["trace_tail"] = traceback.format_exc().strip().splitlines()[-4:]
        res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return res
    res.update(outcome(model, tok, t_model, t_tok))
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return res


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        print("RESULT " + json.dumps(one(sys.argv[2], int(sys.argv[3]))), flush=True)
        return
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    routes = sys.argv[2] if len(sys.argv) > 2 else "base,uld,gold,gold-hybrid,gold-extended"
    rows = []
    for route in routes.split(","):
        t0 = time.time()
        p = subprocess.run([sys.executable, __file__, "--one", route, str(steps)],
                           capture_output=True, text=True)  # fmt: skip
        got = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        row = json.loads(got[-1][7:]) if got else {"route": route, "error": p.stderr[-800:]}
        row["process_seconds"] = round(time.time() - t0)
        print(json.dumps(row), flush=True)
        rows.append(row)
    head = ("route", "s/step", "peak RSS MB", "ULD/token", "teacher NLL/char")
    keys = ("seconds_per_step", "peak_rss_mb", "uld_per_token", "teacher_nll_per_char")
    print("\n{:14} {:>7} {:>11} {:>9} {:>16}".format(*head))
    for r in rows:
        err = f"  error: {r['error'][:150]}" if "error" in r else ""
        print(
            "{:14} {:>7} {:>11} {:>9} {:>16}".format(r["route"], *(r.get(k, "-") for k in keys))
            + err
        )


if __name__ == "__main__":
    main()
