"""Sampling with vLLM's offline engine, on one GPU, several (tensor parallel), or replicas.

``VLLMSampler(model, ...).sample(requests, params)`` maps ``SamplingParams``
one to one onto vLLM's: ``n``, ``temperature``, ``top_p``, ``max_tokens``,
``stop``, with one request per sample index seeded from (seed, problem, index),
so a seeded job is reproducible on the same hardware and vLLM version. Automatic prefix caching
(on by default) lets every prompt reuse the few-shot prefix's key/value
blocks. ``tensor_parallel_size`` shards one model over that many GPUs;
``data_parallel_size`` > 1 starts that many engine processes, each on its own
``tensor_parallel_size`` GPUs (``CUDA_VISIBLE_DEVICES`` slices), and deals
the problems out round-robin. Requests go to the engine in chunks of
``chunk_size`` problems so that results stream back to the writer.

vLLM needs a CUDA GPU and ``pip install 'ekt[vllm]'``; see ``configs/vllm_example.yaml``.
A prompt given as chat messages (a ``chat`` prompt format) is rendered with the
model's own chat template (``ekt.generation.sampler.chat_ids``) and sent as token
ids. Greedy (temperature 0) asks for one sample and reports it ``n`` times, as the
other samplers do. ``n_tokens`` is the number of generated token ids vLLM
reports, which include the token that completed a stop string.

Every sample index is its own single-sample request, seeded from (seed, problem,
index), as every other ekt sampler seeds it: ``sample(..., start=i)`` (an adaptive
teacher budget's rounds) draws indices ``i .. i+n-1`` exactly as a whole call
(``start=None``, indices ``0 .. n-1``) draws them, whatever the rounds are, so an
adaptive run keeps a full run's pairs. The prefix cache computes a prompt once for
all of its indices (vLLM splits an ``n > 1`` request into ``n`` sequences anyway).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ekt.errors import EktError
from ekt.generation.backends import BackendConfig
from ekt.generation.config import SamplingParams
from ekt.generation.sampler import chat_ids, derive_seed, truncate_at_stop
from ekt.records import Completion


def vllm_params(params: SamplingParams, problem_id: str, index: int | None = None) -> dict:
    """The keyword arguments of ``vllm.SamplingParams`` for one problem's request; with
    ``index``, the request of that one sample index (n = 1, its own seed)."""
    return {
        "n": 1 if params.greedy or index is not None else params.n,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_new_tokens,
        "stop": list(params.stop),
        "seed": derive_seed(params.seed, problem_id, index or 0) % (2**31),
    }


def to_completions(
    problem_id: str, outputs: Sequence[Any], params: SamplingParams
) -> list[Completion]:
    """vLLM ``CompletionOutput``s of one request -> ekt records (text cut at the first stop)."""
    got = sorted(outputs, key=lambda o: getattr(o, "index", 0))
    if params.greedy:
        got = got[:1] * params.n
    if len(got) < params.n:
        raise EktError(f"vLLM returned {len(got)} samples for {problem_id}, expected {params.n}")
    return [
        Completion(problem_id, i, truncate_at_stop(o.text, params.stop)[0], len(o.token_ids))
        for i, o in enumerate(got[: params.n])
    ]


class VLLMSampler:
    """Sampler over ``vllm.LLM`` (see the module docstring)."""

    def __init__(
        self,
        model: str,
        backend: BackendConfig,
        *,
        dtype: str = "auto",
        chunk_size: int = 256,
        llm_kwargs: dict | None = None,
        llm_factory: Callable[..., Any] | None = None,
    ):
        """The model folder ``model`` on ``backend``'s vllm settings (tensor and data
        parallel sizes, GPU memory share, prefix caching, context length); ``chunk_size``
        requests go to the engine at a time; ``llm_kwargs``: more ``vllm.LLM`` arguments."""
        b = backend
        if b.tensor_parallel_size < 1 or b.data_parallel_size < 1:
            raise EktError("tensor_parallel_size and data_parallel_size must be >= 1")
        self.model = model
        self.tensor_parallel_size = b.tensor_parallel_size
        self.data_parallel_size = b.data_parallel_size
        self.chunk_size = max(1, chunk_size)
        self.engine_kwargs: dict[str, Any] = {
            "model": model,
            "tensor_parallel_size": b.tensor_parallel_size,
            "dtype": dtype,
            "gpu_memory_utilization": b.gpu_memory_utilization,
            "enable_prefix_caching": b.enable_prefix_caching,
            **({"max_model_len": b.max_model_len} if b.max_model_len else {}),
            **(llm_kwargs or {}),
        }
        self._factory = llm_factory  # tests pass a stand-in; None: vllm.LLM
        self._llm: Any = None

    def _engine(self) -> Any:
        if self._llm is None:
            factory = self._factory
            if factory is None:
                try:
                    from vllm import LLM
                except ImportError as e:
                    raise EktError(
                        f"vllm backend: vLLM is not importable ({e}); it needs a CUDA "
                        "machine and pip install 'ekt[vllm]'"
                    ) from None
                factory = LLM
            self._llm = factory(**self.engine_kwargs)
        return self._llm

    def _generate(
        self,
        llm: Any,
        chunk: Sequence[tuple[str, str]],
        params: SamplingParams,
        indices: Sequence[int | None] | None = None,
    ) -> Any:
        idx = list(indices) if indices is not None else [None] * len(chunk)
        if self._factory is None:
            from vllm import SamplingParams as VParams

            sps = [VParams(**vllm_params(params, pid, i)) for (pid, _), i in zip(chunk, idx)]
        else:
            sps = [vllm_params(params, pid, i) for (pid, _), i in zip(chunk, idx)]
        prompts: list[Any] = []
        for pid, p in chunk:
            if isinstance(p, str):
                prompts.append(p)
            else:  # chat messages: the model's chat template, as token ids (no second BOS)
                prompts.append({"prompt_token_ids": chat_ids(llm.get_tokenizer(), p, pid)})
        return llm.generate(prompts, sps, use_tqdm=False)

    def sample(
        self,
        requests: Sequence[tuple[str, str]],
        params: SamplingParams,
        start: int | None = None,
    ) -> Iterator[Completion]:
        start = start or 0
        if self.data_parallel_size > 1:
            yield from self._sample_replicas(requests, params, start)
            return
        # one request per sample index (module docstring)
        yield from self._sample_indices(self._engine(), requests, params, start)

    def _sample_indices(
        self, llm: Any, requests: Sequence[tuple[str, str]], params: SamplingParams, start: int
    ) -> Iterator[Completion]:
        """Indices ``start .. start+n-1`` of every request, each its own seeded request."""
        one = replace(params, n=1)
        per = 1 if params.greedy else params.n  # greedy: one request, reported n times
        units = [(pid, p, start + k) for pid, p in requests for k in range(per)]
        for s in range(0, len(units), self.chunk_size):
            chunk = units[s : s + self.chunk_size]
            reqs, idx = [(pid, p) for pid, p, _ in chunk], [i for *_, i in chunk]
            outs = self._generate(llm, reqs, one, idx)
            for (pid, _, i), out in zip(chunk, outs):
                for k, c in enumerate(to_completions(pid, out.outputs, one) * (params.n // per)):
                    yield replace(c, sample_idx=i + k)

    # ---- data parallel: one engine process per replica ------------------------------------

    def _sample_replicas(
        self, requests: Sequence[tuple[str, str]], params: SamplingParams, start: int | None
    ) -> Iterator[Completion]:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        tp = self.tensor_parallel_size
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = (
            visible.split(",") if visible else [str(i) for i in range(tp * self.data_parallel_size)]
        )
        if len(gpus) < tp * self.data_parallel_size:
            raise EktError(
                f"data_parallel_size {self.data_parallel_size} x tensor_parallel_size {tp} "
                f"needs {tp * self.data_parallel_size} GPUs, CUDA_VISIBLE_DEVICES has {len(gpus)}"
            )
        procs = []
        for r in range(self.data_parallel_size):
            share = list(requests[r :: self.data_parallel_size])
            devices = ",".join(gpus[r * tp : (r + 1) * tp])
            replica = _Replica(r, devices, self.engine_kwargs, self.chunk_size)
            p = ctx.Process(target=replica.run, args=(share, params, queue, start), daemon=True)
            p.start()
            procs.append(p)
        running = len(procs)
        try:
            while running:
                kind, payload = queue.get()
                if kind == "done":
                    running -= 1
                elif kind == "error":
                    raise EktError(f"vLLM replica failed: {payload}")
                else:
                    yield Completion(*payload)
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
                p.join(timeout=30)


@dataclass(frozen=True)
class _Replica:
    """One data-parallel engine: its rank, its GPUs (``CUDA_VISIBLE_DEVICES``), the engine's
    arguments and the requests per chunk; ``run`` samples its share in a process of its own."""

    rank: int
    devices: str
    engine_kwargs: dict
    chunk_size: int

    def run(
        self,
        requests: list[tuple[str, str]],
        params: SamplingParams,
        queue: Any,
        start: int | None = None,
    ) -> None:  # pragma: no cover - runs only with vLLM on GPUs
        os.environ["CUDA_VISIBLE_DEVICES"] = self.devices
        try:
            engine_kwargs = dict(self.engine_kwargs)
            model = engine_kwargs.pop("model")
            sampler = VLLMSampler(model, BackendConfig("vllm"), chunk_size=self.chunk_size)
            sampler.engine_kwargs.update(engine_kwargs)
            for c in sampler.sample(requests, params, start):
                queue.put(("completion", (c.problem_id, c.sample_idx, c.text, c.n_tokens)))
            queue.put(("done", self.rank))
        except BaseException as e:  # report, do not hang the parent
            queue.put(("error", f"replica {self.rank}: {type(e).__name__}: {e}"))


__all__ = ["VLLMSampler", "to_completions", "vllm_params"]
