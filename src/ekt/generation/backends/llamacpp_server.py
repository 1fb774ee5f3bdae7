"""Sampling from llama.cpp's ``llama-server``: exact per-sample records over HTTP.

``llama-server`` speaks the OpenAI API (``/v1/completions``), but that answer
drops what ekt's records need: which stop string ended a sample, and how much of
the prompt came from the server's cache. Its own ``/completion`` endpoint says
it all, so ``LlamaServerSampler`` (an ``OpenAISampler``: same work units,
retries, bounded concurrency, nothing lost or doubled) talks to that one:

* **One sample per request, its own seed.** Every sample is a request with
  ``seed = derive_seed(seed, problem, index)``, the built-in sampler's seed, so
  a seeded run against the same server build repeats and a resumed shard is
  resampled into the same records (llama.cpp samples with its own random
  generator: the server's samples are reproducible, not equal to the built-in
  sampler's).
* **The built-in sampler's distribution.** llama.cpp's defaults add top-k 40
  and min-p 0.05; ekt samples from temperature and top-p only, so the request
  names that chain (``samplers: [temperature, top_p]``, top-k and min-p off).
* **Per-sample truth.** ``n_tokens`` is the server's ``tokens_predicted``
  (generated tokens, up to and including the one that completed the stop
  string, as the built-in sampler counts), ``prompt_tokens`` its
  ``tokens_evaluated``, and ``stop`` its ``stopping_word``. With
  ``keep_token_ids`` the generated ids themselves are kept (``token_ids``), so
  a check can decode them with the model's tokenizer: they spell the held-back
  newline, the text and the stop string, and there are ``n_tokens`` of them.
  (Re-encoding the text instead can come out shorter: a model may write
  ``"\n"``, ``"\n"``, ``"\n"`` where the tokenizer would write one
  ``"\n\n\n"`` token.)
* **Prefix reuse.** ``cache_prompt`` (default on) lets a slot keep the
  few-shot prefix it has already computed, so a request prefills only the
  question; ``prompt_cached`` counts the prompt tokens that came from the
  cache (a figure for logs and benchmarks).
* **Slots.** ``concurrency`` 0 (the default) keeps exactly as many requests in
  flight as the server has slots (``--parallel``/``-np``, read from ``/props``).
* **The prompt layout** of ``OpenAISampler`` (``trim_prompt``): the prompt is
  sent without its trailing newline, so it ends on a token the model has seen
  before an indented line, and the model writes the newline and indentation.

``probe(base_url)`` tells a llama.cpp server from other OpenAI-compatible
servers (``make_sampler`` uses it for ``backend: openai`` with ``server:
auto``); ``find_llama_server()`` finds the binary that
``scripts/build_llama_server.sh`` builds and caches.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import threading
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ekt.errors import EktError
from ekt.generation.backends import BackendConfig
from ekt.generation.backends.openai_compat import (
    HEALTH_TIMEOUT,
    OpenAISampler,
    _Choice,
    _count,
    _Malformed,
    _Unit,
    fetch,
    quote,
)
from ekt.generation.config import SamplingParams
from ekt.generation.sampler import derive_seed

# The llama-cpp-python release whose vendored llama.cpp scripts/build_llama_server.sh builds.
LLAMA_CPP_VERSION = "0.3.36"


def server_root(base_url: str) -> str:
    """``http://host:port`` of an OpenAI base URL (``.../v1`` dropped)."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


@dataclass(frozen=True)
class ServerInfo:
    kind: str  # "llama.cpp" or "" (another OpenAI-compatible server, or none answering)
    slots: int = 0  # sequences decoded at once (llama.cpp's --parallel); 0: not said
    model_path: str = ""  # the GGUF the server loaded, where it says


def probe(base_url: str, timeout: float = HEALTH_TIMEOUT) -> ServerInfo:
    """Ask ``GET /props`` (the whole request within ``timeout`` s): llama.cpp answers with
    its slot count; others do not."""
    try:
        props = json.loads(fetch(urllib.request.Request(server_root(base_url) + "/props"), timeout))
    except (OSError, http.client.HTTPException, ValueError, RecursionError, _Malformed):
        return ServerInfo("")
    if not isinstance(props, dict) or not isinstance(props.get("total_slots"), int):
        return ServerInfo("")
    return ServerInfo("llama.cpp", props["total_slots"], str(props.get("model_path") or ""))


class LlamaServerSampler(OpenAISampler):
    """``OpenAISampler`` on llama-server's own ``/completion`` endpoint (module docstring)."""

    def __init__(
        self, model: str, backend: BackendConfig, *, keep_token_ids: bool = False, **kw: Any
    ):
        """``OpenAISampler``'s arguments (``kw``: its keyword ones); ``backend.cache_prompt``
        reuses a slot's cached prompt prefix; ``keep_token_ids`` keeps the generated ids."""
        if backend.api != "completions":
            raise EktError("the llama-server backend uses the completions API (backend.api)")
        if backend.n_per_request != 1:
            raise EktError("backend.n_per_request must be 1 for llama-server (one seed per sample)")
        super().__init__(model, backend, **kw)
        self.root = server_root(backend.base_url)
        self.cache_prompt = backend.cache_prompt
        self.prompt_cached = 0  # prompt tokens taken from the server's cache, over all requests
        self._lock = threading.Lock()
        self._info: ServerInfo | None = None
        # (problem id, sample index) -> the token ids the server generated, when kept: the
        # exact check of ``n_tokens`` against the model's tokenizer (tests, benchmarks)
        self.token_ids: dict[tuple[str, int], list[int]] | None = {} if keep_token_ids else None

    @property
    def endpoint(self) -> str:
        return f"{self.root}/completion"

    def info(self) -> ServerInfo:
        if self._info is None:
            self._info = probe(self.root)
        return self._info

    def server_slots(self) -> int | None:
        return self.info().slots or None

    def _body(self, prompt: str, problem_id: str, unit: _Unit, params: SamplingParams) -> dict:
        body: dict[str, Any] = {
            "prompt": prompt,
            "n_predict": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": 0,
            "min_p": 0.0,
            "samplers": ["temperature", "top_p"],
            "seed": derive_seed(params.seed, problem_id, unit.start) % (2**31),
            "cache_prompt": self.cache_prompt,
            "stream": False,
        }
        if self.token_ids is not None:
            body["return_tokens"] = True
        stop = list(params.stop)[: self.max_stop] if self.max_stop else list(params.stop)
        if stop:
            body["stop"] = stop
        body.update(self.extra_body)
        return body

    def _answered(self, out: dict) -> bool:
        counted = _count(out.get("tokens_predicted")) is not None
        return isinstance(out.get("content"), str) and counted

    def _request(
        self,
        prompt: Any,
        problem_id: str,
        unit: _Unit,
        params: SamplingParams,
        abandoned: threading.Event,
    ) -> tuple[dict, list[_Choice]]:
        out, choices = super()._request(prompt, problem_id, unit, params, abandoned)
        if self.token_ids is not None and isinstance(out.get("tokens"), list):
            with self._lock:
                self.token_ids[(problem_id, unit.start)] = list(out["tokens"])
        return out, choices

    def _choices(self, out: dict) -> list[_Choice]:
        """The one sample of a ``/completion`` reply; every field used is checked first."""
        timings = out.get("timings")
        if timings is not None and not isinstance(timings, dict):
            raise _Malformed(f"'timings' is not an object: {quote(json.dumps(timings)[:200])}")
        tokens = out.get("tokens")
        if tokens is not None and not (
            isinstance(tokens, list) and all(_count(t) is not None for t in tokens)
        ):
            raise _Malformed(f"'tokens' is not a list of ids: {quote(json.dumps(tokens)[:200])}")
        counts = {}
        for k in ("tokens_predicted", "tokens_evaluated"):
            if out.get(k) is not None:
                counts[k] = _count(out[k])
                if counts[k] is None:
                    raise _Malformed(f"{k} is not a token count: {quote(json.dumps(out[k])[:200])}")
        stop = out.get("stopping_word") if out.get("stop_type") == "word" else ""
        if stop is not None and not isinstance(stop, str):
            raise _Malformed(f"'stopping_word' is not a string: {quote(json.dumps(stop)[:200])}")
        cached = _count((timings or {}).get("cache_n"))
        if cached is not None:
            with self._lock:
                self.prompt_cached += cached
        return [
            _Choice(
                out["content"],
                counts["tokens_predicted"],
                counts.get("tokens_evaluated") or 0,
                stop or "",
            )
        ]

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """The server's own tokenisation of each text (no BOS), for checks and tests."""
        out = []
        for text in texts:
            req = urllib.request.Request(
                f"{self.root}/tokenize",
                data=json.dumps({"content": text, "add_special": False}).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                out.append(list(json.loads(resp.read())["tokens"]))
        return out


START_TIMEOUT = 180.0  # seconds a llama-server has to load its model and answer


class LlamaServerProcess:
    """``llama-server`` run by ekt on 127.0.0.1, for tests and benchmarks; ``stop()`` ends it.

    ``slots`` sequences decode at once (``-np``), each with ``ctx_per_slot`` tokens of
    context; ``threads`` CPU threads; ``--poll 0`` (no busy-waiting) because a spinning
    thread pool is ten times slower on a CPU that other processes share.
    """

    def __init__(
        self,
        gguf: str | Path,
        *,
        slots: int = 4,
        threads: int = 2,
        ctx_per_slot: int = 2048,
        log: str | Path | None = None,
        binary: str | Path | None = None,
    ):
        import socket
        import subprocess

        from ekt.generation.backends.openai_compat import wait_for_server

        exe = Path(binary) if binary else require_llama_server()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        cmd = [str(exe), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["-np", str(slots), "-c", str(ctx_per_slot * slots), "-t", str(threads)]
        cmd += ["--poll", "0", "--no-webui"]
        self.log = Path(log) if log else None
        sink = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
        finally:
            if self.log:
                sink.close()  # type: ignore[union-attr]
        try:
            wait_for_server(self.base_url, timeout=START_TIMEOUT)
        except EktError:
            self.stop()
            tail = self.log.read_text()[-3000:] if self.log else ""
            raise EktError(f"llama-server did not start ({' '.join(cmd)}):\n{tail}") from None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        import subprocess

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> LlamaServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def require_llama_server() -> Path:
    """``find_llama_server()``, or an error that says how to get the binary."""
    exe = find_llama_server()
    if exe is None:
        raise EktError(
            "llama-server not found: build it once with `make llama-server` "
            "(scripts/build_llama_server.sh) or set EKT_LLAMA_SERVER"
        )
    return exe


def find_llama_server() -> Path | None:
    """The ``llama-server`` binary: ``$EKT_LLAMA_SERVER``, the cached build, else ``PATH``."""
    from ekt.models import cache_dir

    env = os.environ.get("EKT_LLAMA_SERVER")
    if env:
        path = Path(env).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise EktError(f"EKT_LLAMA_SERVER={env}: not an executable file")
        return path
    cached = cache_dir() / "llama.cpp" / LLAMA_CPP_VERSION / "bin" / "llama-server"
    if cached.is_file() and os.access(cached, os.X_OK):
        return cached
    found = shutil.which("llama-server")
    return Path(found) if found else None


__all__ = [
    "LLAMA_CPP_VERSION",
    "LlamaServerProcess",
    "LlamaServerSampler",
    "ServerInfo",
    "find_llama_server",
    "require_llama_server",
    "probe",
    "server_root",
]
