"""The sampler interface: one ``SamplingParams`` value, one ``sample`` call, plain
``Completion`` records.

``Sampler.sample(requests, params)`` takes ``(problem_id, prompt)`` pairs and
yields one ``Completion`` per (problem, sample index) as soon as it is finished,
so the caller can persist results while the job runs. ``Completion.text`` is the
continuation cut *before* the first stop string; ``n_tokens`` counts the tokens
generated up to and including the one that completed the stop string (or the
EOS token, or ``max_new_tokens``). Other backends (a prefix-caching engine,
vLLM, an OpenAI-compatible server) fit behind the same protocol.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from ekt.errors import EktError
from ekt.generation.config import SamplingParams
from ekt.records import Completion

__all__ = ["Sampler", "SamplingParams", "chat_ids", "derive_seed", "truncate_at_stop"]


class Sampler(Protocol):
    def sample(
        self,
        requests: Sequence[tuple[str, Any]],
        params: SamplingParams,
        start: int | None = None,
    ) -> Iterator[Completion]:
        """``params.n`` completions per request: indices ``0 .. n-1``; with ``start``, indices
        ``start .. start+n-1``, each seeded as that index is in every other call (what an
        adaptive teacher budget draws, round by round; ``ekt.generation.budget``)."""
        ...


def derive_seed(seed: int, problem_id: str, sample_idx: int) -> int:
    """A 63-bit seed that depends only on its inputs (stable across runs, processes, machines)."""
    digest = hashlib.sha256(f"{seed}\x00{problem_id}\x00{sample_idx}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def truncate_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Text before the earliest stop string, and whether one was found. Pure."""
    cut = min((i for i in (text.find(s) for s in stops) if i != -1), default=-1)
    return (text[:cut], True) if cut != -1 else (text, False)


def chat_ids(tokenizer: Any, messages: Sequence[dict], where: str = "") -> list[int]:
    """Token ids of chat ``messages`` rendered by the tokenizer's own chat template, ending
    with the assistant's turn opened (``add_generation_prompt``). Pure."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise EktError(
            f"{where or name}: the tokenizer has no chat template, so a chat prompt format "
            "cannot be rendered for it; use a completion format (--prompt-format function) "
            "or a chat/instruct model"
        )
    text = tokenizer.apply_chat_template(
        [dict(m) for m in messages], tokenize=False, add_generation_prompt=True
    )
    return list(tokenizer(text, add_special_tokens=False).input_ids)
