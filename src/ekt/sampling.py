"""Samplers: one ``SamplingParams`` value, one ``sample`` call, plain ``Completion`` records.

``Sampler.sample(requests, params)`` takes ``(problem_id, prompt)`` pairs and
yields one ``Completion`` per (problem, sample index) as soon as it is finished,
so the caller can persist results while the job runs.

``TransformersSampler`` runs its own decoding loop on a transformers model:

* each prompt is prefilled once and its key/value cache is shared by the
  prompt's samples (the cache is repeated along the batch, not recomputed);
* every sample draws from its own ``torch.Generator`` seeded from
  ``(seed, problem_id, sample_idx)`` through SHA-256, so a sample does not depend
  on which other samples or problems were in the batch, and a resumed job
  reproduces an uninterrupted one;
* a sample leaves the batch as soon as its text contains a stop string (or it
  emits EOS), and the rest continue with a smaller batch;
* temperature 0 is greedy (argmax), token for token what ``model.generate``
  gives with ``do_sample=False``. Only temperature and top-p shape the
  distribution: a model's own generation config (top-k, repetition penalty)
  is ignored, so sampling means the same thing for every model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ekt.errors import EktError
from ekt.prompts import STOP_STRINGS
from ekt.records import Completion


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 0.6  # 0 => greedy
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = tuple(STOP_STRINGS)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise EktError(f"--n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise EktError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise EktError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise EktError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        object.__setattr__(self, "stop", tuple(self.stop))


class Sampler(Protocol):
    def sample(
        self, requests: Sequence[tuple[str, str]], params: SamplingParams
    ) -> Iterator[Completion]: ...


def derive_seed(seed: int, problem_id: str, sample_idx: int) -> int:
    """A 63-bit seed that depends only on its inputs (stable across runs and machines)."""
    digest = hashlib.sha256(f"{seed}\x00{problem_id}\x00{sample_idx}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def truncate_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Text before the earliest stop string, and whether one was found. Pure."""
    cut = min((i for i in (text.find(s) for s in stops) if i != -1), default=-1)
    return (text[:cut], True) if cut != -1 else (text, False)


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


class TransformersSampler:
    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 16, progress: bool = True):
        if batch_size < 1:
            raise EktError(f"--batch-size must be >= 1, got {batch_size}")
        self.model = model
        self.tok = tokenizer
        self.batch_size = batch_size
        self.progress = progress
        eos = tokenizer.eos_token_id
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ids = {eos} if isinstance(eos, int) else set(eos or [])
        ids |= {gen_eos} if isinstance(gen_eos, int) else set(gen_eos or [])
        self.eos_ids = frozenset(i for i in ids if i is not None)
        import inspect

        # transformers 5 names the forward argument `cache`; older releases `past_key_values`.
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def encode(self, prompt: str) -> Any:
        """Prompt token ids, shape [1, L] (with the tokenizer's usual special tokens)."""
        return self.tok(prompt, return_tensors="pt").input_ids.to(self.device)

    def sample(
        self, requests: Sequence[tuple[str, str]], params: SamplingParams
    ) -> Iterator[Completion]:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(requests) * params.n, desc="sample", unit="seq", disable=not self.progress
        )
        try:
            for problem_id, prompt in requests:
                ids = self.encode(prompt)
                for start in range(0, params.n, self.batch_size):
                    idxs = list(range(start, min(params.n, start + self.batch_size)))
                    for c in self._sample_group(problem_id, ids, idxs, params):
                        bar.update(1)
                        yield c
        finally:
            bar.close()

    def _sample_group(
        self, problem_id: str, ids: Any, idxs: list[int], params: SamplingParams
    ) -> Iterator[Completion]:
        import torch

        m = len(idxs)
        greedy = params.temperature == 0
        gens = [
            torch.Generator(device="cpu").manual_seed(derive_seed(params.seed, problem_id, i))
            for i in idxs
        ]
        tokens: list[list[int]] = [[] for _ in range(m)]
        active = list(range(m))  # rows of the original group still decoding, in batch order
        with torch.inference_mode():
            out = self.model(input_ids=ids, use_cache=True)
            cache = _cache_of(out)
            logits = out.logits[:, -1, :].float()
            if m > 1:
                cache.batch_repeat_interleave(m)
                logits = logits.expand(m, -1)
            for step in range(params.max_new_tokens):
                nxt = self._choose(logits, [gens[r] for r in active], params, greedy)
                keep: list[int] = []
                for pos, r in enumerate(active):
                    tok = int(nxt[pos])
                    if tok in self.eos_ids:
                        yield self._finish(
                            problem_id, idxs[r], tokens[r], len(tokens[r]) + 1, params
                        )
                        continue
                    tokens[r].append(tok)
                    text = self.tok.decode(tokens[r], skip_special_tokens=True)
                    cut, stopped = truncate_at_stop(text, params.stop)
                    if stopped or step == params.max_new_tokens - 1:
                        yield Completion(problem_id, idxs[r], cut, len(tokens[r]))
                        continue
                    keep.append(pos)
                if not keep:
                    return
                if len(keep) < len(active):
                    cache.batch_select_indices(torch.tensor(keep, device=nxt.device))
                    nxt = nxt[keep]
                    active = [active[p] for p in keep]
                out = self.model(
                    input_ids=nxt.unsqueeze(1), use_cache=True, **{self._cache_arg: cache}
                )
                cache = _cache_of(out)
                logits = out.logits[:, -1, :].float()

    def _finish(
        self, problem_id: str, idx: int, toks: list[int], n_tokens: int, params: SamplingParams
    ) -> Completion:
        text = self.tok.decode(toks, skip_special_tokens=True)
        return Completion(problem_id, idx, truncate_at_stop(text, params.stop)[0], n_tokens)

    @staticmethod
    def _choose(logits: Any, gens: list[Any], params: SamplingParams, greedy: bool) -> Any:
        import torch

        if greedy:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (always at least one token).
            drop = sorted_p.cumsum(dim=-1) - sorted_p >= params.top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs.cpu()
        picks = [torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(gens)]
        return torch.cat(picks).to(logits.device)
