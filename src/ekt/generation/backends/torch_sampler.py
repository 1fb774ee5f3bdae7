"""The built-in sampler: ``TransformersSampler`` runs its own decoding loop on a transformers model:

* **Batching.** Problems are taken in groups of ``batch_size // n`` consecutive
  requests (``pack_prompts=True``), left-padded into one prefill; each prompt
  is prefilled once and its key/value cache is repeated for its ``n`` samples.
  With ``n >= batch_size`` a problem's samples fill batches on their own.
  A sample leaves the batch as soon as it stops (stop string, EOS or length);
  the batch ends when its last row does. (The shared-prefix path, taken by every
  model it supports, keeps one batch of ``batch_size`` rows refilled as rows
  finish; the prompts of the rows admitted in one step are prefilled packed
  together: see ``_sample_shared``.)
* **Reproducibility.** Every sample draws its randomness from its own
  ``torch.Generator`` seeded with ``sha256(seed, problem_id, sample_idx)``, so
  which other problems or samples share its batch changes no random number.
  With ``pack_prompts=False`` a problem's samples are always decoded alone,
  so its records are bit-identical whatever else is requested (or was done
  before a resume). With packing (the default, faster), records are
  bit-identical for the same request list; another grouping changes logits
  only by float rounding (padding, batch shape), which can flip a draw only
  when it falls within rounding distance of a probability boundary: rare, but
  not impossible. ``ekt.generation.generate`` resamples a partial shard with the same
  request list, so resumed jobs stay exact either way.
* **Index ranges.** ``sample(..., start=i)`` draws indices ``i .. i+n-1``, each
  seeded as that index always is, in the batch layout ``0 .. n-1`` would have: what
  an adaptive budget's round draws (``ekt.generation.budget``). A round's batch
  holds only the questions still active, ``round_size`` rows each, so against a
  full call it is another grouping (the rounding caveat above); with
  ``batch_size=1`` every sample is decoded alone and the records are the same
  bit for bit. ``benchmarks/teacher_budget.py`` counts how many of the demo
  teacher's adaptive samples are byte-identical to full's.
* **Greedy.** Temperature 0 takes the argmax, token for token what
  ``model.generate(do_sample=False)`` gives for a single prompt (with
  ``heal_prompt=False``, or when healing does not apply); its ``n`` samples
  are identical, so one row is decoded and reported ``n`` times. Only
  temperature and top-p shape the distribution: a model's own generation
  config (top-k, repetition penalty) is ignored.
* **Chat prompts.** A prompt given as chat messages (a ``chat`` prompt format) is
  rendered with the tokenizer's own chat template (``add_generation_prompt``),
  tokenised as it stands (the template writes the special tokens) and never
  healed; a tokenizer without a chat template is an error that says so.
* **Token healing** (``heal_prompt=True``, default). Prompts end with
  ``def solution():\\n``; BPE tokenizers such as SmolLM2's merge a newline with
  the indentation that follows it (``"\\n   "`` is one token), so a prompt that
  ends on a bare ``"\\n"`` token is a tokenisation the model never saw before
  an indented line, and it answers with unindented text. Healing drops the
  prompt's last token and constrains the first generated token to tokens whose
  text starts with the dropped one; the dropped text is not part of
  ``Completion.text``. Healing is skipped when no other token extends the last
  one (then greedy output is exactly ``model.generate``'s).
"""

from __future__ import annotations

import contextlib
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ekt.errors import EktError
from ekt.generation.config import SamplingParams
from ekt.generation.sampler import chat_ids, derive_seed, truncate_at_stop
from ekt.records import Completion

PREFILL_TOKENS = 512
"""Shared-prefix sampling prefills the prompts of the rows it admits in one step together, in
packs of at most this many tokens (a larger product runs nearer the CPU's peak; attention
over a pack grows with its square)."""


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@dataclass
class _Prompt:
    """One encoded prompt: the ids fed to the model and how to read its continuation."""

    ids: list[int]  # prompt ids, without the healed-away last token
    anchor: list[int]  # ids decoded before a continuation, so leading spaces survive decoding
    skip: str  # text of the healed-away token(s), removed from the continuation's front
    base: str = ""  # decoded anchor
    allowed: Any = None  # LongTensor of ids allowed as the first token, or None


@dataclass
class _Row:
    problem_id: str
    sample_idx: int  # first index this row stands for
    copies: int  # greedy rows report ``copies`` identical samples
    prompt: _Prompt
    generator: Any = None
    tokens: list[int] | None = None
    problem: int = 0  # index of its request
    length: int = 0  # shared-prefix path: own tokens in its slot (prompt suffix + fed tokens)
    n_tokens: int = 0  # set when it finishes


class TransformersSampler:
    """Sampler over a transformers causal LM (see the module docstring for the guarantees)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        batch_size: int = 16,
        progress: bool = True,
        pack_prompts: bool = True,
        heal_prompt: bool = True,
        shared_prefix: bool | None = None,
        quantized: Any = None,
    ):
        if batch_size < 1:
            raise EktError(f"--batch-size must be >= 1, got {batch_size}")
        self.model = model
        self.tok = tokenizer
        self.batch_size = batch_size
        self.progress = progress
        self.pack_prompts = pack_prompts
        self.heal_prompt = heal_prompt
        self.shared_prefix = shared_prefix  # None: when the model supports it
        # ekt.generation.qkernel.QuantizedLinears: decode steps multiply with a GGUF's blocks
        self.quantized = quantized
        self._shared_ok: bool | None = None
        # the last shared prefix's keys/values: (ids, weights stamp, keys, values); a later
        # call with the same prefix (an adaptive budget's next round) does not prefill it again
        self._prefix_memo: tuple | None = None
        eos = tokenizer.eos_token_id
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ids = {eos} if isinstance(eos, int) else set(eos or [])
        ids |= {gen_eos} if isinstance(gen_eos, int) else set(gen_eos or [])
        self.eos_ids = frozenset(i for i in ids if i is not None)
        self._special = frozenset(getattr(tokenizer, "all_special_ids", []) or [])
        self._vocab: list[str] | None = None
        self._extensions: dict[int, list[int]] = {}
        import inspect

        # transformers 5 names the cache argument `cache`; older releases `past_key_values`.
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._logits_to_keep = "logits_to_keep" in params

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    # ---- prompts -------------------------------------------------------------------------

    def _extending(self, token_id: int) -> list[int]:
        """Ids of the (non-special) tokens whose raw string starts with ``token_id``'s."""
        if token_id not in self._extensions:
            if self._vocab is None:
                n = len(self.tok)
                self._vocab = [t or "" for t in self.tok.convert_ids_to_tokens(list(range(n)))]
            head = self._vocab[token_id]
            self._extensions[token_id] = [
                i
                for i, t in enumerate(self._vocab)
                if head and t.startswith(head) and i not in self._special
            ]
        return self._extensions[token_id]

    def prepare(self, prompt: str | Sequence[dict]) -> _Prompt:
        """Encode a prompt (with the tokenizer's usual special tokens, e.g. Gemma's BOS);
        chat messages through the tokenizer's chat template, not healed."""
        if not isinstance(prompt, str):
            ids = chat_ids(self.tok, prompt)
            return _Prompt(ids, ids[-1:], "", self.tok.decode(ids[-1:], skip_special_tokens=True))
        ids = list(self.tok(prompt).input_ids)
        if not ids:
            raise EktError("empty prompt: nothing to continue")
        last = ids[-1]
        if self.heal_prompt and len(ids) >= 2 and last not in self._special:
            ext = self._extending(last)
            if len(ext) > 1:
                import torch

                anchor = ids[-2:-1]
                base = self.tok.decode(anchor, skip_special_tokens=True)
                with_last = self.tok.decode(anchor + [last], skip_special_tokens=True)
                if with_last.startswith(base):
                    allowed = torch.tensor(ext, dtype=torch.long)
                    return _Prompt(ids[:-1], anchor, with_last[len(base) :], base, allowed)
        return _Prompt(ids, ids[-1:], "", self.tok.decode(ids[-1:], skip_special_tokens=True))

    def _text(self, prompt: _Prompt, tokens: list[int]) -> str:
        """The continuation's text: decoded after the anchor, healed-away text removed."""
        full = self.tok.decode(prompt.anchor + tokens, skip_special_tokens=True)
        if full.startswith(prompt.base):
            text = full[len(prompt.base) :]
        else:  # a tokenizer whose decoding of the anchor depends on what follows
            text = self.tok.decode(tokens, skip_special_tokens=True)
        if prompt.skip and text.startswith(prompt.skip):
            text = text[len(prompt.skip) :]
        return text

    # ---- sampling ------------------------------------------------------------------------

    def sample(
        self,
        requests: Sequence[tuple[str, str]],
        params: SamplingParams,
        start: int | None = None,
    ) -> Iterator[Completion]:
        """Yield ``params.n`` completions per request, each as soon as it is finished.

        The same request list always gives the same batches (and bit-identical samples).
        ``start``: the sample indices are ``start .. start+n-1`` (seeds included), laid out
        in batches exactly as indices ``0 .. n-1`` would be.
        """
        first = start or 0
        from ekt.progress import progress

        # On a terminal the bar redraws; in a log file (a cluster job, CI) it is a plain line
        # every few seconds (ekt.progress), so a long sampling step is never silent.
        bar = progress(len(requests) * params.n, "sample", "seq", enabled=self.progress)
        quantized = self.quantized.active() if self.quantized else contextlib.nullcontext()
        try:
            with quantized:
                if requests and self._use_shared_prefix():
                    groups = [list(requests)] if self.pack_prompts else [[r] for r in requests]
                    for group in groups:
                        for c in self._sample_shared(group, params, first):
                            bar.update(1)
                            yield c
                else:
                    for c in self._sample_padded(requests, params, first):
                        bar.update(1)
                        yield c
        finally:
            bar.close()

    def _finish(self, row: _Row, tok: int, params: SamplingParams) -> str | None:
        """Take token ``tok`` for ``row``; the sample's text once it is finished, else None."""
        assert row.tokens is not None
        if tok in self.eos_ids:
            row.n_tokens = len(row.tokens) + 1
            return truncate_at_stop(self._text(row.prompt, row.tokens), params.stop)[0]
        row.tokens.append(tok)
        text, stopped = truncate_at_stop(self._text(row.prompt, row.tokens), params.stop)
        if stopped or len(row.tokens) >= params.max_new_tokens:
            row.n_tokens = len(row.tokens)
            return text
        return None

    def _seed_row(self, row: _Row, params: SamplingParams) -> None:
        import torch

        row.tokens = []
        if not params.greedy:
            row.generator = torch.Generator(device="cpu").manual_seed(
                derive_seed(params.seed, row.problem_id, row.sample_idx)
            )

    # ---- shared prefix + continuous batching --------------------------------------------

    def _use_shared_prefix(self) -> bool:
        """Whether this model runs on the shared-prefix path (checked once, on a tiny input)."""
        if self._shared_ok is None:
            if self.shared_prefix is False:
                self._shared_ok = False
            else:
                from ekt.generation import prefix_cache

                why = prefix_cache.supports(self.model)
                if not why:
                    why = self._self_check()
                if why and self.shared_prefix:
                    raise EktError(f"shared-prefix sampling is not available for this model: {why}")
                if why:
                    print(
                        f"ekt: shared-prefix sampling is off for this model ({why})",
                        file=sys.stderr,
                    )
                self._shared_ok = not why
        return self._shared_ok

    def _self_check(self) -> str:
        """Compare shared-prefix logits with a plain forward pass on a short input."""
        import torch

        ids = list(self.tok("def solution():\n    total = 12 * 3 + 4\n    return").input_ids)[:16]
        if len(ids) < 4:
            ids = (ids * 4)[:4]
        try:
            with torch.inference_mode():
                ref = self.model(input_ids=torch.tensor([ids], device=self.device)).logits[0]
                kv = self._new_kv(1, len(ids))
                self._prefill_prefix(kv, ids[:-3])
                # two problems packed into one prefill: ids[-3:-2] and ids[-3:-1]
                packed = self._prefill_suffixes(kv, [ids[-3:-2], ids[-3:-1]])
                kv.place(0, kv.take_suffix(1))
                lens = torch.tensor([3], device=self.device)
                nxt = self._forward_decode(kv, torch.tensor([ids[-1]], device=self.device), lens)
        except Exception as e:  # an architecture this path does not handle
            return f"self-check failed: {type(e).__name__}: {e}"
        for got, want in ((packed[0], ref[-3]), (packed[1], ref[-2]), (nxt[0], ref[-1])):
            want = want.float()
            tol = 1e-3 + 2e-2 * float(want.abs().max())
            if not torch.allclose(got.float(), want, atol=tol, rtol=0):
                return "self-check: logits differ from a plain forward pass"
        return ""

    def _new_kv(self, slots: int, capacity: int) -> Any:
        from ekt.generation.prefix_cache import SharedPrefixKV

        return SharedPrefixKV(self.model.config.num_hidden_layers, slots, capacity)

    def _run(self, kv: Any, ids: Any, pos: Any, keep: Any = None) -> Any:
        """One forward pass through the shared-prefix attention: the logits of each row's last
        position, or (``keep``, a LongTensor of positions of the one row) of those positions."""
        from ekt.generation.prefix_cache import prefix_attention

        extra: dict[str, Any] = {}
        if self._logits_to_keep:
            extra["logits_to_keep"] = 1 if keep is None else keep
        with prefix_attention(self.model):
            out = self.model(
                input_ids=ids, position_ids=pos, use_cache=False, ekt_prefix=kv, **extra
            )
        if keep is None:
            return out.logits[:, -1, :].float()
        logits = out.logits[0]
        return (logits if self._logits_to_keep else logits[keep]).float()

    def _weights_stamp(self) -> tuple:
        """Changes when any parameter is replaced or changed in place (an optimizer step)."""
        return tuple((p.data_ptr(), p._version) for p in self.model.parameters())

    def _prefill_prefix(self, kv: Any, ids: list[int]) -> None:
        import torch

        if ids:
            stamp = self._weights_stamp()
            memo = self._prefix_memo
            if memo is not None and memo[0] == tuple(ids) and memo[1] == stamp:
                kv.reuse_prefix(len(ids), memo[2], memo[3])  # the same tensors: same results
                return
            pos = kv.begin_prefix(len(ids), self.device)
            self._run(kv, torch.tensor([ids], device=self.device), pos)
            self._prefix_memo = (tuple(ids), stamp, list(kv.pk), list(kv.pv))

    def _prefill_suffix(self, kv: Any, ids: list[int]) -> Any:
        import torch

        pos = kv.begin_suffix(len(ids), self.device)
        return self._run(kv, torch.tensor([ids], device=self.device), pos)[0]

    def _prefill_suffixes(self, kv: Any, own: list[list[int]]) -> Any:
        """Several problems' own prompt tokens in one forward pass, packed one after another
        (``SharedPrefixKV.begin_suffix``): the logits after each, [len(own), vocab]. Each
        problem's keys/values (``kv.take_suffix(i)``) are those of its prefill alone up to
        the order of summation: one product over all their rows instead of one per problem."""
        import torch

        if len(own) == 1:
            return self._prefill_suffix(kv, own[0])[None]
        pos = kv.begin_suffix([len(x) for x in own], self.device)
        ids = torch.tensor([[t for x in own for t in x]], device=self.device)
        ends = torch.tensor([len(x) for x in own], device=self.device).cumsum(0) - 1
        return self._run(kv, ids, pos, keep=ends)

    def _forward_decode(self, kv: Any, tokens: Any, lens: Any) -> Any:
        pos = kv.begin_decode(lens)
        return self._run(kv, tokens[:, None], pos)

    def _sample_shared(
        self, requests: Sequence[tuple[str, str]], params: SamplingParams, first_idx: int = 0
    ) -> Iterator[Completion]:
        """Decode all samples of ``requests`` with one shared prefix and a refilled batch.

        The prefix is the longest token prefix common to all prompts (leaving each
        prompt at least one token of its own); it is computed once. Each problem's
        own tokens are prefilled once, packed with the other problems admitted in the
        same step (each attends only to the prefix and to itself, so its keys/values
        depend on the others only through the order of summation), and copied into a
        slot per sample. A finished row's slot is refilled at once by the next sample
        in request order.
        """
        import torch

        dev = self.device
        prompts = [(pid, self.prepare(p)) for pid, p in requests]
        width = min(len(pr.ids) for _, pr in prompts) - 1
        first = prompts[0][1].ids
        plen = 0
        while plen < width and all(pr.ids[plen] == first[plen] for _, pr in prompts):
            plen += 1
        per_row = params.n if params.greedy else 1
        rows_per_problem = params.n // per_row
        pending: deque[_Row] = deque(
            _Row(pid, first_idx + i * per_row, per_row, pr, problem=j)
            for j, (pid, pr) in enumerate(prompts)
            for i in range(rows_per_problem)
        )
        slots = min(self.batch_size, len(pending))
        own_max = max(len(pr.ids) for _, pr in prompts) - plen
        kv = self._new_kv(slots, own_max + params.max_new_tokens)
        left = [rows_per_problem] * len(prompts)  # rows of each problem not yet admitted
        staged: dict[int, tuple[Any, Any]] = {}  # problem -> (its prompt keys/values, logits)
        active: list[_Row] = []
        last = torch.zeros(0, dtype=torch.long, device=dev)  # last token of each active row
        with torch.inference_mode():
            self._prefill_prefix(kv, first[:plen])
            while active or pending:
                # 1. one decode step for the rows that continue
                logits = []
                if active:
                    lens = torch.tensor([r.length for r in active], device=dev)
                    logits.append(self._forward_decode(kv, last, lens))
                # 2. refill free slots, in request order; the new problems' own prompt tokens
                # are prefilled together (in packs of at most PREFILL_TOKENS tokens)
                admit = [pending.popleft() for _ in range(min(slots - len(active), len(pending)))]
                self._stage(kv, admit, plen, staged)
                fresh: list[Any] = []
                for row in admit:
                    j = row.problem
                    own_kv, out = staged[j]
                    left[j] -= 1
                    if not left[j]:
                        del staged[j]
                    kv.place(len(active), own_kv)
                    row.length = len(row.prompt.ids) - plen
                    self._seed_row(row, params)
                    active.append(row)
                    fresh.append(out)
                if fresh:
                    logits.append(torch.stack(fresh))
                scores = torch.cat(logits) if len(logits) > 1 else logits[0]
                # 3. choose, emit the finished, compact the rest
                nxt = self._choose(scores, active, params)
                done: list[int] = []
                for i, (row, tok) in enumerate(zip(active, nxt.tolist())):
                    text = self._finish(row, tok, params)
                    if text is not None:
                        done.append(i)
                        yield from self._emit(row, text, row.n_tokens)
                    else:
                        row.length += 1  # its token is fed at the next step
                if done:
                    keep = [i for i in range(len(active)) if i not in set(done)]
                    n = len(keep)
                    holes = [i for i in done if i < n]
                    movers = [i for i in keep if i >= n]
                    kv.move(holes, movers, max((active[i].length for i in movers), default=0))
                    order = list(range(n))
                    for h, m in zip(holes, movers):
                        order[h] = m
                    active = [active[i] for i in order]
                    last = nxt[torch.tensor(order, dtype=torch.long, device=nxt.device)]
                else:
                    last = nxt

    def _stage(self, kv: Any, rows: list[_Row], plen: int, staged: dict) -> None:
        """Prefill the own prompt tokens of the problems of ``rows`` not staged yet, into
        ``staged`` (problem -> (its keys/values, its first logits))."""
        todo: dict[int, _Prompt] = {}
        for row in rows:
            if row.problem not in staged:
                todo.setdefault(row.problem, row.prompt)
        packs: list[list[int]] = []
        size = 0
        for j, prompt in todo.items():
            n = len(prompt.ids) - plen
            if not packs or size + n > PREFILL_TOKENS:
                packs.append([])
                size = 0
            packs[-1].append(j)
            size += n
        for pack in packs:
            outs = self._prefill_suffixes(kv, [todo[j].ids[plen:] for j in pack])
            for i, j in enumerate(pack):
                staged[j] = (kv.take_suffix(i), self._constrain(outs[i], todo[j]))

    @staticmethod
    def _constrain(logits: Any, prompt: _Prompt) -> Any:
        """Healed prompts: only tokens extending the dropped token may come first."""
        if prompt.allowed is None:
            return logits
        import torch

        allowed = prompt.allowed.to(logits.device)
        out = torch.full_like(logits, float("-inf"))
        out[allowed] = logits[allowed]
        return out

    # ---- left-padded batches (models the shared-prefix path does not support) ------------

    def _sample_padded(
        self, requests: Sequence[tuple[str, str]], params: SamplingParams, first_idx: int = 0
    ) -> Iterator[Completion]:
        per_row = params.n if params.greedy else 1  # samples one decoded row stands for
        rows_per_problem = 1 if params.greedy else params.n
        per_group = max(1, self.batch_size // rows_per_problem) if self.pack_prompts else 1
        for g in range(0, len(requests), per_group):
            group = [(pid, self.prepare(p)) for pid, p in requests[g : g + per_group]]
            if len(group) == 1 and rows_per_problem > self.batch_size:
                chunks = [
                    range(s, min(rows_per_problem, s + self.batch_size))
                    for s in range(0, rows_per_problem, self.batch_size)
                ]
            else:
                chunks = [range(rows_per_problem)]
            for idxs in chunks:
                at = first_idx  # the first sample index of this call
                rows = [_Row(pid, at + i * per_row, per_row, pr) for pid, pr in group for i in idxs]
                yield from self._decode(group, rows, len(idxs), params)

    def _decode(
        self,
        group: list[tuple[str, _Prompt]],
        rows: list[_Row],
        per_prompt: int,
        params: SamplingParams,
    ) -> Iterator[Completion]:
        """Decode ``rows`` (``per_prompt`` consecutive rows per prompt of ``group``).

        One prompt is prefilled alone (no padding: token for token ``model.generate``);
        several are left-padded into one prefill with an attention mask and
        explicit positions, as ``generate`` does for a padded batch.
        """
        import torch

        dev = self.device
        for r in rows:
            self._seed_row(r, params)
        padded = len(group) > 1
        extra: dict[str, Any] = {"logits_to_keep": 1} if self._logits_to_keep else {}
        mask = pos = None
        with torch.inference_mode():
            if padded:
                enc = [pr.ids for _, pr in group]
                width = max(len(e) for e in enc)
                pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
                ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc], device=dev)
                mask = torch.tensor(
                    [[0] * (width - len(e)) + [1] * len(e) for e in enc], device=dev
                )
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                out = self.model(
                    input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **extra
                )
                mask = mask.repeat_interleave(per_prompt, dim=0)
                pos = pos[:, -1].repeat_interleave(per_prompt, dim=0)
            else:
                ids = torch.tensor([group[0][1].ids], device=dev)
                out = self.model(input_ids=ids, use_cache=True, **extra)
            cache = _cache_of(out)
            logits = out.logits[:, -1, :].float()
            if per_prompt > 1:
                cache.batch_repeat_interleave(per_prompt)
                logits = logits.repeat_interleave(per_prompt, dim=0)
            logits = torch.stack([self._constrain(x, r.prompt) for x, r in zip(logits, rows)])
            active = list(range(len(rows)))  # rows still decoding, in batch order
            while True:
                nxt = self._choose(logits, [rows[r] for r in active], params)
                keep: list[int] = []
                for j, (r, tok) in enumerate(zip(active, nxt.tolist())):
                    text = self._finish(rows[r], tok, params)
                    if text is not None:
                        yield from self._emit(rows[r], text, rows[r].n_tokens)
                    else:
                        keep.append(j)
                if not keep:
                    return
                if len(keep) < len(active):
                    sel = torch.tensor(keep, device=nxt.device)
                    cache.batch_select_indices(sel)
                    nxt = nxt[sel]
                    if mask is not None and pos is not None:
                        mask, pos = mask[sel], pos[sel]
                    active = [active[j] for j in keep]
                kwargs: dict[str, Any] = {self._cache_arg: cache}
                if mask is not None and pos is not None:
                    mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
                    pos = pos + 1
                    kwargs.update(attention_mask=mask, position_ids=pos[:, None])
                out = self.model(input_ids=nxt.unsqueeze(1), use_cache=True, **kwargs)
                cache = _cache_of(out)
                logits = out.logits[:, -1, :].float()

    @staticmethod
    def _emit(row: _Row, text: str, n_tokens: int) -> Iterator[Completion]:
        for k in range(row.copies):
            yield Completion(row.problem_id, row.sample_idx + k, text, n_tokens)

    @staticmethod
    def _choose(logits: Any, rows: list[_Row], params: SamplingParams) -> Any:
        """Next token per row: argmax, or inverse-CDF sampling with one uniform per row.

        Each row's uniform comes from its own CPU generator, so only one number
        per row crosses devices, and a row's draw never depends on the others.
        """
        import torch

        if params.greedy:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (always at least one token).
            drop = sorted_p.cumsum(dim=-1) - sorted_p >= params.top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        wide = torch.float32 if probs.device.type == "mps" else torch.float64
        u = torch.cat([torch.rand(1, generator=r.generator, dtype=torch.float64) for r in rows])
        return _inverse_cdf(probs, u.to(device=probs.device, dtype=wide), wide)


_BLOCK = 512  # tokens per block of the two-level inverse-CDF draw


def _inverse_cdf(probs: Any, u: Any, wide: Any) -> Any:
    """Per row, the first token whose cumulative mass (in ``wide``) exceeds ``u`` times the row's
    total, found in two levels: block masses and their cumulative sum pick the block, a cumulative
    sum inside that block alone picks the token. The same draw as one cumulative sum over the
    whole vocabulary up to float rounding of the sums, without writing a [rows, vocab] ``wide``
    array each step (for a 262k vocabulary that array was most of a step's sampling time).
    Zero-probability tokens are never picked; a target rounded onto or past a block's end takes
    that block's last token of nonzero probability, a target past the total the argmax."""
    import torch

    rows, vocab = probs.shape
    nb = -(-vocab // _BLOCK)
    padded = probs
    if nb * _BLOCK != vocab:
        padded = torch.nn.functional.pad(probs, (0, nb * _BLOCK - vocab))
    blocks = padded.view(rows, nb, _BLOCK)
    bcdf = blocks.sum(dim=-1, dtype=wide).cumsum(dim=-1)  # [rows, nb]
    target = u * bcdf[:, -1]
    blk = torch.searchsorted(bcdf, target[:, None], right=True).squeeze(1)  # [rows]
    past = blk >= nb
    blk = blk.clamp(max=nb - 1)
    start = torch.where(blk > 0, bcdf.gather(1, (blk - 1).clamp(min=0)[:, None])[:, 0], 0.0)
    chosen = blocks[torch.arange(rows, device=probs.device), blk]  # [rows, _BLOCK]
    inner = chosen.cumsum(dim=-1, dtype=wide) + start[:, None]
    pos = torch.searchsorted(inner, target[:, None], right=True).squeeze(1)
    # A rounding gap between the block sum and the in-block cumulative sum: the block's last
    # token of nonzero probability (the block holds one, since its mass is positive).
    nonzero = torch.arange(_BLOCK, device=probs.device)[None].expand(rows, -1)
    last_nz = torch.where(chosen > 0, nonzero, -1).amax(dim=-1)
    pos = torch.minimum(pos, last_nz)
    picks = blk * _BLOCK + pos
    if bool(past.any()):  # a target rounded up onto the total mass: take the argmax
        picks = torch.where(past, probs.argmax(dim=-1), picks)
    return picks
