"""What a training method is to ekt: :class:`Method`, the record the registry holds.

A method is declared once, in its own module of this package, as a ``METHOD`` constant:

* ``name``: the name a run config's ``methods:`` lists and ``ekt export --method`` takes;
* ``consumes``: what it learns from (:data:`TEACHER_PAIRS`, :data:`TEACHER_SAMPLES`,
  :data:`LIVE_TEACHER`, :data:`OWN_ROLLOUTS`, :data:`REFERENCE_PROGRAMS`);
* ``settings_key`` / ``settings``: its block of the run config and that block's dataclass;
* ``writes``: the run-folder paths it owns besides ``students/<name>`` and
  ``eval/student-<name>`` (which every method has);
* ``invalidated_by``: the config keys whose change makes its outputs stale;
* ``prepare`` (its training data, before any method trains) and ``fit`` (its student).

``ekt.methods.registry`` lists the modules; the run, the plan, export, the report and
the CLI read the registry. ``Context`` is what a method may ask of the run that hosts it
(``ekt.pipeline.run.Runner`` is one).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ekt.layout import RunLayout
from ekt.records import Problem, read_jsonl

# what a method learns from
TEACHER_PAIRS = "verified teacher pairs"
TEACHER_SAMPLES = "every teacher sample"
LIVE_TEACHER = "a live teacher"
OWN_ROLLOUTS = "its own rollouts"
REFERENCE_PROGRAMS = "reference programs"
TEACHER_INPUTS = (TEACHER_PAIRS, TEACHER_SAMPLES, LIVE_TEACHER)

# config keys that make every trained student stale: its data, its model, where programs
# run, its layout, and the evaluation tasks (which decontaminate the training data)
EVERY_STUDENT = (
    "train_split", "train_limit", "sandbox", "student", "model:student",
    "student_prompt_format", "eval.tasks", "eval.task_data",
)  # fmt: skip
# what the teacher's samples depend on
TEACHER_SAMPLING = ("teacher", "model:teacher", "teacher_sampling")
# a method whose teacher tokens the budget caps
BUDGET = "teacher_token_budget"
# keys that make a method's student stale but not the data it prepared (``writes``)
STUDENT_ONLY = frozenset({"student", "model:student", "student_prompt_format", "train"})


@dataclass
class Cost:
    """What one method spent in a run, read from its records (see the run's results)."""

    teacher_tokens_sampled: int = 0  # tokens the teacher generated for it
    teacher_tokens_scored: int = 0  # tokens a live teacher scored (a forward pass)
    student_tokens_generated: int = 0  # tokens the student sampled (its rollouts)
    training_tokens: int = 0  # input tokens the student's training processed
    sandbox_executions: int = 0  # programs run
    seconds: float = 0.0  # wall time of its stages, shared teacher stages included

    def add(self, other: Cost) -> Cost:
        return Cost(**{k: getattr(self, k) + getattr(other, k) for k in COST_KEYS})


COST_KEYS = tuple(Cost.__dataclass_fields__)


@dataclass
class Fitted:
    """A method's outcome: its student (None: skipped, for the reason ``skipped``), its
    pairs, its cost."""

    model: str | None
    pairs: Path | None = None
    cost: Cost = field(default_factory=Cost)
    skipped: str = "no training pairs"


class Context(Protocol):
    """What a method may use of the run hosting it."""

    cfg: Any  # the run config (ekt.pipeline.config.RunConfig)
    layout: RunLayout
    task: Any
    sandbox: Any  # SandboxConfig
    cluster: Any  # RayCluster | None
    sampler_factory: Any  # (spec, device, batch, backend) -> () -> sampler

    def stage(self, title: str) -> AbstractContextManager[Any]: ...

    def teacher_samples(self, problems: Sequence[Problem]) -> Cost: ...

    def teacher_pairs(
        self,
        problems: Sequence[Problem],
        method: str | None = None,
        scored: Callable[[Path], int] | None = None,
    ) -> tuple[Path, Cost]:
        """The verified teacher pairs and their cost; under a ``teacher_token_budget``,
        ``method``'s own, counting ``scored(pairs)`` (its teacher's scoring) in."""
        ...

    def budget_samples(self, problems: Sequence[Problem]) -> tuple[frozenset | None, Cost]:
        """The (problem id, sample index) of the teacher samples a method may read under a
        ``teacher_token_budget`` (None: every one), and their cost."""
        ...

    def contamination_sets(self) -> dict[str, list[str]]: ...

    def trained(self, method: str) -> str | None:
        """The student ``method`` trained earlier in this run (None: it was skipped)."""
        ...


Prepare = Callable[[Context, Sequence[Problem]], tuple[Path | None, Cost]]
Fit = Callable[[Context, Sequence[Problem], Path | None], Fitted]


@dataclass(frozen=True)
class Method:
    name: str
    summary: str  # one line: what it is
    consumes: tuple[str, ...]
    fit: Fit
    invalidated_by: tuple[str, ...]
    settings_key: str | None = None
    settings: type | None = None
    writes: tuple[str, ...] = ()  # stale on ``invalidated_by`` less :data:`STUDENT_ONLY`
    harmless: tuple[str, ...] = ()  # config keys of its block that change no result
    prepare: Prepare | None = None
    pairs: Callable[[RunLayout], Path] | None = None  # the pairs ``ekt export`` reads
    # the run-config key that may name an earlier method of the run whose student this one
    # starts from or learns from (``grpo.start``): that method's cost is part of this one's,
    # and it must be listed before this one
    builds_on: str | None = None

    def named(self, cfg: Any) -> Any:
        """The value of its ``builds_on`` key in the run config ``cfg`` (None: no such key)."""
        if self.builds_on is None:
            return None
        value = cfg
        for part in self.builds_on.split("."):
            value = getattr(value, part)
        return value

    def base(self, cfg: Any) -> str | None:
        """The earlier method of the run ``cfg`` whose student this one builds on, if any."""
        named = self.named(cfg)
        return named if named in cfg.methods else None

    @property
    def uses_teacher(self) -> bool:
        """Whether its student depends on the teacher (a matrix cell's own, not shared)."""
        return any(c in TEACHER_INPUTS for c in self.consumes)

    def outputs(self) -> tuple[str, ...]:
        """Run-folder globs of everything it writes."""
        return (*self.writes, f"students/{self.name}", f"eval/student-{self.name}")

    def stale_on(self, key: str) -> tuple[str, ...]:
        """What a change of the config key ``key`` makes stale of its outputs."""
        if key not in self.invalidated_by:
            return ()
        return self.outputs()[len(self.writes):] if key in STUDENT_ONLY else self.outputs()


def model_named(ctx: Context, named: str | None, default: str) -> tuple[str | None, str]:
    """The model a setting such as ``grpo.start`` or ``on_policy.teacher`` names, and how to
    say it: None gives ``default``; a method of this run gives the student that method trained
    (None when it has none: the method was skipped); anything else is a model spec."""
    if named is None:
        return default, default
    if named in ctx.cfg.methods:
        model = ctx.trained(named)
        return model, f"the {named} student ({model or 'none: skipped'})"
    return named, named


def count_lines(*paths: Path) -> int:
    return sum(sum(1 for _ in read_jsonl(p)) for p in paths if p.is_file())


def trained_tokens(out: Path) -> int:
    """Input tokens a finished ``train_student`` run processed (its ``train_summary.json``)."""
    try:
        return int(json.loads((out / "train_summary.json").read_text()).get("tokens_trained", 0))
    except (OSError, ValueError):
        return 0


def train_on_pairs(
    ctx: Context, name: str, pairs: Path | None, train: Callable[[Path], Any] | None = None
) -> Fitted:
    """Fine-tune the run's student on ``pairs`` into ``students/<name>``; ``train(out)``
    trains (default: ``ekt.training.train.train_student`` with the run's settings). A
    finished folder is kept."""
    from ekt.training.train import train_student

    cfg, out = ctx.cfg, ctx.layout.student(name)
    with ctx.stage(f"train {cfg.student} on {name} pairs"):
        if (out / "train_summary.json").exists():  # --force removed it if stale
            print(f"train {name}: already trained ({out}); skipping")
        else:
            result = (train or (lambda o: train_student(
                cfg.student, pairs, o, cfg.train, device=cfg.device,
                prompt_format=cfg.student_prompt_format,
            )))(out)  # fmt: skip
            if result is None:
                print(f"train {name}: no training pairs in {pairs}; this method is skipped")
                return Fitted(None, pairs)
    return Fitted(str(out), pairs, Cost(training_tokens=trained_tokens(out)))
