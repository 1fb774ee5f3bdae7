"""``TrainConfig`` declares the ``transformers.TrainingArguments`` fields ekt exposes statically
(so ``ekt train --help`` imports no transformers). Here the declaration is compared with the
installed ``TrainingArguments``: every declared field exists there with the same kind of type
and, unless ekt names it in ``EKT_DEFAULTS``, the same default; the scheduler names are
transformers' own. A transformers upgrade that renames a field, retypes it or moves a default
fails here instead of drifting silently."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing

import pytest

transformers = pytest.importorskip("transformers")

from ekt.errors import EktError  # noqa: E402
from ekt.training.config import EKT_DEFAULTS, SCHEDULERS, TrainConfig  # noqa: E402


def _kinds(tp: typing.Any) -> frozenset[str]:
    """The plain kinds a type admits: an enum counts as str (TrainingArguments takes either),
    a Literal as the types of its values, list[X] as list, dict[...] as dict."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return frozenset().union(*(_kinds(a) for a in typing.get_args(tp)))
    if origin is typing.Literal:
        return frozenset(type(v).__name__ for v in typing.get_args(tp))
    if origin is not None:
        return frozenset({getattr(origin, "__name__", str(origin))})
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return frozenset({"str"})
    return frozenset({getattr(tp, "__name__", str(tp))})


def _default(f: dataclasses.Field) -> typing.Any:
    if f.default is not dataclasses.MISSING:
        return f.default.value if isinstance(f.default, enum.Enum) else f.default
    return f.default_factory()  # type: ignore[misc]


REAL = {f.name: f for f in dataclasses.fields(transformers.TrainingArguments) if f.init}
REAL_TYPES = typing.get_type_hints(transformers.TrainingArguments)
OURS = {f.name: f for f in dataclasses.fields(TrainConfig)}
OUR_TYPES = typing.get_type_hints(TrainConfig)
SHARED = sorted(n for n in OURS if n in REAL)


def test_the_declared_training_arguments_exist_with_their_types():
    assert len(SHARED) >= 15  # the exposed fields really are TrainingArguments'
    for name in SHARED:
        assert _kinds(OUR_TYPES[name]) == _kinds(REAL_TYPES[name]), (
            f"train.{name}: ekt declares {OUR_TYPES[name]}, transformers has {REAL_TYPES[name]}"
        )


def test_defaults_are_transformers_own_unless_ekt_changes_them():
    assert set(EKT_DEFAULTS) <= set(SHARED)
    for name in SHARED:
        ours, real = _default(OURS[name]), _default(REAL[name])
        if name in EKT_DEFAULTS:  # a marked default that equals transformers' is stale too
            assert ours != real, f"train.{name}: marked as ekt's default but equals {real!r}"
        else:
            assert ours == real, f"train.{name}: ekt's default {ours!r}, transformers' {real!r}"


def test_ekt_own_settings_are_not_training_arguments():
    own = [n for n in OURS if n not in REAL]
    assert {"batch_size", "max_length", "loss_on", "packing", "precision"} <= set(own)


def test_scheduler_names_are_transformers_own():
    from transformers.trainer_utils import SchedulerType

    assert set(SCHEDULERS) == {s.value for s in SchedulerType}
    with pytest.raises(EktError, match="--lr-scheduler-type 'zig' is not one of: linear"):
        TrainConfig(lr_scheduler_type="zig")


def test_training_arguments_built_from_the_declaration():
    cfg = TrainConfig(
        num_train_epochs=2, per_device_train_batch_size=4, batch_size=8, adam_beta2=0.95
    )
    assert (cfg.num_train_epochs, cfg.per_device_train_batch_size) == (2, 4)
    assert cfg.accumulation_steps() == 2 and not isinstance(cfg, transformers.TrainingArguments)
    args = cfg.training_arguments(output_dir="x", gradient_accumulation_steps=2, use_cpu=True)
    assert type(args) is transformers.TrainingArguments
    assert (args.weight_decay, args.adam_beta2, args.learning_rate) == (0.1, 0.95, 1e-4)
    assert args.gradient_accumulation_steps == 2 and args.per_device_train_batch_size == 4
    with pytest.raises(EktError, match="^train: "):  # transformers' own checks, one line
        TrainConfig(optim="no_such_optimizer").training_arguments(output_dir="x", use_cpu=True)


def test_a_run_folder_made_before_the_static_declaration_resumes():
    """Run folders written while TrainConfig was a TrainingArguments hold its post-init values
    (and ~80 more keys): none of them reads as a changed setting."""
    from ekt.pipeline.config import RunConfig, plain
    from ekt.pipeline.run import config_changes

    old = {**TrainConfig().settings(), "output_dir": "trainer_output", "report_to": [],
           "gradient_checkpointing": False, "lr_scheduler_kwargs": None, "bf16": False}  # fmt: skip
    new = plain(RunConfig())
    assert config_changes({**new, "train": old}, new) == {}
    assert "train.learning_rate" in config_changes(
        {**new, "train": {**old, "learning_rate": 3e-4}}, new
    )


def test_any_other_training_argument_passes_through_trainer():
    """Fields ekt does not declare reach TrainingArguments through ``train.trainer``; a field
    ekt declares or derives, or a misspelt one, is one error line saying what to do."""
    cfg = TrainConfig(trainer={"ddp_timeout": 1234, "label_smoothing_factor": 0.1})
    args = cfg.training_arguments(output_dir="x", use_cpu=True)
    assert (args.ddp_timeout, args.label_smoothing_factor) == (1234, 0.1)
    with pytest.raises(EktError, match=r"^train.trainer.learning_rate: .*use train.learning_rate$"):
        TrainConfig(trainer={"learning_rate": 1.0}).training_arguments(output_dir="x")
    with pytest.raises(EktError, match=r"^train.trainer.use_cpu: ekt sets use_cpu itself$"):
        TrainConfig(trainer={"use_cpu": False}).training_arguments(output_dir="x", use_cpu=True)
    with pytest.raises(EktError, match=r"ddp_timout is not .*did you mean ddp_timeout"):
        TrainConfig(trainer={"ddp_timout": 1}).training_arguments(output_dir="x")
