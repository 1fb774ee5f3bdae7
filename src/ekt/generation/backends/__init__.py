"""Which engine samples: one ``BackendConfig`` (a YAML block, or CLI flags) -> one ``Sampler``.

=============  ==========================================  ==============================
name           engine                                      install
=============  ==========================================  ==============================
transformers   ekt's own decode loop (``torch_sampler``)    nothing extra (default, CPU or GPU)
openai         an OpenAI-compatible server over HTTP       nothing extra (stdlib client)
               (llama.cpp's llama-server: its own endpoint)
vllm           vLLM's offline engine, TP and DP            ``pip install 'ekt[vllm]'``
llamacpp       a ``llama-server`` ekt starts on loopback   ``make llama-server`` (cached)
               (the model's GGUF; slots = batch size)
=============  ==========================================  ==============================

In a run config the block sits under ``teacher_sampling.backend`` and
``eval.backend``; ``ekt generate`` and ``ekt evaluate`` take the same keys as
flags (``--backend``, ``--base-url``, ...). See ``configs/vllm_example.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ekt.errors import EktError

if TYPE_CHECKING:
    from ekt.generation.sampler import Sampler

BACKENDS = ("transformers", "llamacpp", "openai", "vllm")
SERVERS = ("auto", "llama.cpp", "generic")


@dataclass
class BackendConfig:
    """The engine that samples; in a run config a ``backend:`` block, on the command line
    ``--backend NAME`` and one flag per other field (``--base-url``, ...)."""

    name: Literal["transformers", "llamacpp", "openai", "vllm"] = "transformers"
    """sampling engine: transformers (this process), openai (a server over HTTP), vllm,
    llamacpp (a llama-server that ekt starts itself: the model's GGUF, one slot per batch row)"""
    base_url: str = "http://127.0.0.1:8000/v1"
    """openai: the server's base URL"""
    api: Literal["completions", "chat"] = "completions"
    """openai: the endpoint used (chat: a chat prompt format's messages as they are)"""
    served_model: str = ""
    """openai: the model name the server knows ("" = the model spec)"""
    server: Literal["auto", "llama.cpp", "generic"] = "auto"
    """openai: which server; auto asks GET /props (llama.cpp answers, and its own /completion
    endpoint is used: per-sample token counts, seeds, prompt cache), generic: the OpenAI API only"""
    concurrency: int = 0
    """openai: requests in flight at once (0 = the server's slots where it says, else 8)"""
    n_per_request: int = 1
    """openai: samples per request (1: each sample its own seed and token counts; 0 = all n)"""
    trim_prompt: bool = True
    """openai completions: send the prompt without its trailing newline and let the model write
    it with the indentation (a server tokenises a bare trailing newline the model never saw)"""
    cache_prompt: bool = True
    """openai, llama.cpp: reuse the slot's cached prompt prefix"""
    request_timeout: float = 600.0
    """openai: seconds for a whole HTTP request (connect, headers and body together)"""
    max_retries: int = 8
    """openai: retries of a failed request (with backoff)"""
    api_key_env: str = "OPENAI_API_KEY"
    """openai: the environment variable holding the API key (sent as a Bearer token; unset:
    no Authorization header)"""
    headers: dict[str, str] = field(default_factory=dict)
    """openai: extra HTTP headers on every request (a flag takes JSON)"""
    extra_body: dict[str, Any] = field(default_factory=dict)
    """openai: keys merged into every request body (a flag takes JSON: '{"top_k": 20}')"""
    max_stop: int = 0
    """openai: most stop strings sent per request, the rest cut on the client (0: all of them,
    except 4 for api.openai.com, which refuses more)"""
    requests_per_minute: float = 0.0
    """openai: request rate limit (0: none)"""
    tokens_per_minute: float = 0.0
    """openai: token rate limit, prompt + max_tokens per request (0: none)"""
    price_input_per_mtok: float = 0.0
    """price table: USD per million prompt tokens (the cost in the stage summary, results.json)"""
    price_output_per_mtok: float = 0.0
    """price table: USD per million completion tokens"""
    tensor_parallel_size: int = 1
    """vllm: GPUs each model replica is split over"""
    data_parallel_size: int = 1
    """vllm: model replicas"""
    gpu_memory_utilization: float = 0.9
    """vllm: share of GPU memory the engine may take"""
    enable_prefix_caching: bool = True
    """vllm: reuse the key/value cache of shared prompt prefixes"""
    max_model_len: int = 0
    """vllm: context length (0 = the model's own)"""
    threads: int = 0
    """llamacpp: CPU threads of the server (0 = torch's thread count)"""
    ctx_per_slot: int = 2048
    """llamacpp: context tokens per slot (prompt + new tokens)"""
    gguf_outtype: Literal["f32", "f16", "bf16", "q8_0"] = "f32"
    """llamacpp: weight type of a transformers folder converted to GGUF (f32: as trained)"""
    gguf_decode: bool = True
    """transformers on a CPU, a model that ships as GGUF (a preset, a .gguf file): decode steps
    multiply with its quantised blocks as they ship (the float32 model's product, summed in
    another order; ekt.generation.qkernel) instead of the dequantised float32 weights"""

    def validate(self) -> None:
        if self.name not in BACKENDS:
            raise EktError(f"backend: unknown {self.name!r}; choose {', '.join(BACKENDS)}")
        if self.api not in ("completions", "chat"):
            raise EktError(f"backend.api must be completions or chat, got {self.api!r}")
        if self.server not in SERVERS:
            raise EktError(
                f"backend.server must be one of {', '.join(SERVERS)}, got {self.server!r}"
            )
        for key in ("tensor_parallel_size", "data_parallel_size"):
            if getattr(self, key) < 1:
                raise EktError(f"backend.{key} must be >= 1")
        if self.gguf_outtype not in ("f32", "f16", "bf16", "q8_0"):
            raise EktError(
                f"backend.gguf_outtype must be f32, f16, bf16 or q8_0, got {self.gguf_outtype!r}"
            )
        if self.ctx_per_slot < 1:
            raise EktError("backend.ctx_per_slot must be >= 1")
        for key in ("concurrency", "n_per_request", "threads"):
            if getattr(self, key) < 0:
                raise EktError(f"backend.{key} must be >= 0")
        for key in ("max_stop", "requests_per_minute", "tokens_per_minute",
                    "price_input_per_mtok", "price_output_per_mtok"):  # fmt: skip
            if not getattr(self, key) >= 0:
                raise EktError(f"backend.{key} must be >= 0, got {getattr(self, key)!r}")
        if not isinstance(self.headers, dict) or any(
            not isinstance(k, str) or not isinstance(v, str) for k, v in self.headers.items()
        ):
            raise EktError("backend.headers must map header names to text values")
        if not isinstance(self.extra_body, dict):
            raise EktError("backend.extra_body must be a mapping (JSON object)")
        if not isinstance(self.api_key_env, str):
            raise EktError("backend.api_key_env must be the name of an environment variable")

    @property
    def price(self) -> tuple[float, float] | None:
        """(USD per million prompt tokens, per million completion tokens), or None."""
        if not (self.price_input_per_mtok or self.price_output_per_mtok):
            return None
        return (self.price_input_per_mtok, self.price_output_per_mtok)


def make_sampler(
    spec: str, device: str | None, batch_size: int, backend: BackendConfig | None = None
) -> Callable[[], Sampler]:
    """A factory for the configured sampler (models load only when it is called)."""
    cfg = backend or BackendConfig()
    cfg.validate()

    def make() -> Sampler:
        # each engine's module is imported when a sampler is made, not with the config
        # (`ekt --help` and `ekt verify` read BackendConfig and never sample)
        if cfg.name == "openai":
            from ekt.generation.backends import llamacpp_server as ls
            from ekt.generation.backends.openai_compat import OpenAISampler

            model = cfg.served_model or spec
            if cfg.api == "completions" and cfg.server != "generic":
                if cfg.server == "llama.cpp" or ls.probe(cfg.base_url).kind == "llama.cpp":
                    return ls.LlamaServerSampler(model, cfg)
            return OpenAISampler(model, cfg)
        if cfg.name == "vllm":
            from ekt.generation.backends.vllm_offline import VLLMSampler
            from ekt.models import resolve_model

            return VLLMSampler(resolve_model(spec), cfg)
        if cfg.name == "llamacpp":
            from ekt.generation.backends.llamacpp_local import LlamaLocalSampler

            return LlamaLocalSampler(spec, cfg, slots=batch_size)
        from ekt.generation import qkernel
        from ekt.generation.backends.torch_sampler import TransformersSampler
        from ekt.models import load_model

        model, tok = load_model(spec, device=device)
        quantized = qkernel.for_spec(model, spec) if cfg.gguf_decode else None
        return TransformersSampler(model, tok, batch_size=batch_size, quantized=quantized)

    return make


__all__ = ["BACKENDS", "SERVERS", "BackendConfig", "make_sampler"]
