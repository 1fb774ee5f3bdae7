"""``backend: llamacpp``: ekt starts, feeds and stops its own ``llama-server`` on loopback.

``LlamaLocalSampler`` is a ``Sampler`` for a model spec as ekt knows it (a preset, a ``.gguf``
file, a transformers folder): on its first ``sample()`` call it starts the cached
``llama-server`` binary (``make llama-server``; ``LlamaServerProcess``) on 127.0.0.1 with
the model's GGUF, as many slots as the batch has parallel sequences and ``threads`` CPU
threads, and samples through ``LlamaServerSampler`` (one request per sample, its own seed,
the server's per-sample token counts, the slot's prompt cache). The server stays up for
later calls and stops with ``close()`` (or when the sampler is collected, or at exit).

Which GGUF (``model_gguf``):

* a preset: its GGUF as it ships (``ekt.models.preset_gguf``), the weights the built-in
  sampler dequantises;
* a ``.gguf`` file: as it is;
* a transformers folder (a fine-tuned student): converted once with the
  ``convert_hf_to_gguf.py`` that llama.cpp ships (from the same llama-cpp-python sdist the
  binary is built from, with its bundled ``gguf-py``), cached in
  ``$EKT_CACHE_DIR/gguf-converted/<name>-<checkpoint hash>.<outtype>.gguf``, so a changed
  checkpoint is converted again and an unchanged one never.

llama.cpp samples with its own random generator, so its records are reproducible for a
seed and a server build, not equal to the built-in sampler's.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ekt.errors import EktError
from ekt.generation.backends import BackendConfig
from ekt.generation.backends.llamacpp_server import (
    LLAMA_CPP_VERSION,
    LlamaServerProcess,
    LlamaServerSampler,
)
from ekt.generation.config import SamplingParams
from ekt.records import Completion

# What llama.cpp's converter needs next to convert_hf_to_gguf.py: its own gguf-py, and the
# ``conversion`` package the script imports its model classes from.
_PACKAGES = ("gguf-py", "conversion")
_CHECKPOINT_FILES = (".json", ".safetensors", ".bin", ".model", ".txt", ".tiktoken")


def checkpoint_hash(folder: str | Path) -> str:
    """sha256 over the names and contents of a transformers folder's model and tokenizer files."""
    from ekt.models import file_sha256

    folder = Path(folder)
    h = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _CHECKPOINT_FILES)
    if not any(p.name == "config.json" for p in files):
        raise EktError(f"{folder}: not a transformers model folder (no config.json)")
    for p in files:
        h.update(p.name.encode() + b"\0" + file_sha256(p).encode() + b"\0")
    return h.hexdigest()


def converter_dir(version: str = LLAMA_CPP_VERSION) -> Path:
    """A folder holding llama.cpp's ``convert_hf_to_gguf.py`` and its ``gguf-py``, taken once
    from the llama-cpp-python ``version`` sdist (through pip) and cached next to the binary."""
    from ekt.models import cache_dir

    out = cache_dir() / "llama.cpp" / version / "convert"
    if (out / "convert_hf_to_gguf.py").is_file() and all((out / d).is_dir() for d in _PACKAGES):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix="convert-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-binary", "llama-cpp-python"]
        cmd += ["--no-deps", "--dest", tmp, f"llama-cpp-python=={version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if done.returncode or not sdists:
            raise EktError(
                f"could not fetch the llama-cpp-python {version} sdist for llama.cpp's GGUF "
                f"converter ({' '.join(cmd)}):\n{done.stderr[-2000:]}"
            )
        prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
        stage = Path(tmp) / "out"
        with tarfile.open(sdists[0]) as tar:
            members = [
                m
                for m in tar.getmembers()
                if m.isfile()
                and (
                    m.name == prefix + "convert_hf_to_gguf.py"
                    or any(m.name.startswith(f"{prefix}{d}/") for d in _PACKAGES)
                )
            ]
            for m in members:
                m.name = m.name[len(prefix) :]
            tar.extractall(stage, members=members, filter="data")
        if not (stage / "convert_hf_to_gguf.py").is_file():
            raise EktError(f"{sdists[0].name}: no vendor/llama.cpp/convert_hf_to_gguf.py")
        os.replace(stage, out) if not out.exists() else None
    return out


def convert_to_gguf(folder: str | Path, outtype: str = "f32") -> Path:
    """A transformers folder as a GGUF file, converted once by llama.cpp's own converter and
    cached by checkpoint hash (see the module docstring)."""
    from ekt.models import cache_dir

    folder = Path(folder).expanduser().resolve()
    digest = checkpoint_hash(folder)[:16]
    target = cache_dir() / "gguf-converted" / f"{folder.name}-{digest}.{outtype}.gguf"
    if target.is_file():
        return target
    conv = converter_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(conv), str(conv / "gguf-py"), *filter(None, [env.get("PYTHONPATH")])]
    )
    cmd = [sys.executable, str(conv / "convert_hf_to_gguf.py"), str(folder)]
    cmd += ["--outfile", str(tmp), "--outtype", outtype]
    print(f"converting {folder} to GGUF with llama.cpp's converter (once): {target}", flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise EktError(
            f"llama.cpp's convert_hf_to_gguf.py could not convert {folder}:\n"
            f"{(done.stderr or done.stdout)[-3000:]}"
        )
    os.replace(tmp, target)
    return target


def model_gguf(spec: str, outtype: str = "f32") -> Path:
    """The GGUF llama-server loads for a model spec (preset, .gguf file, transformers folder)."""
    from ekt.models import shipped_gguf

    shipped = shipped_gguf(spec)
    if shipped is not None:
        return shipped
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise EktError(f"--model {spec}: no such .gguf file")
        return path
    if path.is_dir():
        return convert_to_gguf(path, outtype)
    raise EktError(
        f"backend llamacpp: --model {spec!r} is not a preset, a .gguf file or a transformers "
        "model folder"
    )


class LlamaLocalSampler:
    """Sampler over a ``llama-server`` that this object starts and stops (module docstring)."""

    def __init__(
        self,
        spec: str,
        backend: BackendConfig,
        *,
        slots: int = 16,
        progress: bool = True,
        log: str | Path | None = None,
    ):
        """The model ``spec`` served with ``backend``'s llamacpp settings (``threads``,
        ``ctx_per_slot``, ``gguf_outtype``) and requested with its request settings
        (``cache_prompt``, ``request_timeout``, ``max_retries``, ``trim_prompt``); ``slots``
        sequences decode at once; ``log``: the server's output."""
        from ekt.generation.backends.llamacpp_server import require_llama_server

        if slots < 1:
            raise EktError(f"backend llamacpp: slots must be >= 1, got {slots}")
        require_llama_server()  # fail before the first sample() when there is no binary
        self.spec = spec
        self.slots = slots
        self.threads = backend.threads or _default_threads()
        self.ctx_per_slot = backend.ctx_per_slot
        self.outtype = backend.gguf_outtype
        self.progress = progress
        self.log = log
        self.backend = backend
        self.server: LlamaServerProcess | None = None
        self.sampler: LlamaServerSampler | None = None
        self._finalizer: Any = None

    def start(self) -> LlamaServerSampler:
        """Start the server (once) and return the HTTP sampler that talks to it."""
        if self.sampler is None:
            gguf = model_gguf(self.spec, self.outtype)
            self.server = LlamaServerProcess(
                gguf,
                slots=self.slots,
                threads=self.threads,
                ctx_per_slot=self.ctx_per_slot,
                log=self.log,
            )
            self._finalizer = weakref.finalize(self, self.server.stop)
            b = self.backend
            requests = BackendConfig(
                "openai", base_url=self.server.base_url, cache_prompt=b.cache_prompt,
                request_timeout=b.request_timeout, max_retries=b.max_retries,
                trim_prompt=b.trim_prompt,
            )  # fmt: skip
            self.sampler = LlamaServerSampler(self.spec, requests, progress=self.progress)
        return self.sampler

    def sample(
        self,
        requests: Sequence[tuple[str, Any]],
        params: SamplingParams,
        start: int | None = None,
    ) -> Iterator[Completion]:
        """``LlamaServerSampler.sample`` on the server this sampler runs (``start``: the first
        sample index, as every sampler takes it for an adaptive budget)."""
        yield from self.start().sample(requests, params, start=start)

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self.server = self.sampler = self._finalizer = None

    def __enter__(self) -> LlamaLocalSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _default_threads() -> int:
    """torch's CPU thread count where torch is installed (what the built-in sampler uses)."""
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:
        return os.cpu_count() or 1


__all__ = [
    "LlamaLocalSampler",
    "checkpoint_hash",
    "convert_to_gguf",
    "converter_dir",
    "model_gguf",
]
