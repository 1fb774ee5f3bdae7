"""Packed training batches: several examples per row, no compute spent on padding.

A micro-batch of examples is concatenated into one row. Position ids restart
at 0 for every example, and a registered attention function
(``ekt_packed``) runs causal attention separately on each example's slice of
the row, so a token never attends to (or receives gradient from) another
example, and rotary embeddings see the positions they would see alone. The
first label of every example is set to -100 so that the last token of one
example is never trained to predict the first token of the next. The
objective is therefore exactly that of the unpacked, padded batch; only float
rounding differs (tests/test_packing.py checks losses, gradients and the
boundaries).

Why not what transformers offers out of the box: with ``position_ids`` and
no attention mask, transformers >= 5 detects the restarts and builds a dense
block-diagonal mask for sdpa/eager. That is exact too, but it computes the
scores of every token pair in the row (a row of 8 GSM8K examples is ~900
tokens, so ~8x the attention arithmetic of the examples alone), while the
per-example attention here costs what the examples cost. FlashAttention's
varlen kernels do the same as this function on GPUs with flash-attn; this
one needs nothing beyond torch and works with sdpa on CPU and GPU.

Only the positions whose next token is a target go through the output layer
(``logits_to_keep`` with a boolean mask): the logits of prompt tokens, a
50k-260k-way projection each, are never computed. Models that do not take
``logits_to_keep`` get full logits, indexed afterwards.

Models whose attention does not go through transformers' AttentionInterface
(``_supports_attention_backend``; e.g. GPT-Neo) cannot be packed: their
batches are right-padded instead, which is slower but computes the same thing.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

IGNORE = -100
PACKED_ATTENTION = "ekt_packed"
SEGMENTS = "ekt_segments"  # batch key: example boundaries in the packed row (python ints)
_registered = False


def register() -> None:
    """Make ``ekt_packed`` known to transformers (idempotent).

    Its mask function is sdpa's, so a model left on ``ekt_packed`` behaves like
    sdpa on ordinary (unpacked, padded) calls such as generation.
    """
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
    _registered = True


def can_pack(model: Any) -> bool:
    """True when the model's attention is pluggable (transformers' AttentionInterface)."""
    base = _base_model(model)
    return bool(getattr(base, "_supports_attention_backend", False)) and hasattr(
        base, "set_attn_implementation"
    )


def enable_packing(model: Any) -> str | None:
    """Switch ``model`` to per-example attention; returns the implementation to restore."""
    register()
    base = _base_model(model)
    previous = base.config._attn_implementation
    base.set_attn_implementation(PACKED_ATTENTION)
    return previous


def disable_packing(model: Any, previous: str | None) -> None:
    if previous is not None:
        _base_model(model).set_attn_implementation(previous)


def _base_model(model: Any) -> Any:
    """The transformers model under a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def supports_logits_to_keep(model: Any) -> bool:
    """True when ``forward`` takes a (boolean, 2-D) ``logits_to_keep`` (transformers >= 5)."""
    try:
        from transformers.modeling_utils import slice_logits_to_keep  # noqa: F401
    except ImportError:
        return False
    forward = _base_model(model).forward
    return "logits_to_keep" in inspect.signature(forward).parameters


# -- attention --------------------------------------------------------------


def packed_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Causal attention within each example of a packed row (``ekt_segments``).

    query/key/value are (1, heads, tokens, head_dim); the result is
    (1, tokens, heads, head_dim) like every transformers attention function.
    Without ``ekt_segments`` (an ordinary call) this is transformers' sdpa.
    A sliding window shorter than an example and logit soft-capping are honoured.
    """
    import torch

    segments: Sequence[int] | None = kwargs.pop(SEGMENTS, None)
    window = kwargs.pop("sliding_window", None)
    softcap = kwargs.pop("softcap", None)
    dense = _Dense(module, dropout, scaling, softcap)
    if segments is None:
        return dense(query, key, value, attention_mask)
    if query.shape[0] != 1:
        raise ValueError("packed batches have one row")
    outs = []
    for start, end in zip(segments[:-1], segments[1:]):
        mask = None
        n = end - start
        if window is not None and n > window:
            i = torch.arange(n, device=query.device)
            diff = i[:, None] - i[None, :]
            mask = ((diff >= 0) & (diff < window))[None, None]
        q, k, v = (t[:, :, start:end] for t in (query, key, value))
        outs.append(dense(q, k, v, mask)[0])
    return torch.cat(outs, dim=1), None


@dataclass(frozen=True)
class _Dense:
    """One layer's attention over one example: what every example of a row shares (the
    layer, its dropout, scale and soft-cap), called with that example's q, k, v and mask."""

    module: Any
    dropout: float
    scaling: float | None
    softcap: float | None

    def __call__(self, q: Any, k: Any, v: Any, mask: Any) -> tuple[Any, None]:
        """sdpa (causal when there is no mask), or plain attention when scores are
        soft-capped."""
        module, dropout, scaling, softcap = self.module, self.dropout, self.scaling, self.softcap
        if softcap is None:
            from transformers.integrations.sdpa_attention import sdpa_attention_forward

            return sdpa_attention_forward(module, q, k, v, mask, dropout=dropout, scaling=scaling)
        import torch
        from transformers.integrations.sdpa_attention import repeat_kv

        groups = q.shape[1] // k.shape[1]
        k, v = repeat_kv(k, groups), repeat_kv(v, groups)
        scale = scaling if scaling is not None else q.shape[-1] ** -0.5
        scores = torch.matmul(q, k.transpose(2, 3)) * scale
        scores = torch.tanh(scores / softcap) * softcap
        if mask is None and q.shape[2] > 1:
            n = q.shape[2]
            mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()[None, None]
        if mask is not None:
            if mask.dtype == torch.bool:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            else:
                scores = scores + mask
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
        return torch.matmul(probs, v).transpose(1, 2).contiguous(), None


# -- batches ----------------------------------------------------------------


def collate(features: Sequence[dict], packed: bool, pad_id: int) -> tuple[dict, list[int]]:
    """A batch from examples with ``input_ids`` (and optionally ``labels``).

    Packed: one row, ``position_ids`` restarting per example, ``ekt_segments``
    the example boundaries, each example's first label -100. Padded: rows
    right-padded to the longest with an ``attention_mask``. Also returns where
    each example starts in the flattened batch (row-major), for callers that
    address positions inside examples.
    """
    import torch

    has_labels = "labels" in features[0]
    if packed:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        bounds = [0]
        for f in features:
            n = len(f["input_ids"])
            ids.extend(f["input_ids"])
            positions.extend(range(n))
            if has_labels:
                lab = list(f["labels"])
                lab[0] = IGNORE  # nothing in this example precedes it
                labels.extend(lab)
            bounds.append(bounds[-1] + n)
        batch: dict[str, Any] = {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
            SEGMENTS: tuple(bounds),
        }
        if has_labels:
            batch["labels"] = torch.tensor([labels], dtype=torch.long)
        return batch, bounds[:-1]
    width = max(len(f["input_ids"]) for f in features)
    rows, masks, label_rows = [], [], []
    for f in features:
        pad = width - len(f["input_ids"])
        rows.append(list(f["input_ids"]) + [pad_id] * pad)
        masks.append([1] * len(f["input_ids"]) + [0] * pad)
        if has_labels:
            label_rows.append(list(f["labels"]) + [IGNORE] * pad)
    batch = {
        "input_ids": torch.tensor(rows, dtype=torch.long),
        "attention_mask": torch.tensor(masks, dtype=torch.long),
    }
    if has_labels:
        batch["labels"] = torch.tensor(label_rows, dtype=torch.long)
    return batch, [i * width for i in range(len(features))]


def loss_positions(labels: Any) -> tuple[Any, Any]:
    """(keep, targets): positions whose next token is a target, and those targets.

    ``keep`` has the shape of ``labels``; ``targets`` lists the target ids in
    row-major order of ``keep`` (the order ``logits_to_keep`` returns logits in).
    """
    import torch

    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    return keep, labels[:, 1:][keep[:, :-1]]


MODEL_KEYS = ("input_ids", "attention_mask", "position_ids", SEGMENTS)


def kept_logits(model: Any, batch: dict, keep: Any, use_logits_to_keep: bool) -> Any:
    """Logits (n_kept, vocab) at the ``keep`` positions, in row-major order."""
    inputs = {k: batch[k] for k in MODEL_KEYS if k in batch}
    if use_logits_to_keep:
        logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
        if logits.ndim == 2 and logits.shape[0] == int(keep.sum()):
            return logits
        if logits.ndim == 3 and logits.shape[:2] == keep.shape:  # model ignored the mask
            return logits[keep]
        raise RuntimeError(f"unexpected logits shape {tuple(logits.shape)} from logits_to_keep")
    return model(**inputs, use_cache=False).logits[keep]
