"""Time and memory of a plan's stages: what ``ekt run CONFIG --dry-run`` prints beside tokens.

Each estimate says what it rests on (``Stage.estimate``), because most of them are rates
assumed, not measured:

* **Measured throughput.** Where the plan already uses a previous run's token counts for a
  stage (its teacher sampling, an evaluation), the previous run also recorded how long that
  stage took (``results.json``'s ``stage_seconds``, an evaluation's ``scores.json``
  ``seconds``). The stage's time is then that run's seconds per completion token times the
  tokens expected now: the same machine and settings, the throughput it had.
* **Assumed rates** otherwise, per device (``--device``/``device:``; None: cuda if
  ``torch.cuda`` is present, which the plan does not check: it assumes cpu unless told):
  - sampling decodes ``DECODE_RATE[device] / parameters`` tokens per second (batched, local
    engines), prompts prefill ``PREFILL_SPEEDUP`` times faster. The CPU figure is ekt's own
    demo on the 2-core development machine: gemma3-270m wrote 7,322 completion tokens in
    116 s, 63 tokens/s, times 2.7e8 parameters;
  - training takes ``6 x parameters x tokens`` FLOPs at ``TRAIN_FLOPS[device]`` per second,
    every example counted at ``train.max_length`` tokens: an upper bound, as most pairs are
    shorter (the demo's were 68 tokens each). The CPU figure is the demo's seq-kd training:
    26,160 tokens through smollm2-135m (6 x 1.35e8 FLOPs each) in 254.5 s, 8.3e10 FLOP/s;
  - the sandbox runs ``SANDBOX_PROGRAMS_PER_S`` programs a second per worker (the demo:
    192 programs in 1.2 s on 2 workers);
  - an openai-backend stage (a server's or a provider's time) is not estimated, nor the
    training between expert-iteration rounds; the GPU figures are round assumptions, not
    measured on any machine.
* **Memory** is the weights held: parameters x 4 bytes on CPU (ekt samples and trains in
  float32 there), x 2 on a GPU (bfloat16); training adds gradients and AdamW's two moments
  (16 bytes a parameter in all, activations not counted); a kd stage holds the teacher too.
  The parameter count is read from the model's local safetensors headers (or its config's
  sizes); a model not on this machine has no estimate.

These are orders of magnitude to plan with, not promises: a measured stage is as good as the
previous run's machine is like this one.
"""

from __future__ import annotations

import functools
import json
import math
import struct
from pathlib import Path
from typing import Any

from ekt.pipeline.plan_render import Stage

DECODE_RATE = {"cpu": 1.7e10, "cuda": 5e12}  # tokens/s x parameters, batched decoding
PREFILL_SPEEDUP = 10.0  # prompt tokens are this much faster than generated ones
TRAIN_FLOPS = {"cpu": 8e10, "cuda": 1e14}  # sustained FLOP/s of a training step
SANDBOX_PROGRAMS_PER_S = 80.0  # per sandbox worker
BYTES = {"cpu": 4, "cuda": 2}  # bytes a weight while sampling
TRAIN_BYTES = 16  # float32 weights, gradients and AdamW's two moments


@functools.cache
def parameters(spec: str) -> int | None:
    """Parameters of a model spec from its local files (None: not on this machine). Reads
    only the safetensors headers; never the weights, never the network."""
    folder = _local_folder(spec)
    if folder is None:
        return None
    total = 0
    for f in sorted(folder.glob("*.safetensors")):
        try:
            with f.open("rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
        except (OSError, ValueError, struct.error):
            return None
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total or None


def _local_folder(spec: str) -> Path | None:
    from ekt.models import PRESETS, converted_dir, preset_gguf

    try:
        if spec in PRESETS:
            folder = converted_dir(preset_gguf(spec), spec)
            return folder if folder.is_dir() else None
        path = Path(spec).expanduser()
        if path.is_dir():
            return path
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec, local_files_only=True))
    except Exception:  # not converted, not cached, not a model: no estimate
        return None


def device_of(cfg: Any) -> str:
    return "cuda" if str(cfg.device or "cpu").startswith("cuda") else "cpu"


def _gb(n_bytes: float) -> float:
    return round(n_bytes / 1e9, 6)


def estimate_stage(stage: Stage, device: str, cfg: Any) -> None:
    """Fill ``stage.seconds``, ``stage.memory_gb`` and ``stage.estimate`` (what they rest on)."""
    kind = stage.key.split(":", 1)[0]
    params = parameters(stage.model) if stage.model else None
    if kind in ("verify", "supervised"):
        workers = max(int(getattr(cfg.sandbox, "workers", 0) or 1), 1)
        stage.seconds = stage.programs / (SANDBOX_PROGRAMS_PER_S * workers)
        stage.estimate = f"assumed {SANDBOX_PROGRAMS_PER_S:g} programs/s per sandbox worker"
        return
    if kind in ("train", "kd-teacher"):
        if params is None:
            stage.estimate = f"no estimate: {stage.model} is not on this machine"
            return
        examples = _examples(stage, cfg)
        tokens = examples * cfg.train.max_length
        passes = 6 if kind == "train" else 2  # forward+backward, or the teacher's forward
        stage.seconds = passes * params * tokens / TRAIN_FLOPS[device]
        stage.memory_gb = _gb(params * (TRAIN_BYTES if kind == "train" else BYTES[device]))
        stage.estimate = (
            f"assumed {TRAIN_FLOPS[device]:.0e} FLOP/s ({device}), {passes} x "
            f"{params / 1e6:.3g}M parameters x {examples:,} examples x {cfg.train.max_length} "
            "tokens"
        )
        return
    if not stage.samples_max and not stage.prompts:
        return
    if params is not None:
        stage.memory_gb = _gb(params * BYTES[device])
    if stage.measured_seconds is not None and stage.measured_tokens:
        rate = stage.measured_tokens / stage.measured_seconds
        stage.seconds = stage.completion_tokens_expected / rate if rate > 0 else None
        stage.estimate = f"measured: {rate:.1f} completion tokens/s in the previous run"
        return
    if stage.api:
        stage.estimate = "no estimate: the openai backend's speed is the server's"
        return
    if params is None:
        stage.estimate = f"no estimate: {stage.model} is not on this machine"
        return
    decode = DECODE_RATE[device] / params
    stage.seconds = (
        stage.completion_tokens_expected / decode
        + stage.prompt_tokens_expected / (decode * PREFILL_SPEEDUP)
    )
    stage.estimate = (
        f"assumed {decode:.0f} tokens/s ({device}: {DECODE_RATE[device]:.1e} / "
        f"{params / 1e6:.3g}M parameters)"
    )


def _examples(stage: Stage, cfg: Any) -> int:
    """Training examples seen: max_steps x batch, else the pairs x epochs (the kd teacher's
    stage already holds that count in ``pairs``)."""
    if stage.key.startswith("kd-teacher"):
        return int(stage.pairs or 0)
    if cfg.train.max_steps > 0:
        return int(cfg.train.max_steps * cfg.train.batch_size)
    return math.ceil((stage.pairs or 0) * cfg.train.num_train_epochs)


def estimate(stages: list[Stage], cfg: Any) -> None:
    """Time and memory of every stage of a plan (in place)."""
    device = device_of(cfg)
    for stage in stages:
        estimate_stage(stage, device, cfg)


def previous_seconds(path: Path, stage_prefix: str | None = None) -> float | None:
    """Seconds a previous run recorded: an evaluation's ``scores.json``, or with
    ``stage_prefix`` the first ``stage_seconds`` entry of ``results.json`` starting so."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if stage_prefix is None:
            return float(data["seconds"])
        for name, seconds in data["stage_seconds"].items():
            if name.startswith(stage_prefix):
                return float(seconds)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return None


__all__ = ["DECODE_RATE", "TRAIN_FLOPS", "estimate", "parameters", "previous_seconds"]
