"""Which engine samples: one ``BackendConfig`` (a YAML block, or CLI flags) -> one ``Sampler``.

=============  ==========================================  ==============================
name           engine                                      install
=============  ==========================================  ==============================
transformers   ``ekt.generation.sampling.TransformersSampler``        (default, CPU or GPU)
openai         an OpenAI-compatible server over HTTP       nothing extra (stdlib client)
               (llama.cpp's llama-server: its own endpoint)
vllm           vLLM's offline engine, TP and DP            ``pip install 'ekt[vllm]'``
=============  ==========================================  ==============================

In a run config the block sits under ``teacher_sampling.backend`` and
``eval.backend``; ``ekt generate`` and ``ekt evaluate`` take the same keys as
flags (``--backend``, ``--base-url``, ...). See ``configs/vllm_example.yaml``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from ekt.errors import EktError
from ekt.generation.sampling import Sampler

BACKENDS = ("transformers", "openai", "vllm")
SERVERS = ("auto", "llama.cpp", "generic")


@dataclass
class BackendConfig:
    name: str = "transformers"  # transformers | openai | vllm
    # openai: the server, and how to talk to it
    base_url: str = "http://127.0.0.1:8000/v1"
    api: str = "completions"  # completions | chat
    served_model: str = ""  # model name the server knows ("" = the model spec)
    # which server: auto asks GET /props (llama.cpp answers: its own endpoint is used,
    # ekt.generation.backends.llamacpp_server), llama.cpp, or generic (the OpenAI API only)
    server: str = "auto"
    concurrency: int = 0  # requests in flight; 0 = the server's slots where it says, else 8
    n_per_request: int = 1  # samples per request (1: own seed and token counts); 0 = all n
    # completions: send the prompt without its trailing newline and let the model write it
    # with the indentation (a server tokenises a bare trailing newline the model never saw)
    trim_prompt: bool = True
    cache_prompt: bool = True  # llama.cpp: reuse the slot's cached prompt prefix
    request_timeout: float = 600.0  # seconds per HTTP request
    max_retries: int = 8
    # openai, hosted APIs: the environment variable holding the API key (sent as a Bearer
    # token; unset: no Authorization header), extra HTTP headers, and keys merged into every
    # request body (a flag takes JSON: --extra-body '{"top_k": 20}')
    api_key_env: str = "OPENAI_API_KEY"
    headers: dict[str, str] = field(default_factory=dict)
    extra_body: dict[str, Any] = field(default_factory=dict)
    # most stop strings sent per request; the rest are cut on the client
    # (0: all of them, except 4 for api.openai.com, which refuses more)
    max_stop: int = 0
    requests_per_minute: float = 0.0  # 0: no limit
    tokens_per_minute: float = 0.0  # prompt + max_tokens per request; 0: no limit
    # price table, USD per million prompt / completion tokens: the cost in the stage summary
    # and results.json (both 0: no cost shown)
    price_input_per_mtok: float = 0.0
    price_output_per_mtok: float = 0.0
    # vllm: the engine
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    max_model_len: int = 0  # 0 = the model's own

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
        for key in ("concurrency", "n_per_request"):
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
        if cfg.name == "openai":
            from ekt.generation.backends.openai_compat import OpenAISampler

            common = dict(
                api=cfg.api,
                concurrency=cfg.concurrency,
                n_per_request=cfg.n_per_request,
                timeout=cfg.request_timeout,
                max_retries=cfg.max_retries,
                api_key_env=cfg.api_key_env,
                headers=cfg.headers,
                extra_body=cfg.extra_body,
                max_stop=cfg.max_stop,
                requests_per_minute=cfg.requests_per_minute,
                tokens_per_minute=cfg.tokens_per_minute,
                trim_prompt=cfg.trim_prompt,
            )
            if cfg.api == "completions" and cfg.server != "generic":
                from ekt.generation.backends import llamacpp_server as ls

                if cfg.server == "llama.cpp" or ls.probe(cfg.base_url).kind == "llama.cpp":
                    return ls.LlamaServerSampler(
                        cfg.base_url, cfg.served_model or spec, cache_prompt=cfg.cache_prompt,
                        **common,  # type: ignore[arg-type]
                    )  # fmt: skip
            return OpenAISampler(cfg.base_url, cfg.served_model or spec, **common)  # type: ignore[arg-type]
        if cfg.name == "vllm":
            from ekt.generation.backends.vllm_offline import VLLMSampler
            from ekt.models import resolve_model

            return VLLMSampler(
                resolve_model(spec),
                tensor_parallel_size=cfg.tensor_parallel_size,
                data_parallel_size=cfg.data_parallel_size,
                gpu_memory_utilization=cfg.gpu_memory_utilization,
                enable_prefix_caching=cfg.enable_prefix_caching,
                max_model_len=cfg.max_model_len or None,
            )
        from ekt.generation.sampling import TransformersSampler
        from ekt.models import load_model

        model, tok = load_model(spec, device=device)
        return TransformersSampler(model, tok, batch_size=batch_size)

    return make


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def add_backend_args(p: argparse.ArgumentParser) -> None:
    """``--backend`` and one flag per ``BackendConfig`` key (``--base-url``, ...)."""
    for f in fields(BackendConfig):
        flag = "--backend" if f.name == "name" else "--" + f.name.replace("_", "-")
        if f.default is dataclasses.MISSING:  # a dict field: JSON on the command line
            p.add_argument(
                flag, dest=f"backend_{f.name}", type=_json_object, default={},
                help="a JSON object",
            )  # fmt: skip
        elif isinstance(f.default, bool):
            p.add_argument(
                flag, dest=f"backend_{f.name}", default=f.default,
                action=argparse.BooleanOptionalAction,
            )  # fmt: skip
        else:
            p.add_argument(
                flag,
                dest=f"backend_{f.name}",
                type=type(f.default),
                default=f.default,
                choices=BACKENDS if f.name == "name" else None,
                help=f"sampling backend (default: {f.default})" if f.name == "name" else None,
            )


def backend_from_args(args: argparse.Namespace) -> BackendConfig:
    cfg = BackendConfig(
        **{f.name: getattr(args, f"backend_{f.name}") for f in fields(BackendConfig)}
    )
    cfg.validate()
    return cfg


__all__ = [
    "BACKENDS",
    "SERVERS",
    "BackendConfig",
    "add_backend_args",
    "backend_from_args",
    "make_sampler",
]
