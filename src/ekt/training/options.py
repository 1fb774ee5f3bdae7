"""``ekt train`` options. Their settings (``TrainConfig``, ``KDConfig``) are plain dataclasses,
so building this parser imports neither torch nor transformers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ekt.options import DeviceOption, PromptFormatOption, required
from ekt.training.config import KDConfig, TrainConfig


@dataclass
class TrainOptions(PromptFormatOption, DeviceOption):
    """`ekt train` options."""

    student: str = required(default="")
    """student model spec (required)"""
    pairs: str = required(default="")
    """train_pairs.jsonl from `ekt filter` (required)"""
    out: str = required(default="")
    """output folder: an HF checkpoint (required)"""
    method: Literal["sft", "kd"] = "sft"
    """sft: fine-tune on the pairs; kd: also distil --teacher's distribution"""
    teacher: str | None = None
    """model spec of the live teacher (--method kd)"""
    train: TrainConfig = field(default_factory=TrainConfig)
    """fine-tuning (the transformers.TrainingArguments fields ekt exposes, ekt's defaults)"""
    kd: KDConfig = field(default_factory=KDConfig)
    """--method kd: the distillation term"""
