"""Every path of a run folder, in one place (run, matrix, evaluate, expert iteration use it).

::

    config.yaml  manifest.json  results.json  results.md  report.html
    teacher/samples/*.jsonl  teacher/executions.jsonl
    train_pairs.jsonl                          (EKT: the teacher's verified programs)
    seq_kd/train_pairs.jsonl                   (every teacher sample, unverified)
    supervised/programs.jsonl  supervised/executions.jsonl  supervised/train_pairs.jsonl
    students/<method>/                         (HF checkpoints + train_log.jsonl)
    eval/<label>/                              (EvalLayout)
    pairs/<teacher>--<student>/  shared/...    (a matrix run; see ekt.pipeline.matrix)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EvalLayout:
    """One evaluation's folder (ekt.evaluation.evaluate)."""

    dir: Path

    def samples(self, kind: str) -> Path:
        """``greedy`` or ``sampled``: the generate stage's folder."""
        return self.dir / kind

    def executions(self, kind: str) -> Path:
        return self.dir / kind / "executions.jsonl"

    @property
    def problems(self) -> Path:
        return self.dir / "problems.jsonl"

    @property
    def scores(self) -> Path:
        return self.dir / "scores.json"


@dataclass(frozen=True)
class RoundLayout:
    """One round of expert iteration (ekt.methods.expert_iteration)."""

    dir: Path

    @property
    def executions(self) -> Path:
        return self.dir / "executions.jsonl"

    @property
    def new_pairs(self) -> Path:
        return self.dir / "new_pairs.jsonl"

    @property
    def train_pairs(self) -> Path:
        return self.dir / "train_pairs.jsonl"

    @property
    def model(self) -> Path:
        return self.dir / "model"

    @property
    def record(self) -> Path:
        return self.dir / "round.json"


@dataclass(frozen=True)
class ExpertIterationLayout:
    dir: Path

    def round(self, i: int) -> RoundLayout:
        return RoundLayout(self.dir / f"round-{i}")

    @property
    def rounds(self) -> Path:
        return self.dir / "rounds.jsonl"

    @property
    def train_pairs(self) -> Path:
        return self.dir / "train_pairs.jsonl"


@dataclass(frozen=True)
class RunLayout:
    """A run folder (a single pair, or a matrix's top folder)."""

    dir: Path

    @classmethod
    def of(cls, name: str, out_dir: str | Path | None = None) -> RunLayout:
        """``--out``, else ``runs/<name>``."""
        return cls(Path(out_dir) if out_dir else Path("runs") / name)

    config = property(lambda self: self.dir / "config.yaml")
    manifest = property(lambda self: self.dir / "manifest.json")
    results = property(lambda self: self.dir / "results.json")
    results_md = property(lambda self: self.dir / "results.md")
    report = property(lambda self: self.dir / "report.html")
    teacher = property(lambda self: self.dir / "teacher")
    teacher_executions = property(lambda self: self.dir / "teacher" / "executions.jsonl")
    train_pairs = property(lambda self: self.dir / "train_pairs.jsonl")
    seq_kd_pairs = property(lambda self: self.dir / "seq_kd" / "train_pairs.jsonl")
    supervised = property(lambda self: self.dir / "supervised")
    supervised_programs = property(lambda self: self.dir / "supervised" / "programs.jsonl")
    supervised_executions = property(lambda self: self.dir / "supervised" / "executions.jsonl")
    supervised_pairs = property(lambda self: self.dir / "supervised" / "train_pairs.jsonl")
    pairs = property(lambda self: self.dir / "pairs")
    shared = property(lambda self: self.dir / "shared")

    def student(self, method: str) -> Path:
        return self.dir / "students" / method

    def budget(self, method: str) -> Path:
        """A method's own verified samples and pairs under ``teacher_token_budget``."""
        return self.dir / "budget" / method

    def eval(self, label: str, task: str | None = None) -> EvalLayout:
        """A model's evaluation on the run's task, or on one of ``eval.tasks``."""
        base = self.dir / "eval" / label
        return EvalLayout(base / "tasks" / task if task else base)

    def expert_iteration(self) -> ExpertIterationLayout:
        return ExpertIterationLayout(self.student("expert-iteration"))

    def pair(self, name: str) -> Path:
        return self.pairs / name

    @property
    def evals(self) -> Path:
        """The folder of every model's evaluation (``eval/<label>/``)."""
        return self.dir / "eval"

    @property
    def students(self) -> Path:
        return self.dir / "students"

