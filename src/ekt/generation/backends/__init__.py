"""Which engine samples: one ``BackendConfig`` (a YAML block, or CLI flags) -> one ``Sampler``.

=============  ==========================================  ==============================
name           engine                                      install
=============  ==========================================  ==============================
transformers   ``ekt.generation.sampling.TransformersSampler``        (default, CPU or GPU)
openai         an OpenAI-compatible server over HTTP       nothing extra (stdlib client)
vllm           vLLM's offline engine, TP and DP            ``pip install 'ekt[vllm]'``
=============  ==========================================  ==============================

In a run config the block sits under ``teacher_sampling.backend`` and
``eval.backend``; ``ekt generate`` and ``ekt evaluate`` take the same keys as
flags (``--backend``, ``--base-url``, ...). See ``configs/vllm_example.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ekt.errors import EktError
from ekt.generation.backends.openai_compat import OpenAISampler
from ekt.generation.backends.vllm_offline import VLLMSampler  # imports vllm when used
from ekt.generation.sampling import Sampler, TransformersSampler
from ekt.models import load_model, resolve_model

BACKENDS = ("transformers", "openai", "vllm")


@dataclass
class BackendConfig:
    """The engine that samples; in a run config a ``backend:`` block, on the command line
    ``--backend NAME`` and one flag per other field (``--base-url``, ...)."""

    name: Literal["transformers", "openai", "vllm"] = "transformers"
    """sampling engine: transformers (this process), openai (a server over HTTP), vllm"""
    base_url: str = "http://127.0.0.1:8000/v1"
    """openai: the server's base URL"""
    api: Literal["completions", "chat"] = "completions"
    """openai: the endpoint used"""
    served_model: str = ""
    """openai: the model name the server knows ("" = the model spec)"""
    concurrency: int = 8
    """openai: requests in flight at once"""
    n_per_request: int = 0
    """openai: samples asked per request (0 = all n samples of a problem in one)"""
    request_timeout: float = 600.0
    """openai: seconds per HTTP request"""
    max_retries: int = 8
    """openai: retries of a failed request (with backoff)"""
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

    def validate(self) -> None:
        if self.name not in BACKENDS:
            raise EktError(f"backend: unknown {self.name!r}; choose {', '.join(BACKENDS)}")
        if self.api not in ("completions", "chat"):
            raise EktError(f"backend.api must be completions or chat, got {self.api!r}")
        for key in ("concurrency", "tensor_parallel_size", "data_parallel_size"):
            if getattr(self, key) < 1:
                raise EktError(f"backend.{key} must be >= 1")


def make_sampler(
    spec: str, device: str | None, batch_size: int, backend: BackendConfig | None = None
) -> Callable[[], Sampler]:
    """A factory for the configured sampler (models load only when it is called)."""
    cfg = backend or BackendConfig()
    cfg.validate()

    def make() -> Sampler:
        if cfg.name == "openai":
            return OpenAISampler(
                cfg.base_url,
                cfg.served_model or spec,
                api=cfg.api,
                concurrency=cfg.concurrency,
                n_per_request=cfg.n_per_request,
                timeout=cfg.request_timeout,
                max_retries=cfg.max_retries,
            )
        if cfg.name == "vllm":
            return VLLMSampler(
                resolve_model(spec),
                tensor_parallel_size=cfg.tensor_parallel_size,
                data_parallel_size=cfg.data_parallel_size,
                gpu_memory_utilization=cfg.gpu_memory_utilization,
                enable_prefix_caching=cfg.enable_prefix_caching,
                max_model_len=cfg.max_model_len or None,
            )
        model, tok = load_model(spec, device=device)
        return TransformersSampler(model, tok, batch_size=batch_size)

    return make


__all__ = ["BACKENDS", "BackendConfig", "make_sampler"]
