"""Shared-prefix attention: one key/value cache for the few-shot prefix, read by every row.

Every teacher prompt starts with the same instruction and worked examples
(hundreds of tokens) and differs only in its last question. ``SharedPrefixKV``
holds the keys and values of that common prefix **once** per layer, each row's
own tokens (its question, then what it generated) in a per-row slot buffer,
and computes attention over both in one pass::

    scores = [ q @ K_prefix^T  |  q @ K_row^T ]        (the prefix part is one GEMM for all rows)
    p      = softmax(scores * scale + mask)
    out    = p[:, :P] @ V_prefix + p[:, P:] @ V_row

so the prefix is neither recomputed nor copied per row, and a decode step
reads it once for the whole batch instead of once per row. Slot buffers are
preallocated and written in place (no per-step concatenation), which lets the
sampler refill a finished row's slot with a new row (continuous batching).

It plugs into any transformers model whose attention goes through
``AttentionInterface`` (``_supports_attention_backend``): the sampler switches
the model's ``config._attn_implementation`` to ``"ekt_prefix"`` for the
duration of its own forward calls and passes this object as the keyword
``ekt_prefix``, which transformers hands down to the attention function. The
model runs with ``use_cache=False``; positions are passed explicitly. Causal
and sliding-window layers are supported (``sliding_window`` as transformers
defines it: a query at position i sees keys j with i - w < j <= i), as is
attention logit soft-capping.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

ATTN_NAME = "ekt_prefix"
_registered = False


def _attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    state = kwargs.get("ekt_prefix")
    if state is None:
        raise RuntimeError("the ekt_prefix attention runs only inside TransformersSampler")
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    return state.attend(module.layer_idx, query, key, value, scaling, sliding_window, softcap), None


def _no_mask(**kwargs: Any) -> None:
    return None  # SharedPrefixKV builds its own masks


def register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface, AttentionMaskInterface

        AttentionInterface.register(ATTN_NAME, _attention)
        AttentionMaskInterface.register(ATTN_NAME, _no_mask)
        _registered = True


@contextmanager
def prefix_attention(model: Any) -> Iterator[None]:
    """Route ``model``'s attention through ``_attention`` for the duration of the block."""
    register()
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = ATTN_NAME
    try:
        yield
    finally:
        config._attn_implementation = before


def supports(model: Any) -> str:
    """Why ``model`` cannot use shared-prefix attention, or "" when it can."""
    config = getattr(model, "config", None)
    if config is None or not getattr(model, "_supports_attention_backend", False):
        return "its attention does not go through transformers' AttentionInterface"
    if getattr(config, "is_encoder_decoder", False):
        return "it is an encoder-decoder model"
    if getattr(config, "use_bidirectional_attention", False):
        return "it uses bidirectional attention"
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    if not kinds <= {"full_attention", "sliding_attention"}:
        return f"it has layers of kind {sorted(kinds - {'full_attention', 'sliding_attention'})}"
    return ""


class SharedPrefixKV:
    """Key/value storage and attention for one sampling job (see the module docstring).

    Call pattern: ``begin_prefix(P)`` + a forward over the prefix tokens; for each
    problem ``begin_suffix()`` + a forward over its own prompt tokens, then
    ``take_suffix()`` (its keys/values) and ``place(slot, kv)`` into each row slot
    it gets; then per step ``begin_decode(lens)`` + a forward over one new token
    per row in slots ``0..B-1``. ``move(dst, src)`` compacts slots.
    """

    def __init__(self, n_layers: int, slots: int, capacity: int):
        self.n_layers = n_layers
        self.slots = slots
        self.capacity = capacity  # own tokens (question + generated) per row
        self.pk: list[Any] = [None] * n_layers  # [kv, P, d]
        self.pv: list[Any] = [None] * n_layers
        self.bk: list[Any] = [None] * n_layers  # [slots, kv, capacity, d]
        self.bv: list[Any] = [None] * n_layers
        self.sk: list[Any] = [None] * n_layers  # the last suffix prefill, [kv, S, d]
        self.sv: list[Any] = [None] * n_layers
        self.prefix_len = 0
        self.mode = ""
        self._lens: Any = None  # decode: own length of each row, counting the new token
        self._qpos: Any = None  # absolute query positions [B, Q]
        self._masks: dict[tuple, Any] = {}
        self._at: Any = None  # decode: flat write index of the new keys (``_write_index``)
        self._spans: list[tuple[int, int]] = []  # suffix: each problem's tokens [a, b)
        self._seg: Any = None  # suffix of several problems: the problem of each token [Q]

    # ---- phases -------------------------------------------------------------------------

    def begin_prefix(self, length: int, device: Any) -> Any:
        import torch

        self.mode, self.prefix_len, self._masks = "prefix", length, {}
        self._qpos = torch.arange(length, device=device)[None]
        return self._qpos

    def reuse_prefix(self, length: int, keys: list[Any], values: list[Any]) -> None:
        """The prefix phase done already: another job's prefix keys/values, per layer."""
        self.mode, self.prefix_len, self._masks = "prefix", length, {}
        self.pk, self.pv = list(keys), list(values)

    def begin_suffix(self, lengths: int | list[int], device: Any) -> Any:
        """One problem's own prompt tokens (``lengths`` an int), or several problems' packed
        into one sequence one after another (a list of their lengths): each attends to the
        prefix and to its own earlier tokens only, at the positions it would have alone."""
        import torch

        sizes = [lengths] if isinstance(lengths, int) else list(lengths)
        self.mode, self._masks = "suffix", {}
        self._spans = []
        at = 0
        for n in sizes:
            self._spans.append((at, at + n))
            at += n
        self._qpos = self.prefix_len + torch.cat(
            [torch.arange(n, device=device) for n in sizes]
        )[None]
        self._seg = (
            None
            if len(sizes) == 1
            else torch.repeat_interleave(
                torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device)
            )
        )
        return self._qpos

    def begin_decode(self, lens: Any) -> Any:
        """``lens``: LongTensor [B], each row's own length including the token being fed."""
        self.mode, self._masks, self._lens, self._at = "decode", {}, lens, None
        self._qpos = (self.prefix_len + lens - 1)[:, None]
        return self._qpos

    def take_suffix(self, i: int = 0) -> tuple[list[Any], list[Any]]:
        """The keys/values of the ``i``-th problem of the last suffix prefill, per layer."""
        a, b = self._spans[i]
        return [k[:, a:b] for k in self.sk], [v[:, a:b] for v in self.sv]

    def place(self, slot: int, kv: tuple[list[Any], list[Any]]) -> None:
        """Copy one problem's prompt keys/values into a row slot."""
        import torch

        ks, vs = kv
        for i in range(self.n_layers):
            k, v = ks[i], vs[i]
            if self.bk[i] is None:
                shape = (self.slots, k.shape[0], self.capacity, k.shape[-1])
                self.bk[i] = torch.zeros(shape, dtype=k.dtype, device=k.device)
                self.bv[i] = torch.zeros(shape, dtype=v.dtype, device=v.device)
            self.bk[i][slot, :, : k.shape[1]] = k
            self.bv[i][slot, :, : v.shape[1]] = v

    def move(self, dst: list[int], src: list[int], length: int) -> None:
        """Copy rows ``src`` into slots ``dst`` (the first ``length`` positions)."""
        import torch

        if not dst:
            return
        d = torch.tensor(dst, device=self.bk[0].device)
        s = torch.tensor(src, device=self.bk[0].device)
        for i in range(self.n_layers):
            self.bk[i][d, :, :length] = self.bk[i][s, :, :length]
            self.bv[i][d, :, :length] = self.bv[i][s, :, :length]

    def _write_index(self, kvh: int, device: Any) -> Any:
        """Flat row indices into a slot buffer viewed as [slots * kv * capacity, d] of the
        decode step's new keys (row-major over rows, then kv heads); cached per step."""
        if self._at is None:
            import torch

            b = self._lens.shape[0]
            base = (torch.arange(b, device=device)[:, None] * kvh) + torch.arange(
                kvh, device=device
            )[None]
            self._at = (base * self.capacity + (self._lens - 1)[:, None]).reshape(-1)
        return self._at

    # ---- attention ----------------------------------------------------------------------

    def _mask(self, window: int | None, groups: int, own_len: int, dtype: Any, device: Any) -> Any:
        """Additive mask [B, 1, groups*Q, P + own_len] for the current phase."""
        key = (window, groups, own_len, dtype)
        if key in self._masks:
            return self._masks[key]
        import torch

        qpos = self._qpos  # [B, Q]
        prefix = 0 if self.mode == "prefix" else self.prefix_len
        if self.mode == "suffix":
            own_pos = qpos[0]  # the keys are the queries' own tokens
        else:
            own_pos = prefix + torch.arange(own_len, device=device)  # absolute positions
        allowed = own_pos[None, None, :] <= qpos[:, :, None]  # causal, [B, Q, L]
        if self.mode == "suffix" and self._seg is not None:  # packed problems: each its own
            allowed = allowed & (self._seg[None, :, None] == self._seg[None, None, :])
        if self.mode == "decode":
            allowed = allowed & (
                torch.arange(own_len, device=device)[None, None] < self._lens[:, None, None]
            )
        if window is not None:
            allowed = allowed & (own_pos[None, None, :] > qpos[:, :, None] - window)
        if prefix:
            pre_pos = torch.arange(prefix, device=device)
            if window is not None:
                pre = pre_pos[None, None, :] > qpos[:, :, None] - window
            else:
                pre = torch.ones(1, 1, prefix, dtype=torch.bool, device=device)
            allowed = torch.cat([pre.expand(allowed.shape[0], allowed.shape[1], -1), allowed], -1)
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
        mask.masked_fill_(~allowed, float("-inf"))
        mask = mask[:, None].repeat(1, 1, groups, 1)  # row j*Q + q of a kv head's group
        self._masks[key] = mask
        return mask

    def attend(
        self,
        layer: int,
        q: Any,
        k: Any,
        v: Any,
        scaling: float,
        window: int | None,
        softcap: float | None,
    ) -> Any:
        """Output [B, Q, H, d] for queries ``q`` [B, H, Q, d] and new keys ``k``, ``v``."""
        import torch

        b, h, nq, d = q.shape
        kvh = k.shape[1]
        g = h // kvh
        pk = pv = None
        if self.mode == "prefix":
            self.pk[layer], self.pv[layer] = k[0], v[0]
            ok, ov = k, v
        elif self.mode == "suffix":
            self.sk[layer], self.sv[layer] = k[0], v[0]
            pk, pv = self.pk[layer], self.pv[layer]
            ok, ov = k, v
        else:
            # Write each row's new key/value at its own position: one index_copy_ into the
            # flattened slot buffer (advanced indexing with a slice between the indices
            # copies through a generic kernel, ~10x slower per layer).
            at = self._write_index(kvh, q.device)
            self.bk[layer].view(-1, d).index_copy_(0, at, k.reshape(b * kvh, d))
            self.bv[layer].view(-1, d).index_copy_(0, at, v.reshape(b * kvh, d))
            own = int(self._lens.max())
            ok, ov = self.bk[layer][:b, :, :own], self.bv[layer][:b, :, :own]
            pk, pv = self.pk[layer], self.pv[layer]
        q4 = q.reshape(b, kvh, g * nq, d)  # query heads grouped by the kv head they read
        scores = torch.matmul(q4, ok.transpose(-1, -2))  # [B, kv, gQ, L]
        if pk is not None:
            plen = pk.shape[1]
            qp = q4.transpose(0, 1).reshape(kvh, b * g * nq, d)
            pre = torch.matmul(qp, pk.transpose(-1, -2)).view(kvh, b, g * nq, plen)
            scores = torch.cat([pre.transpose(0, 1), scores], -1)
        scores = scores * scaling
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        scores = scores + self._mask(window, g, ok.shape[2], scores.dtype, q.device)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(ov.dtype)
        if pk is not None:
            plen = pk.shape[1]
            pp = probs[..., :plen].transpose(0, 1).reshape(kvh, b * g * nq, plen)
            out = torch.matmul(pp, pv).view(kvh, b, g * nq, d).transpose(0, 1)
            out = out + torch.matmul(probs[..., plen:], ov)
        else:
            out = torch.matmul(probs, ov)
        return out.reshape(b, h, nq, d).transpose(1, 2).contiguous()


__all__ = ["ATTN_NAME", "SharedPrefixKV", "prefix_attention", "register", "supports"]
