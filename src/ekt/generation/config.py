"""Generation's settings: how programs are sampled (``SamplingParams``), declared once.

The run config's ``teacher_sampling:`` and ``eval:`` blocks and ``ekt generate``/``ekt
evaluate`` extend this class; a backend's own settings are ``ekt.generation.backends.
BackendConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ekt.data.prompt_format import default_stop
from ekt.errors import EktError


@dataclass(frozen=True)
class SamplingParams:
    """How programs are sampled. Each field is declared here once: the run config's
    ``teacher_sampling:`` and ``eval:`` blocks and ``ekt generate``/``ekt evaluate`` extend
    this class, and their other defaults are set with ``dataclasses.replace``."""

    n: int = 1
    """samples per question"""
    temperature: float = 0.6
    """sampling temperature (0 = greedy)"""
    top_p: float = 1.0
    """nucleus sampling: keep the smallest token set with this much probability, in (0, 1]"""
    max_new_tokens: int = 256
    """tokens generated at most per sample"""
    stop: tuple[str, ...] = default_stop()
    """strings that end a sample (cut before the first one)"""
    seed: int = 0
    """seed of every sample's own random stream (with the question id and sample index)"""

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise EktError(f"--n must be >= 1 (an integer), got {self.n!r}")
        if not self.temperature >= 0:  # also rejects NaN
            raise EktError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise EktError(f"--top-p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise EktError(f"--max-new-tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if any(not isinstance(s, str) or not s for s in stop):
            raise EktError("--stop strings must be non-empty")
        object.__setattr__(self, "stop", stop)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def sampling_params(self) -> SamplingParams:
        """Just the sampling fields (of a config that extends this class)."""
        return SamplingParams(**{f.name: getattr(self, f.name) for f in fields(SamplingParams)})
