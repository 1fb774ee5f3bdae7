"""What a plan measures without a model: prompt tokens, a previous run's usage, training steps.

``ekt.pipeline.plan`` bills every stage ``ekt run`` would do; the figures it bills
with come from here, and none of them loads a model:

* **tokenizers** (``load_tokenizer``), the only part of a model a plan loads, and
  the exact token count of each prompt as the sampler encodes it (``prompt_lengths``;
  4 characters a token where no local tokenizer can render it);
* **a previous run's measurements** in the run folder: the token usage of a stage's
  sample shards or, where those are gone, of its ``results.json`` (``Measured``,
  ``measured_usage``, ``results_usage``), the verified successes per question that
  project the adaptive budget (``success_counts``), the training pairs a method got
  (``count_records``) and the questions each expert-iteration round sampled
  (``round_attempted``);
* **training steps** as transformers' Trainer counts them (``train_steps``).

They are kept apart from the planner so that ``plan.py`` holds only the stages and
their bill, and each of these can be tested on its own. Whether a previous run's
figures apply (its config agrees) is the planner's decision, not theirs.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ekt.errors import EktError
from ekt.generation.backends.openai_compat import CHARS_PER_TOKEN
from ekt.generation.generate import shard_paths, usage
from ekt.generation.sampler import chat_ids
from ekt.models import PRESETS, converted_dir, preset_gguf
from ekt.records import read_jsonl

# -- tokenizers: the only part of a model a plan loads --------------------------------------


@functools.cache
def load_tokenizer(spec: str) -> Any | None:
    """The tokenizer of a model spec, read from local files only (None: not on this machine).

    A preset or GGUF file is read from its converted HF folder when one is cached (about a
    second; the conversion checked that it encodes exactly like the GGUF one), else from
    the GGUF file itself (exact, but tens of seconds for Gemma's 262k-token vocabulary).
    Weights are never read.
    """
    from transformers import AutoTokenizer

    path = Path(spec).expanduser()
    gguf: Path | None = None
    label = None
    if spec in PRESETS:
        gguf, label = preset_gguf(spec), spec
    elif path.suffix.lower() == ".gguf" and path.is_file():
        gguf = path.resolve()
    if gguf is not None:
        folder = converted_dir(gguf, label)
        if (folder / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(str(folder))
        print(
            f"plan: reading the tokenizer of {spec} from its GGUF file (slow: up to ~30 s; "
            f"`ekt models {spec}` converts it once, then it takes a second)",
            file=sys.stderr,
            flush=True,
        )
        return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    try:
        return AutoTokenizer.from_pretrained(
            str(path) if path.is_dir() else spec, local_files_only=True
        )
    except (OSError, ValueError):
        return None


def prompt_lengths(
    tokenizer: Any | None, prompts: Sequence[Any], api: bool = False
) -> tuple[list[int], bool]:
    """Tokens of each prompt (text or chat messages) as the sampler encodes it, and whether
    they are exact (False: no tokenizer, or an API chat prompt the local tokenizer cannot
    render: 4 characters a token)."""
    if not prompts:
        return [], True
    if tokenizer is None:
        return [_chars(p) // CHARS_PER_TOKEN + 1 for p in prompts], False
    if isinstance(prompts[0], str):
        return [len(ids) for ids in tokenizer(list(prompts)).input_ids], True
    try:
        return [len(chat_ids(tokenizer, p)) for p in prompts], True
    except EktError:
        if not api:  # a local engine renders it with this tokenizer: the run would fail too
            raise
        return [_chars(p) // CHARS_PER_TOKEN + 1 for p in prompts], False


def _chars(prompt: Any) -> int:
    return len(prompt) if isinstance(prompt, str) else sum(len(m["content"]) for m in prompt)


# -- what a previous run measured ----------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """Token usage of a previous run's samples of one stage (``generate.usage``)."""

    samples: int
    completion_tokens: int
    prompt_tokens: int  # billed prompt tokens (API backends; 0: not reported)

    @property
    def per_sample(self) -> float:
        return self.completion_tokens / self.samples

    @property
    def prompt_per_sample(self) -> float:
        return self.prompt_tokens / self.samples


def measured_usage(*folders: Path) -> Measured | None:
    """What the sample shards of generate folders add up to (None: no samples there)."""
    total = [0, 0, 0]
    for f in folders:
        if f.is_dir() and shard_paths(f):
            u = usage(f)
            total = [
                total[0] + u["samples"],
                total[1] + u["completion_tokens"],
                total[2] + u["prompt_tokens"],
            ]
    return Measured(*total) if total[0] else None


def results_usage(results: Path, stage: str = "teacher_generate") -> Measured | None:
    """A stage's token usage as a previous run's ``results.json`` recorded it (``stages``), for
    a run folder whose sample shards are gone (None: not recorded)."""
    try:
        u = json.loads(results.read_text(encoding="utf-8"))["stages"][stage]
        m = Measured(int(u["samples"]), int(u["completion_tokens"]), int(u["prompt_tokens"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return m if m.samples > 0 else None


def success_counts(executions: Path) -> dict[str, tuple[int, int]]:
    """(correct, verified) samples per question in a verification output (empty: none)."""
    out: dict[str, list[int]] = {}
    if not executions.is_file():
        return {}
    for _, rec in read_jsonl(executions):
        c = out.setdefault(str(rec["problem_id"]), [0, 0])
        c[0] += bool(rec.get("correct"))
        c[1] += 1
    return {k: (a, b) for k, (a, b) in out.items()}


def count_records(path: Path) -> int | None:
    return sum(1 for _ in read_jsonl(path)) if path.is_file() else None


def train_steps(pairs: int, cfg: Any) -> int:
    """Optimizer steps of a training on ``pairs`` examples, as transformers' Trainer counts
    them: ``max_steps`` when set, else epochs x ceil(micro-batches / accumulation)."""
    if cfg.max_steps > 0:
        return int(cfg.max_steps)
    if pairs <= 0:
        return 0
    micro = math.ceil(pairs / cfg.per_device_train_batch_size)
    accumulation = cfg.batch_size // cfg.per_device_train_batch_size
    per_epoch = max(math.ceil(micro / accumulation), 1)
    return math.ceil(cfg.num_train_epochs * per_epoch)


def round_attempted(record: Path) -> int | None:
    """Questions a finished expert-iteration round sampled (its ``round.json``), or None."""
    try:
        return int(json.loads(record.read_text(encoding="utf-8"))["attempted"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


__all__ = [
    "Measured",
    "count_records",
    "load_tokenizer",
    "measured_usage",
    "prompt_lengths",
    "results_usage",
    "round_attempted",
    "success_counts",
    "train_steps",
]
