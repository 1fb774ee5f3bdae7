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

``out_dir`` ends up a standard HF checkpoint folder that ``--model`` (and
``from_pretrained``) accepts, with ``train_log.jsonl`` (one line per logging
step) and ``train_summary.json``. Trainer checkpoints live in
``out_dir/checkpoints`` (every ``save_steps`` steps, and at the end); a rerun
with the same model, pairs and settings resumes from the last one, while
checkpoints left by different settings are cleared first.

Weights are loaded in float32 and training runs under autocast where the hardware
has fast low-precision matmuls (``precision: auto``): bf16 on GPUs that support it
(fp16 on older ones), bf16 on CPUs with AMX or AVX512-BF16 units (recent Xeons;
about twice the fp32 speed there), float32 elsewhere. ``precision: fp32`` turns it off.

Efficiency, with the objective unchanged: each micro-batch is packed into one
row with attention kept inside each example (``ekt.training.packing``; ``packing:
false`` pads instead), only the positions that predict a target token go
through the output layer, and the loss is summed over target tokens and
divided by their number in the whole accumulated batch (so every target token
weighs the same, as in transformers' own loss). Options: LoRA adapters
through peft (``lora_r > 0``; merged into the saved model, so the output is
still a plain HF checkpoint) and gradient checkpointing.

``train_student`` is the one training flow for every method: knowledge
distillation (``ekt.training.kd``) plugs a teacher into it, expert iteration
(``ekt.methods.expert_iteration``) calls it once per round.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ekt.data.prompt_format import PromptFormat, load_format
from ekt.errors import EktError
from ekt.models import load_model
from ekt.progress import is_terminal
from ekt.records import TrainPair, read_records, write_json_atomic, write_text_atomic
from ekt.training.config import TrainConfig
from ekt.training.packing import (
    can_pack,
    collate,
    disable_packing,
    enable_packing,
    kept_logits,
    loss_positions,
    supports_logits_to_keep,
)

IGNORE = -100  # label of tokens without loss
CHECKPOINTS = "checkpoints"
_RUN_FILE = "ekt_run.json"  # fingerprint of the run the checkpoints belong to
# Settings that do not change the training trajectory (a resume may change them).
_NOT_FINGERPRINTED = ("logging_steps", "save_steps", "gradient_checkpointing", "packing")


@dataclass
class TrainResult:
    out_dir: str
    pairs: int
    steps: int
    final_loss: float | None
    program_tokens: int  # loss tokens in one pass over the data
    seconds: float
    tokens_trained: int = 0  # non-padding input tokens processed, all epochs
    dropped: int = 0  # examples without a loss token after truncation

    def line(self) -> str:
        loss = "n/a" if self.final_loss is None else f"{self.final_loss:.4f}"
        return (
            f"train: {self.pairs} pairs, {self.steps} steps, final loss {loss}, "
            f"{self.tokens_trained} tokens trained ({self.program_tokens} loss tokens/epoch), "
            f"{self.seconds:.0f}s -> {self.out_dir}"
        )


# -- data -------------------------------------------------------------------


def encode_pair(
    tok: Any,
    question: str,
    program: str,
    max_length: int,
    loss_on: str,
    prompt_format: str | PromptFormat | None = None,
) -> dict:
    """input_ids and labels for one example; prompt tokens get label -100 unless loss_on=all.

    Completion formats (the default ``function``): the prompt and the program body
    are tokenised separately, as at generation time (the model continues the
    tokenised prompt), then joined, ended with EOS and truncated to ``max_length``.
    Chat formats (instruct students): the student's messages and an assistant turn
    holding the program, rendered with the tokenizer's chat template; the loss
    falls on the assistant turn only (its text and the template's end-of-turn tokens).
    """
    if tok.eos_token_id is None:
        raise EktError("the student's tokenizer has no EOS token; cannot mark the program end")
    p_ids, b_ids = pair_ids(tok, load_format(prompt_format), question, program)
    ids = (p_ids + b_ids)[:max_length]
    if loss_on == "all":
        labels = list(ids)
    else:
        labels = ([IGNORE] * len(p_ids) + b_ids)[:max_length]
    return {"input_ids": ids, "labels": labels}


def pair_ids(
    tok: Any, fmt: PromptFormat, question: str, program: str, view: str = "student"
) -> tuple[list[int], list[int]]:
    """(prompt ids, reply ids ending in EOS) of one question/program pair in a format's
    layout, as ``tok`` tokenises it: the student's zero-shot prompt, or with ``view``
    ``"teacher"`` the few-shot one (a live KD teacher reading the same pair)."""
    if fmt.is_chat:
        return _chat_pair(tok, fmt, question, program, view)
    prompt, body = fmt.training_pair(question, program)  # what `ekt export` writes, too
    if view != "student":
        prompt = fmt.teacher(question)
    p_ids = list(tok(prompt, add_special_tokens=True).input_ids)
    b_ids = list(tok(body, add_special_tokens=False).input_ids) + [tok.eos_token_id]
    return p_ids, b_ids


def _chat_pair(
    tok: Any, fmt: PromptFormat, question: str, program: str, view: str = "student"
) -> tuple[list[int], list[int]]:
    """(prompt ids, assistant-turn ids) of one pair in a chat format's layout."""
    from ekt.generation.sampler import chat_ids

    messages, reply = fmt.training_pair(question, program)  # what `ekt export` writes, too
    if view != "student":
        messages = fmt.teacher(question)
    assert isinstance(messages, list)
    p_ids = chat_ids(tok, messages)  # exactly what the sampler feeds at evaluation
    prompt_text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    turn = {"role": "assistant", "content": reply}
    full = tok.apply_chat_template([*messages, turn], tokenize=False)
    if full.startswith(prompt_text):
        reply = full[len(prompt_text) :]
        b_ids = list(tok(reply, add_special_tokens=False).input_ids)
    else:  # a template that renders earlier turns differently once a reply follows
        b_ids = list(tok(turn["content"], add_special_tokens=False).input_ids)
    if tok.eos_token_id not in b_ids:
        b_ids.append(tok.eos_token_id)
    return p_ids, b_ids


def build_examples(
    tok: Any,
    pairs: Sequence[TrainPair],
    max_length: int,
    loss_on: str,
    prompt_format: str | PromptFormat | None = None,
) -> tuple[list[dict], int]:
    """Encoded examples, and how many were dropped for having no loss token left."""
    examples = []
    for p in pairs:
        ex = encode_pair(tok, p.question, p.program, max_length, loss_on, prompt_format)
        if any(x != IGNORE for x in ex["labels"]):
            examples.append(ex)
    return examples, len(pairs) - len(examples)


# -- optimiser --------------------------------------------------------------


def decay_parameter_names(model: Any) -> list[str]:
    """Parameters that get weight decay: matrices, not biases or norm scales (any norm class).

    A parameter is excluded when it is 1-D, is named ``*bias``, or belongs to a
    module whose class name contains "norm" (LayerNorm, LlamaRMSNorm, Gemma3RMSNorm...).
    """
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


class Collator:
    """Packs a micro-batch into one row (or pads it, ``packed=False``) and counts its tokens.

    ``n_targets`` (tokens with a loss) and ``n_tokens`` (input tokens) are read
    by the trainer before the forward pass; see ``EktTrainer.get_batch_samples``.
    """

    def __init__(self, pad_id: int, packed: bool):
        self.pad_id = pad_id
        self.packed = packed

    def __call__(self, feats: list[dict]) -> dict:
        batch, _ = collate(feats, self.packed, self.pad_id)
        batch["n_targets"] = int((batch["labels"][:, 1:] != IGNORE).sum())
        batch["n_tokens"] = sum(len(f["input_ids"]) for f in feats)
        return batch


@functools.cache
def _trainer_class() -> Any:
    import torch
    from transformers import Trainer

    class EktTrainer(Trainer):
        """``Trainer`` with ekt's weight-decay groups and a loss over the target positions only.

        The loss of a micro-batch is the summed cross-entropy of its target
        tokens divided by the number of target tokens in the whole accumulated
        batch (all processes), so it is already scaled for accumulation.
        """

        loss_is_scaled_for_ga = True
        ekt_logits_to_keep = False  # the model takes a boolean logits_to_keep (set on creation)

        def get_decay_parameter_names(self, model: Any) -> list[str]:
            return decay_parameter_names(model)

        def get_batch_samples(
            self, epoch_iterator: Any, num_batches: int, device: Any
        ) -> tuple[list, Any]:
            """The micro-batches of one optimizer step and their target-token count."""
            batches = []
            for _ in range(num_batches):
                try:
                    batches.append(next(epoch_iterator))
                except StopIteration:
                    break
            counts = torch.tensor(
                [[b["n_targets"], b.get("n_distill", 0), b["n_tokens"]] for b in batches]
                or [[0, 0, 0]],
                dtype=torch.long,
            ).sum(0)
            if self.args.world_size > 1:
                counts = self.accelerator.gather(counts.to(device)).view(-1, 3).sum(0)
            self.state.num_input_tokens_seen += int(counts[2])
            self.ekt_distill_items = int(counts[1])
            return batches, int(counts[0])

        def _scale(self, n_items: int | None, local: int) -> float:
            """1 / (items in the accumulated batch), times the processes DDP averages over."""
            n = n_items if n_items else local
            return max(self.args.world_size, 1) / max(n, 1)

        def compute_loss(
            self,
            model: Any,
            inputs: dict,
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            keep, targets = loss_positions(inputs["labels"])
            logits = kept_logits(model, inputs, keep, self.ekt_logits_to_keep)
            ce = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
            loss = ce * self._scale(num_items_in_batch, targets.numel())
            return (loss, {"logits": logits}) if return_outputs else loss

    return EktTrainer


# -- logging ----------------------------------------------------------------


def log_line(step: int, max_steps: int, epoch: float | None, logs: dict) -> str:
    """One readable line for a Trainer log entry (pure): ``train: step 10/100 (epoch 0.53):
    loss 1.916, learning_rate 9.0e-05, grad_norm 0.52``. Values that are numbers (or the
    strings of numbers some transformers versions log) are formatted; others kept as text."""
    parts = []
    for key, value in logs.items():
        if key == "epoch" and epoch is not None:
            continue  # in the line's head
        try:
            number = float(value)
        except (TypeError, ValueError):
            parts.append(f"{key} {value}")
            continue
        if key in ("learning_rate", "lr") or (number and abs(number) < 1e-3):
            parts.append(f"{key} {number:.1e}")
        elif float(number).is_integer() and abs(number) >= 1:
            parts.append(f"{key} {int(number)}")
        else:
            parts.append(f"{key} {number:.4g}")
    at = f"step {step}/{max_steps}" if max_steps else f"step {step}"
    if epoch is not None:
        at += f" (epoch {epoch:.2f})"
    return f"train: {at}: {', '.join(parts)}"


def console_output(trainer: Any, keys: tuple[str, ...] | None = None) -> None:
    """Replace ``trainer``'s console output (a tqdm bar whose log lines are raw dicts, or
    printed dicts without one) with ekt's: one readable line per logging step (``keys``: the
    log entries shown, None: all), and a step bar on a terminal or a progress line every few
    seconds in a log file (ekt.progress). The JSONL training log keeps every entry."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for raw in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(raw)
    trainer.add_callback(_console_callback(keys))
    if not is_terminal(sys.stderr):  # transformers' own bars (saving shards) in a log file
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _console_callback(keys: tuple[str, ...] | None = None) -> Any:
    """The callback of :func:`console_output`."""
    from transformers import TrainerCallback

    from ekt.progress import progress

    class ConsoleLog(TrainerCallback):
        bar: Any = None

        def on_train_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            if state.is_world_process_zero:
                self.bar = progress(state.max_steps, "train", "step", initial=state.global_step)

        def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            if self.bar is not None:
                self.bar.update(1)

        def on_log(self, args, state, control, logs=None, **kw):  # type: ignore[no-untyped-def]
            shown = {k: v for k, v in (logs or {}).items() if keys is None or k in keys}
            if shown and state.is_world_process_zero:
                line = log_line(state.global_step, state.max_steps, state.epoch, shown)
                (self.bar.write if self.bar is not None else print)(line)

        def on_train_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return ConsoleLog()


def _log_callback(path: Path) -> Any:
    from transformers import TrainerCallback

    class JsonlLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):  # type: ignore[no-untyped-def]
            if logs and state.is_world_process_zero:
                with open(path, "a", encoding="utf-8") as fh:
                    row = {"step": state.global_step, "epoch": state.epoch, **logs}
                    fh.write(json.dumps(row) + "\n")

    return JsonlLog()


def _trim_log(path: Path, max_step: int) -> None:
    """Drop log lines past ``max_step`` (written after the checkpoint we resume from)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= max_step:
                keep.append(line)
        except (json.JSONDecodeError, AttributeError):
            continue
    write_text_atomic(path, "".join(x + "\n" for x in keep))


# -- the stage --------------------------------------------------------------


def local_device(device: str | None) -> str | None:
    """The device of this process: under a multi-process launch (accelerate, torchrun) on
    GPUs, ``cuda:LOCAL_RANK`` for a default or bare ``cuda`` device, so every rank loads
    its models (the student, a KD teacher) straight onto its own GPU, not all onto GPU 0."""
    local = os.environ.get("LOCAL_RANK")
    if local is None or int(os.environ.get("WORLD_SIZE", "1")) <= 1 or device not in (None, "cuda"):
        return device
    import torch

    return f"cuda:{int(local)}" if torch.cuda.is_available() else device


def _load_student(model_spec: str, device: str | None) -> tuple[Any, Any]:
    """(float32 model, tokenizer with a pad token)."""
    return load_model(model_spec, device=device, dtype="float32")


def _fingerprint(model_spec: str, pairs_path: Path, cfg: TrainConfig) -> dict:
    settings = {k: v for k, v in cfg.settings().items() if k not in _NOT_FINGERPRINTED}
    digest = hashlib.sha256(pairs_path.read_bytes()).hexdigest()
    return {"model": model_spec, "pairs_sha256": digest, "config": settings}


def _prepare_checkpoints(ckpt_dir: Path, run: dict, resume: bool) -> str | None:
    """The checkpoint to resume from, clearing checkpoints of another run (main process)."""
    main = int(os.environ.get("RANK", "0")) == 0
    run_file = ckpt_dir / _RUN_FILE
    if ckpt_dir.is_dir():
        try:
            same = json.loads(run_file.read_text(encoding="utf-8")) == run
        except (OSError, json.JSONDecodeError):
            same = False
        if not resume or not same:
            if main:
                why = "--no-resume" if not resume else "model, pairs or settings changed"
                print(f"train: clearing old checkpoints in {ckpt_dir} ({why})")
                shutil.rmtree(ckpt_dir, ignore_errors=True)
        else:
            last = _last_complete_checkpoint(ckpt_dir, main)
            if last is not None:
                return last
    if main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_file, run)
    return None


def _last_complete_checkpoint(ckpt_dir: Path, main: bool) -> str | None:
    """The newest checkpoint that was saved whole; newer ones cut short by a crash are removed.

    ``Trainer`` writes a checkpoint's files in place and ``trainer_state.json`` last,
    so a checkpoint whose state file is missing or torn was being saved when the
    process died (``get_last_checkpoint`` would pick it and resuming would fail).
    """
    found = []
    for d in ckpt_dir.glob("checkpoint-*"):
        step = d.name.rsplit("-", 1)[-1]
        if d.is_dir() and step.isdigit():
            found.append((int(step), d))
    for step, d in sorted(found, reverse=True):
        try:
            state = json.loads((d / "trainer_state.json").read_text(encoding="utf-8"))
            if state.get("global_step") == step:
                return str(d)
        except (OSError, ValueError, AttributeError):
            pass
        if main:
            print(f"train: removing {d}: cut short while being saved")
            shutil.rmtree(d, ignore_errors=True)
    return None



@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (Intel AMX or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def _mixed_precision(device: str | None, precision: str = "auto") -> tuple[bool, bool, bool]:
    """(use_cpu, bf16, fp16) for the device training will run on."""
    import torch

    cuda = torch.cuda.is_available() and (device or "cuda").startswith("cuda")
    if precision == "fp32":
        return not cuda, False, False
    if precision in ("bf16", "fp16"):
        if precision == "fp16" and not cuda:
            raise EktError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
        return not cuda, precision == "bf16", precision == "fp16"
    if not cuda:
        return True, cpu_has_fast_bf16(), False
    bf16 = torch.cuda.is_bf16_supported()
    return False, bf16, not bf16


def _apply_lora(model: Any, cfg: TrainConfig) -> Any:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise EktError("--lora-r needs peft: pip install 'ekt[lora]'") from None
    targets: Any = cfg.lora_target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as e:
        raise EktError(f"--lora-target-modules: {e}") from None


def build_trainer(
    model: Any,
    tok: Any,
    data: list[dict],
    cfg: TrainConfig,
    out_dir: str | Path,
    device: str | None = None,
    callbacks: Sequence[Any] = (),
    distill: Any = None,
    save: bool = True,
) -> Any:
    """The configured ``Trainer`` for ``model`` on encoded examples ``data``.

    Switches the model to packed attention when ``cfg.packing`` and the model
    allow it (``trainer.ekt_packed``; ``train_student`` switches it back), and
    wraps it in LoRA adapters when ``cfg.lora_r > 0`` (``trainer.model``).
    ``distill`` is a teacher plug-in such as ``ekt.training.kd.Distiller``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    accumulation = cfg.accumulation_steps(world_size)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad_id
    packed = cfg.packing and can_pack(model)
    if cfg.packing and not packed:
        print(f"train: {type(model).__name__} cannot be packed; batches are padded instead")
    restore = enable_packing(model) if packed else None
    if cfg.gradient_checkpointing:
        model.config.use_cache = False
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if cfg.lora_r > 0:
        model = _apply_lora(model, cfg)
    model.train()
    use_cpu, bf16, fp16 = _mixed_precision(device, cfg.precision)
    args = cfg.training_arguments(
        output_dir=str(Path(out_dir)),
        gradient_accumulation_steps=accumulation,
        logging_first_step=True,
        # "steps" also saves at the last step; save_steps=0 means only there.
        save_strategy="steps" if save else "no",
        save_steps=cfg.save_steps if cfg.save_steps > 0 else 10**9,
        save_total_limit=1,
        bf16=bf16,
        fp16=fp16,
        use_cpu=use_cpu,
        remove_unused_columns=False,
        include_num_input_tokens_seen="no",  # counted exactly by EktTrainer.get_batch_samples
        dataloader_num_workers=0,
    )
    if distill is not None:
        trainer_cls, collator = distill.trainer_class(), distill.collator(pad_id, packed)
    else:
        trainer_cls, collator = _trainer_class(), Collator(pad_id, packed)
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=collator,
        processing_class=tok,
        callbacks=list(callbacks),
    )
    console_output(trainer)
    trainer.ekt_logits_to_keep = supports_logits_to_keep(model)
    trainer.ekt_packed = packed
    trainer.ekt_restore_attention = restore
    if distill is not None:
        distill.attach(trainer)
    return trainer


def train_student(
    model_spec: str,
    pairs_path: str | Path,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    device: str | None = None,
    distill: Any = None,
    prompt_format: str | PromptFormat | None = None,
) -> TrainResult | None:
    """Fine-tune ``model_spec`` on the pairs in ``pairs_path``; ``out_dir`` becomes the student.

    Resumes from the last checkpoint of the same run (model, pairs and settings) in ``out_dir``,
    else starts afresh. Returns None (and says so) when the file holds no pairs. ``device`` "cpu"
    forces CPU training; by default a GPU is used when there is one.
    ``distill`` (``ekt.training.kd.Distiller``) adds a live teacher to the loss.
    ``prompt_format``: the layout the student learns (and is evaluated in); a chat
    format trains an instruct student on its own chat template.
    """
    job = _prepare_training(model_spec, Path(pairs_path), Path(out_dir), config or TrainConfig(),
                            device, distill, prompt_format)  # fmt: skip
    if job is None:
        return None
    fit = _fit(job)
    result = _write_student(job, fit)
    if not math.isfinite(fit.output.training_loss):
        raise EktError(
            f"training diverged (loss {fit.output.training_loss}); lower --learning-rate"
        )
    return result


@dataclass
class _TrainJob:
    """A training run, prepared: its inputs, its folder and the checkpoint it resumes."""

    model_spec: str
    pairs_path: Path
    pairs: list[TrainPair]
    out: Path
    cfg: TrainConfig
    device: str | None
    distill: Any
    prompt_format: str | PromptFormat | None
    fmt: PromptFormat
    world_size: int
    accumulation: int
    last: str | None  # the checkpoint resumed from
    t0: float

    @property
    def ckpt_dir(self) -> Path:
        return self.out / CHECKPOINTS

    @property
    def log_path(self) -> Path:
        return self.out / "train_log.jsonl"


@dataclass
class _Fit:
    """What fitting gave: the trainer (holding the model), its output and the data's size."""

    trainer: Any
    tok: Any
    output: Any
    dropped: int  # examples with no program token within max_length
    program_tokens: int  # tokens the loss is on


def _prepare_training(
    model_spec: str, pairs_path: Path, out: Path, cfg: TrainConfig, device: str | None,
    distill: Any, prompt_format: str | PromptFormat | None,
) -> _TrainJob | None:
    """Read the pairs (None when there are none), check the settings, and find the
    checkpoint to resume (one of this very run, by fingerprint) or start afresh."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    accumulation = cfg.accumulation_steps(world_size)
    pairs = read_records(pairs_path, TrainPair, allow_torn_tail=False)  # a whole file: --pairs
    if not pairs:
        print(f"train: no training pairs in {pairs_path}: nothing to train")
        return None
    if cfg.lora_r > 0:
        try:
            import peft  # noqa: F401
        except ImportError:
            raise EktError("--lora-r needs peft: pip install 'ekt[lora]'") from None
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    run = _fingerprint(model_spec, pairs_path, cfg)
    fmt = load_format(prompt_format)
    run["prompt_format"] = fmt.label
    if distill is not None:
        run["distill"] = distill.fingerprint()
    job = _TrainJob(model_spec, pairs_path, pairs, out, cfg, device, distill, prompt_format, fmt,
                    world_size, accumulation, None, t0)  # fmt: skip
    job.last = _prepare_checkpoints(job.ckpt_dir, run, resume=True)
    if job.last is None:
        job.log_path.unlink(missing_ok=True)
    else:
        print(f"train: resuming from {job.last}")
        _trim_log(job.log_path, int(Path(job.last).name.rsplit("-", 1)[-1]))
    return job


def _fit(job: _TrainJob) -> _Fit:
    """Load the student, tokenize the pairs into examples and train (from the checkpoint)."""
    cfg, distill = job.cfg, job.distill
    model, tok = _load_student(job.model_spec, local_device(job.device))
    if distill is not None:
        data, dropped = distill.build_examples(tok, job.pairs, cfg.max_length, cfg.loss_on,
                                               job.fmt)  # fmt: skip
    else:
        data, dropped = build_examples(tok, job.pairs, cfg.max_length, cfg.loss_on,
                                       job.prompt_format)  # fmt: skip
    if dropped:
        print(
            f"train: {dropped} of {len(job.pairs)} examples have no program token within "
            f"--max-length {cfg.max_length} and are skipped"
        )
    if not data:
        raise EktError(f"no example in {job.pairs_path} fits --max-length {cfg.max_length}")
    loss_tokens = sum(sum(1 for x in d["labels"] if x != IGNORE) for d in data)
    trainer = build_trainer(model, tok, data, cfg, job.ckpt_dir, job.device,
                            [_log_callback(job.log_path)], distill=distill)  # fmt: skip
    output = trainer.train(resume_from_checkpoint=job.last)
    disable_packing(trainer.model, trainer.ekt_restore_attention)
    if cfg.gradient_checkpointing:
        model.config.use_cache = True
    return _Fit(trainer, tok, output, dropped, loss_tokens)


def _write_student(job: _TrainJob, fit: _Fit) -> TrainResult:
    """Save the student (LoRA merged into it) in ``out``, and on the main process
    train_summary.json; the result."""
    trainer, out = fit.trainer, str(job.out)
    if job.cfg.lora_r > 0:
        merged = trainer.model.merge_and_unload()
        if trainer.is_world_process_zero():
            merged.save_pretrained(out)
            fit.tok.save_pretrained(out)
    else:
        trainer.save_model(out)  # model, config, generation config and tokenizer
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = TrainResult(
        out_dir=out,
        pairs=len(job.pairs),
        steps=int(fit.output.global_step),
        final_loss=losses[-1] if losses else None,
        program_tokens=fit.program_tokens,
        seconds=time.time() - job.t0,
        tokens_trained=int(trainer.state.num_input_tokens_seen),
        dropped=fit.dropped,
    )
    if trainer.is_world_process_zero():
        write_json_atomic(job.out / "train_summary.json", _summary(job, fit, result))
        print(result.line())
    return result


def _summary(job: _TrainJob, fit: _Fit, result: TrainResult) -> dict[str, Any]:
    """train_summary.json: the result, and how it was trained."""
    cfg, state = job.cfg, fit.trainer.state
    _, bf16, fp16 = _mixed_precision(job.device, cfg.precision)
    summary = {
        **asdict(result),
        "model": job.model_spec,
        "pairs_file": str(job.pairs_path),
        "epochs_done": state.epoch,
        "train_loss": fit.output.training_loss,
        "effective_batch": cfg.per_device_train_batch_size * job.accumulation * job.world_size,
        "gradient_accumulation_steps": job.accumulation,
        "precision": "bf16" if bf16 else "fp16" if fp16 else "fp32",
        "packed": fit.trainer.ekt_packed,
        "resumed_from": job.last,
        "config": cfg.settings(),
        "prompt_format": job.fmt.label,  # the layout it learnt (``ekt export`` writes it)
    }
    if job.distill is not None:
        summary["distill"] = job.distill.summary()
    return summary
