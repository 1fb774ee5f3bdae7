"""``TrainConfig``: the ``train:`` block of a run config and the ``ekt train`` flags.

It is ``transformers.TrainingArguments`` itself (every field of it is a key), with ekt's
defaults for the published recipe and ekt's own additions. To add a setting, add a typed
field with a default and an attribute docstring (its help text); the CLI and the YAML
reader are generated from the fields (``ekt.cli``).
"""

from __future__ import annotations

import enum
from dataclasses import InitVar, dataclass, fields
from typing import Any, Literal

from transformers import TrainingArguments
from transformers.trainer_utils import SchedulerType

from ekt.errors import EktError

LOSS_ON = ("program", "all")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig(TrainingArguments):
    """Training settings: ``transformers.TrainingArguments`` with ekt's defaults and additions.

    Every ``TrainingArguments`` field is a key of a run config's ``train:`` block and an
    ``ekt train`` flag (``--learning_rate``, also spelt ``--learning-rate``). ekt overrides the
    defaults below (the published recipe) and adds the fields after them. ``build_trainer``
    sets what ekt derives (output folder, gradient accumulation from ``batch_size``, precision
    flags from ``precision``, save strategy) with ``dataclasses.replace``.
    """

    output_dir: str | None = None
    """Trainer checkpoints (set by ekt: ``<out>/checkpoints``)"""
    learning_rate: float = 1e-4
    """peak learning rate of AdamW"""
    weight_decay: float = 0.1
    """weight decay, applied to every matrix but not to norms or biases"""
    warmup_steps: int = 100
    """linear warm-up steps"""
    num_train_epochs: float = 1.0
    """passes over the training pairs (``max_steps > 0`` overrides it)"""
    seed: int = 0
    """seed of the initialisation of new weights, the data order and dropout"""
    logging_steps: float = 10
    """a line in train_log.jsonl every this many optimizer steps"""
    save_steps: float = 0
    """a checkpoint every this many steps (0: at the end only)"""
    optim: str = "adamw_torch"
    """optimizer (see transformers.training_args.OptimizerNames)"""
    report_to: str | list[str] | None = "none"
    """loggers the Trainer reports to (none: only ekt's train_log.jsonl)"""
    # ekt's own settings
    batch_size: int = 32
    """effective batch: per_device_train_batch_size x accumulation steps (x processes)"""
    max_length: int = 400
    """tokens per example at most (prompt + program); longer ones are truncated"""
    loss_on: Literal["program", "all"] = "program"
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
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """autocast precision (weights stay fp32); auto: bf16/fp16 where the hardware is fast"""
    # ekt's earlier names of two TrainingArguments fields (still accepted)
    epochs: InitVar[float | None] = None
    """old name of num_train_epochs"""
    per_device_batch_size: InitVar[int | None] = None
    """old name of per_device_train_batch_size"""

    def __post_init__(self, epochs: float | None, per_device_batch_size: int | None) -> None:
        if epochs is not None:
            self.num_train_epochs = epochs
        if per_device_batch_size is not None:
            self.per_device_train_batch_size = per_device_batch_size
        self.validate()
        try:
            SchedulerType(self.lr_scheduler_type)
        except ValueError:
            choices = ", ".join(s.value for s in SchedulerType)
            raise EktError(
                f"--lr-scheduler-type {self.lr_scheduler_type!r} is not one of: {choices}"
            ) from None
        try:
            super().__post_init__()
        except ValueError as e:  # TrainingArguments' own checks (scheduler names, ...)
            raise EktError(f"train: {e}") from None

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

    def training_arguments(self, **overrides: Any) -> TrainingArguments:
        """A plain ``TrainingArguments``: these settings and ``overrides`` (what ekt derives)."""
        own = {f.name: getattr(self, f.name) for f in fields(TrainingArguments) if f.init}
        return TrainingArguments(**{**own, **overrides})

    def settings(self) -> dict[str, Any]:
        """The fields as plain JSON/YAML values (``TrainingArguments.to_dict``: enums by value)."""
        return {k: _plain(v) for k, v in self.to_dict().items()}


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
