"""Stage: fine-tune the student on question -> program pairs with ``transformers.Trainer``.

An example is the student prompt (the bare question, ending in ``def
solution():``) followed by the program body and the end-of-text token. By
default the loss covers the program tokens only; ``loss_on="all"`` is the
published variant with loss on the whole sequence. Defaults follow the
published recipe: AdamW, lr 1e-4, weight decay 0.1 on every matrix but not on
norms or biases, 100 warm-up steps then linear decay, an effective batch of 32
through gradient accumulation, sequences of at most 400 tokens, gradient
clipping at 1.0. Because training runs on ``Trainer``, accelerate (DDP, FSDP,
DeepSpeed), checkpoint resume and loggers come with it.

``out_dir`` ends up a standard HF checkpoint folder that ``--model`` accepts,
with ``train_log.jsonl`` (loss per logging step) and ``train_summary.json``.
Trainer checkpoints live in ``out_dir/checkpoints`` and a rerun resumes from
the last one.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ekt.errors import EktError
from ekt.prompts import PROGRAM_HEADER, student_prompt
from ekt.records import TrainPair, read_records, write_json_atomic

LOSS_ON = ("program", "all")


@dataclass
class TrainConfig:
    learning_rate: float = 1e-4
    weight_decay: float = 0.1
    warmup_steps: int = 100
    lr_scheduler_type: str = "linear"
    batch_size: int = 32  # effective: per_device_batch_size x accumulation (x processes)
    per_device_batch_size: int = 8
    max_length: int = 400
    max_grad_norm: float = 1.0
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    loss_on: str = "program"  # program | all
    seed: int = 0
    logging_steps: int = 10
    save_steps: int = 0  # 0: a checkpoint at the end only
    gradient_checkpointing: bool = False

    def validate(self) -> None:
        if self.loss_on not in LOSS_ON:
            raise EktError(f"--loss-on must be program or all, got {self.loss_on!r}")
        if self.per_device_batch_size < 1 or self.batch_size < 1:
            raise EktError("--batch-size and --per-device-batch-size must be >= 1")
        if self.batch_size % self.per_device_batch_size:
            raise EktError(
                f"--batch-size {self.batch_size} is not a multiple of --per-device-batch-size "
                f"{self.per_device_batch_size}"
            )
        if self.learning_rate <= 0:
            raise EktError(f"--learning-rate must be > 0, got {self.learning_rate}")
        if self.max_length < 16:
            raise EktError(f"--max-length must be >= 16, got {self.max_length}")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise EktError("set --epochs > 0 or --max-steps > 0")


@dataclass
class TrainResult:
    out_dir: str
    pairs: int
    steps: int
    final_loss: float | None
    program_tokens: int
    seconds: float

    def line(self) -> str:
        loss = "n/a" if self.final_loss is None else f"{self.final_loss:.4f}"
        return (
            f"train: {self.pairs} pairs, {self.steps} steps, final loss {loss}, "
            f"{self.program_tokens} program tokens/epoch, {self.seconds:.0f}s -> {self.out_dir}"
        )


def encode_pair(tok: Any, question: str, program: str, max_length: int, loss_on: str) -> dict:
    """input_ids and labels for one example; prompt tokens get label -100 unless loss_on=all."""
    prompt = student_prompt(question)
    body = program[len(PROGRAM_HEADER) :] if program.startswith(PROGRAM_HEADER) else program
    p_ids = tok(prompt, add_special_tokens=True).input_ids
    b_ids = tok(body, add_special_tokens=False).input_ids + [tok.eos_token_id]
    ids = (p_ids + b_ids)[:max_length]
    labels = list(ids) if loss_on == "all" else ([-100] * len(p_ids) + b_ids)[:max_length]
    return {"input_ids": ids, "labels": labels}


class PadCollator:
    """Right-pads a batch to its longest example (labels with -100)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, feats: list[dict]) -> dict:
        import torch

        width = max(len(f["input_ids"]) for f in feats)
        ids, labels, mask = [], [], []
        for f in feats:
            pad = width - len(f["input_ids"])
            ids.append(f["input_ids"] + [self.pad_id] * pad)
            labels.append(f["labels"] + [-100] * pad)
            mask.append([1] * len(f["input_ids"]) + [0] * pad)
        return {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask),
        }


def decay_parameter_names(model: Any) -> list[str]:
    """Parameters that get weight decay: matrices, not biases or norm scales (any norm class)."""
    norm_params = set()
    for mod_name, module in model.named_modules():
        if "norm" in type(module).__name__.lower():
            for p_name, _ in module.named_parameters(recurse=False):
                norm_params.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return [
        n
        for n, p in model.named_parameters()
        if p.ndim >= 2 and n not in norm_params and not n.endswith("bias")
    ]


def _trainer_class() -> Any:
    from transformers import Trainer

    class EktTrainer(Trainer):
        def get_decay_parameter_names(self, model: Any) -> list[str]:
            return decay_parameter_names(model)

    return EktTrainer


def _log_callback(path: Path) -> Any:
    from transformers import TrainerCallback

    class JsonlLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):  # type: ignore[no-untyped-def]
            if logs:
                with open(path, "a") as fh:
                    fh.write(
                        json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n"
                    )

    return JsonlLog()


def evaluate_loss(
    model: Any, tok: Any, pairs: list[TrainPair], loss_on: str = "program", max_length: int = 400
) -> float:
    """Mean per-token loss of ``model`` on ``pairs`` (the tokens training would score)."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for p in pairs:
            ex = encode_pair(tok, p.question, p.program, max_length, loss_on)
            ids = torch.tensor([ex["input_ids"]], device=model.device)
            labels = torch.tensor([ex["labels"]], device=model.device)
            logits = model(input_ids=ids).logits[:, :-1].float()
            tgt = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                tgt.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            total += float(loss)
            count += int((tgt != -100).sum())
    return total / max(count, 1)


def train_student(
    model_spec: str,
    pairs_path: str | Path,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    resume: bool = True,
    device: str | None = None,
) -> TrainResult | None:
    import torch
    from transformers import TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    from ekt.models import load_model

    cfg = config or TrainConfig()
    cfg.validate()
    pairs = read_records(pairs_path, TrainPair)
    if not pairs:
        print(f"train: no training pairs in {pairs_path}: nothing to train")
        return None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    model, tok = load_model(model_spec, device=device)
    model.train()
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    data = [encode_pair(tok, p.question, p.program, cfg.max_length, cfg.loss_on) for p in pairs]
    tokens = sum(sum(1 for x in d["labels"] if x != -100) for d in data)
    cuda = torch.cuda.is_available() and (device or "cuda").startswith("cuda")
    ckpt_dir = out / "checkpoints"
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.batch_size // cfg.per_device_batch_size,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps,
        lr_scheduler_type=cfg.lr_scheduler_type,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        max_grad_norm=cfg.max_grad_norm,
        optim="adamw_torch",
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        save_strategy="steps" if cfg.save_steps > 0 else "epoch",
        save_steps=cfg.save_steps if cfg.save_steps > 0 else 500,
        save_total_limit=1,
        seed=cfg.seed,
        bf16=cuda,
        use_cpu=not cuda,
        remove_unused_columns=False,
        report_to=[],
        dataloader_num_workers=0,
    )
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=PadCollator(tok.pad_token_id),
        callbacks=[_log_callback(out / "train_log.jsonl")],
    )
    last = get_last_checkpoint(str(ckpt_dir)) if resume and ckpt_dir.is_dir() else None
    if last is None and (out / "train_log.jsonl").exists():
        (out / "train_log.jsonl").unlink()
    output = trainer.train(resume_from_checkpoint=last)
    trainer.save_model(str(out))
    tok.save_pretrained(str(out))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = TrainResult(
        out_dir=str(out),
        pairs=len(pairs),
        steps=int(output.global_step),
        final_loss=losses[-1] if losses else None,
        program_tokens=tokens,
        seconds=time.time() - t0,
    )
    write_json_atomic(
        out / "train_summary.json",
        {**asdict(result), "config": asdict(cfg), "train_loss": output.training_loss},
    )
    print(result.line())
    if not math.isfinite(output.training_loss):
        raise EktError(f"training diverged (loss {output.training_loss}); lower --learning-rate")
    return result
