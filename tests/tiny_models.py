"""Tiny randomly initialised causal LMs for tests and smoke runs.

``make_tiny_model(out_dir)`` writes a standard HF model directory (Llama
architecture, a few hundred thousand parameters) with a byte-level BPE
tokenizer trained on a handful of texts, so that every stage can run end to
end in seconds without network access. ``--model`` accepts the directory.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ekt.data.prompts import EXEMPLARS, INSTRUCTION, PROGRAM_HEADER

_SPECIALS = ["<|endoftext|>", "<|pad|>"]


def _default_corpus() -> list[str]:
    texts = [INSTRUCTION]
    for e in EXEMPLARS:
        texts.append(f"# Question: {e.question}\n{PROGRAM_HEADER}{e.body}\n")
    return texts


def make_tiny_model(
    out_dir: str | Path,
    texts: Iterable[str] | None = None,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts) if texts is not None else _default_corpus(), trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=_SPECIALS[0], pad_token=_SPECIALS[1]
    )
    hf_tok.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=None,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    return out
