"""``EvalConfig``: the evaluation budget, in a module of its own that imports no stage, so
that the ``ekt evaluate`` and ``ekt run`` parsers are built without loading the evaluation
(``ekt.evaluation.evaluate`` re-exports it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ekt.errors import EktError
from ekt.generation.backends import BackendConfig
from ekt.generation.config import SamplingParams


@dataclass(frozen=True)
class EvalConfig(SamplingParams):
    """Evaluation budget: ``ekt evaluate`` flags and a run config's ``eval:`` block.

    The sampling fields (temperature, top_p, max_new_tokens, stop) are ``SamplingParams``'s;
    only the defaults of ``n`` and ``seed`` differ for evaluation.
    """

    n: int = 10
    """samples per question for pass@k and the majority vote"""
    seed: int = 1234
    """seed of the evaluation samples"""
    split: str = "test"
    """questions evaluated: train | dev | test"""
    limit: int | None = None
    """the first N questions of the split (None: all)"""
    k: list[int] = field(default_factory=lambda: [1, 10])
    """k values of pass@k (each <= n)"""
    greedy: bool = True
    """also score one greedy program per question (greedy pass@1)"""
    batch_size: int = 16
    """sequences decoded together (transformers backend)"""
    parallel: int = 1
    """`ekt run` on CPU: student models evaluated at once, each in a process of its own with
    an equal share of the cores; the same samples. On 2 cores a pair of the demo's evaluations
    at 1 thread each took 0.73-1.0x the time of the two one after the other at 2 threads"""
    backend: BackendConfig = field(default_factory=BackendConfig)
    """engine that samples the evaluated models (see ekt.generation.backends)"""
    tasks: list[str] = field(default_factory=list)
    """`ekt run`: more tasks every model is evaluated on besides the run's own (names from
    `ekt tasks` or task files), e.g. [svamp, gsm-hard]: transfer at a glance"""
    task_data: dict[str, str] = field(default_factory=dict)
    """local folders for those tasks (task name -> folder of <split>.jsonl/.csv/.parquet);
    a task not named here is read from its own data (the HF hub)"""

    def validate(self) -> None:
        self.backend.validate()
        if not self.k:
            raise EktError("--k needs at least one value")
        for k in self.k:
            if k < 1:
                raise EktError(f"--k values must be >= 1, got {k}")
            if k > self.n:
                raise EktError(f"--k {k} exceeds --n {self.n}: pass@k needs at least k samples")
        if self.batch_size < 1:
            raise EktError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.parallel < 1:
            raise EktError(f"eval.parallel must be >= 1, got {self.parallel}")
        if self.limit is not None and self.limit < 1:
            raise EktError(f"--limit must be >= 1, got {self.limit}")
