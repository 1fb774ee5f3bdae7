"""``TrainConfig``: the ``train:`` block of a run config and the ``ekt train`` flags; ``KDConfig``:
the ``kd:`` block (``--method kd``).

Both are plain dataclasses that import nothing heavy, so building the ``ekt train`` parser
(``ekt train --help``) loads neither torch nor transformers. ``TrainConfig`` declares the
``transformers.TrainingArguments`` fields ekt exposes, each with TrainingArguments' own name,
type and default, except the defaults named in ``EKT_DEFAULTS`` (the published recipe); then
ekt's own settings. ``training_arguments`` builds the real ``TrainingArguments`` from them
when training starts. ``tests/test_train_config_static.py`` compares the declaration with the
installed ``TrainingArguments`` (names, types, defaults), so a transformers upgrade that
renames a field or changes a default fails a test instead of drifting silently.

To expose another ``TrainingArguments`` field, declare it here with its type and default and
an attribute docstring (its help text); the CLI and the YAML reader are generated from the
fields (``ekt.cli``).
"""

from __future__ import annotations

import difflib
import enum
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

from ekt.errors import EktError

LossOn = Literal["program", "all"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
LOSS_ON, PRECISIONS = get_args(LossOn), get_args(Precision)  # the Literals' values
# transformers.trainer_utils.SchedulerType's values (checked against it by a test)
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
              "constant_with_warmup", "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr",
              "cosine_warmup_with_min_lr", "warmup_stable_decay", "greedy")  # fmt: skip
# the TrainingArguments fields whose default ekt changes (the published recipe)
EKT_DEFAULTS = ("learning_rate", "weight_decay", "warmup_steps", "num_train_epochs", "seed",
                "logging_steps", "save_steps", "optim")  # fmt: skip
KD_LOSSES = ("auto", "kl", "uld")
TEACHER_PROMPTS = ("student", "few-shot")


@dataclass
class TrainConfig:
    """Training settings: the ``transformers.TrainingArguments`` fields ekt exposes, with
    ekt's defaults for the published recipe (``EKT_DEFAULTS``), and ekt's additions.

    Each field is a key of a run config's ``train:`` block and an ``ekt train`` flag
    (``--learning_rate``, also spelt ``--learning-rate``). ``build_trainer`` adds what ekt
    derives (output folder, gradient accumulation from ``batch_size``, precision flags from
    ``precision``, save strategy) when it calls ``training_arguments``.
    """

    # transformers.TrainingArguments fields
    output_dir: str | None = None
    """Trainer checkpoints (set by ekt: ``<out>/checkpoints``)"""
    per_device_train_batch_size: int = 8
    """examples per device per forward pass (batch_size / this = accumulation steps)"""
    num_train_epochs: float = 1.0
    """passes over the training pairs (``max_steps > 0`` overrides it)"""
    max_steps: int = -1
    """> 0: stop after this many optimizer steps (overrides num_train_epochs)"""
    learning_rate: float = 1e-4
    """peak learning rate of AdamW"""
    lr_scheduler_type: str = "linear"
    """learning-rate schedule after warm-up: linear, cosine, constant, ... (transformers'
    SchedulerType)"""
    warmup_steps: float = 100
    """linear warm-up steps"""
    optim: str = "adamw_torch"
    """optimizer (see transformers.training_args.OptimizerNames)"""
    weight_decay: float = 0.1
    """weight decay, applied to every matrix but not to norms or biases"""
    adam_beta1: float = 0.9
    """AdamW's first-moment decay"""
    adam_beta2: float = 0.999
    """AdamW's second-moment decay"""
    adam_epsilon: float = 1e-8
    """AdamW's denominator epsilon"""
    gradient_accumulation_steps: int = 1
    """derived from batch_size; leave at 1"""
    max_grad_norm: float = 1.0
    """gradient clipping norm (0: no clipping)"""
    gradient_checkpointing: bool | None = None
    """recompute activations in the backward pass: less memory, slower"""
    logging_steps: float = 10
    """a line in train_log.jsonl every this many optimizer steps"""
    save_steps: float = 0
    """a checkpoint every this many steps (0: at the end only)"""
    report_to: str | list[str] | None = "none"
    """loggers the Trainer reports to (none: only ekt's train_log.jsonl)"""
    seed: int = 0
    """seed of the initialisation of new weights, the data order and dropout"""
    data_seed: int | None = None
    """seed of the data order only (None: seed)"""
    torch_compile: bool = False
    """compile the model with torch.compile"""
    # ekt's own settings
    batch_size: int = 32
    """effective batch: per_device_train_batch_size x accumulation steps (x processes)"""
    max_length: int = 400
    """tokens per example at most (prompt + program); longer ones are truncated"""
    loss_on: LossOn = "program"
    """program: loss on the program tokens only; all: on the whole sequence (published variant)"""
    packing: bool = True
    """several examples per row, attention kept within each example (false: pad)"""
    lora_r: int = 0
    """> 0: train rank-r LoRA adapters (needs peft), merged into the saved model"""
    lora_alpha: int = 16
    """LoRA scaling numerator"""
    lora_dropout: float = 0.05
    """dropout on the LoRA input"""
    lora_target_modules: str = "all-linear"
    """modules given adapters: all-linear, or comma-separated names (q_proj,v_proj)"""
    precision: Precision = "auto"
    """autocast precision (weights stay fp32); auto: bf16/fp16 where the hardware is fast"""
    trainer: dict[str, Any] = field(default_factory=dict)
    """any other TrainingArguments field by name, passed as given and checked when training
    starts, e.g. {fsdp: full_shard, ddp_timeout: 3600} (fields declared above are set there)"""

    def __post_init__(self) -> None:
        self.validate()
        if self.lr_scheduler_type not in SCHEDULERS:
            raise EktError(
                f"--lr-scheduler-type {self.lr_scheduler_type!r} is not one of: "
                f"{', '.join(SCHEDULERS)}"
            )

    def validate(self, world_size: int = 1) -> None:
        """Raise EktError for settings that cannot work (cheap: imports nothing)."""
        if self.precision not in PRECISIONS:
            raise EktError(
                f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if self.loss_on not in LOSS_ON:
            raise EktError(f"--loss-on must be program or all, got {self.loss_on!r}")
        per_device = self.per_device_train_batch_size
        if per_device < 1 or self.batch_size < 1:
            raise EktError("--batch-size and --per-device-train-batch-size must be >= 1")
        per_step = per_device * world_size
        if self.batch_size % per_step:
            procs = f" x {world_size} processes" if world_size > 1 else ""
            raise EktError(
                f"--batch-size {self.batch_size} is not a multiple of "
                f"--per-device-train-batch-size {per_device}{procs}"
            )
        if self.gradient_accumulation_steps != 1:
            raise EktError(
                "--gradient-accumulation-steps is derived from --batch-size (the effective "
                "batch); set --batch-size instead"
            )
        if self.learning_rate <= 0:
            raise EktError(f"--learning-rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise EktError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0:
            raise EktError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if self.max_grad_norm < 0:
            raise EktError(f"--max-grad-norm must be >= 0, got {self.max_grad_norm}")
        if self.max_length < 16:
            raise EktError(f"--max-length must be >= 16, got {self.max_length}")
        if self.num_train_epochs <= 0 and self.max_steps <= 0:
            raise EktError("set --num-train-epochs > 0 or --max-steps > 0")
        if self.logging_steps <= 0:
            raise EktError(f"--logging-steps must be >= 1, got {self.logging_steps}")
        if self.save_steps < 0:
            raise EktError(f"--save-steps must be >= 0, got {self.save_steps}")
        if self.lora_r < 0:
            raise EktError(f"--lora-r must be >= 0 (0: full fine-tuning), got {self.lora_r}")
        if not 0 <= self.lora_dropout < 1:
            raise EktError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")

    def accumulation_steps(self, world_size: int = 1) -> int:
        """Gradient accumulation giving an effective batch of ``batch_size``."""
        self.validate(world_size)
        return self.batch_size // (self.per_device_train_batch_size * world_size)

    def training_arguments(self, **overrides: Any) -> Any:
        """A ``transformers.TrainingArguments`` (imported now): the fields it shares with these
        settings, and ``overrides`` (what ekt derives); its own checks as an EktError."""
        from transformers import TrainingArguments

        shared = {f.name for f in fields(TrainingArguments) if f.init}
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name in shared}
        self._check_trainer(shared, set(own) | set(overrides))
        try:
            return TrainingArguments(**{**own, **self.trainer, **overrides})
        except ValueError as e:  # TrainingArguments' own checks (optimizer names, ...)
            raise EktError(f"train: {e}") from None

    def _check_trainer(self, known: set[str], taken: set[str]) -> None:
        """``trainer`` names only TrainingArguments fields that ekt neither declares nor
        derives: a typo or a second home for a setting is one error line."""
        for key in self.trainer:
            if key in taken or key in {f.name for f in fields(self)}:
                raise EktError(
                    f"train.trainer.{key}: ekt sets {key} itself"
                    + (f"; use train.{key}" if key in {f.name for f in fields(self)} else "")
                )
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise EktError(f"train.trainer.{key} is not a TrainingArguments field{hint}")

    def settings(self) -> dict[str, Any]:
        """The fields as plain JSON/YAML values (enums by value)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass
class KDConfig:
    """``kd:`` block of a run config; ``ekt train --method kd --kd-...`` flags."""

    alpha: float = 0.5  # weight of cross-entropy; 1 - alpha weighs the distillation term
    temperature: float = 1.0
    loss: str = "auto"  # auto | kl | uld
    teacher_prompt: str = "student"  # student | few-shot
    teacher_device: str | None = None  # default: the run's device
    teacher_dtype: str | None = None  # default: bfloat16 on GPUs, float32 on CPU

    def validate(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise EktError(f"kd.alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise EktError(f"kd.temperature must be > 0, got {self.temperature}")
        if self.loss not in KD_LOSSES:
            raise EktError(f"kd.loss must be one of {', '.join(KD_LOSSES)}, got {self.loss!r}")
        if self.teacher_prompt not in TEACHER_PROMPTS:
            raise EktError(
                f"kd.teacher_prompt must be student or few-shot, got {self.teacher_prompt!r}"
            )
