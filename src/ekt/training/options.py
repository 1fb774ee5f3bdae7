"""``ekt train`` options. Their settings (``TrainConfig``, ``KDConfig``) are plain dataclasses,
so building this parser imports neither torch nor transformers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ekt.training.config import KDConfig, TrainConfig


@dataclass
class TrainOptions:
    """`ekt train` options."""

    student: str = ""
    """student model spec (required; also --model)"""
    pairs: str = ""
    """train_pairs.jsonl from `ekt filter` (required)"""
    out: str = ""
    """output folder: an HF checkpoint (required)"""
    method: Literal["sft", "kd"] = "sft"
    """sft: fine-tune on the pairs; kd: also distil --teacher's distribution"""
    teacher: str | None = None
    """model spec of the live teacher (--method kd)"""
    device: str | None = None
    """cpu | cuda | cuda:N (None: cuda if present)"""
    prompt_format: str = "function"
    """prompt layout: function (default), chat, tinygsm, or a YAML file (see ekt/data/formats/)"""
    train: TrainConfig = field(default_factory=TrainConfig)
    """fine-tuning (the transformers.TrainingArguments fields ekt exposes, ekt's defaults)"""
    kd: KDConfig = field(default_factory=KDConfig)
    """--method kd: the distillation term"""
