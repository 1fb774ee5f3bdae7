"""Backend selection: the YAML block and CLI flags, and vLLM's mapping of SamplingParams.

The vLLM engine itself needs a CUDA GPU; its end-to-end test skips here with the reason.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

from ekt.errors import EktError
from ekt.generation.backends import BackendConfig, make_sampler
from ekt.generation.backends.vllm_offline import VLLMSampler, to_completions, vllm_params
from ekt.generation.sampling import SamplingParams, derive_seed
from ekt.pipeline.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_yaml_block_reaches_the_config(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(
        "teacher_sampling:\n  backend: {name: openai, base_url: 'http://h:9/v1', api: chat}\n"
        "eval:\n  backend: {name: vllm, tensor_parallel_size: 2}\n"
    )
    cfg = load_config(p)
    assert cfg.teacher_sampling.backend == BackendConfig(
        name="openai", base_url="http://h:9/v1", api="chat"
    )
    assert cfg.eval.backend.name == "vllm" and cfg.eval.backend.tensor_parallel_size == 2


@pytest.mark.parametrize(
    "block, message",
    [
        ("teacher_sampling:\n  backend: {name: tgi}\n", "openai, vllm, got tgi"),
        ("teacher_sampling:\n  backend: {api: grpc}\n", "one of completions, chat, got grpc"),
        ("teacher_sampling:\n  backend: {concurrency: 0}\n", "concurrency must be >= 1"),
        ("teacher_sampling:\n  backend: {port: 3}\n", "unknown key"),
        ("eval:\n  backend: {name: openai}\n", "cannot serve the students"),
    ],
)
def test_bad_backend_blocks_are_refused(tmp_path, block, message):
    p = tmp_path / "c.yaml"
    p.write_text(block)
    with pytest.raises(EktError, match=message):
        load_config(p)


def test_cli_flags_map_one_to_one():
    from ekt.cli import parse

    base = ["--model", "m", "--out", "o"]
    flags = ["--backend", "vllm", "--data-parallel-size", "4", "--no-enable-prefix-caching"]
    options, _ = parse("generate", base + flags)
    want = BackendConfig(name="vllm", data_parallel_size=4, enable_prefix_caching=False)
    assert options.sampling.backend == want
    assert parse("generate", base)[0].sampling.backend == BackendConfig()


def test_shipped_vllm_config_loads():
    cfg = load_config(CONFIGS / "vllm_example.yaml")
    assert cfg.teacher_sampling.backend.name == "vllm"
    assert cfg.teacher_sampling.backend.data_parallel_size == 2
    assert cfg.eval.backend.name == "vllm"


def test_vllm_params_follow_sampling_params():
    sp = SamplingParams(n=7, temperature=0.6, top_p=0.9, max_new_tokens=99, seed=5)
    got = vllm_params(sp, "gsm8k/3")
    assert got["n"] == 7 and got["temperature"] == 0.6 and got["top_p"] == 0.9
    assert got["max_tokens"] == 99 and got["stop"] == list(sp.stop)
    assert got["seed"] == derive_seed(5, "gsm8k/3", 0) % 2**31
    assert vllm_params(sp, "gsm8k/4")["seed"] != got["seed"]
    assert vllm_params(SamplingParams(n=7, temperature=0), "x")["n"] == 1  # greedy: one


def test_vllm_outputs_become_ordered_records_cut_at_stop():
    sp = SamplingParams(n=2, temperature=1.0, stop=("\n\n\n",))
    outs = [
        SimpleNamespace(index=1, text="b = 2\n\n\nnoise", token_ids=[1, 2, 3]),
        SimpleNamespace(index=0, text="a = 1", token_ids=[4]),
    ]
    got = to_completions("p", outs, sp)
    assert [(c.sample_idx, c.text, c.n_tokens) for c in got] == [(0, "a = 1", 1), (1, "b = 2", 3)]
    with pytest.raises(EktError, match="returned 1 samples"):
        to_completions("p", outs[:1], sp)
    greedy = to_completions("p", outs[1:], SamplingParams(n=3, temperature=0))
    assert [c.text for c in greedy] == ["a = 1"] * 3


def test_make_sampler_is_lazy_and_says_why_vllm_is_missing():
    factory = make_sampler("some/model", None, 8, BackendConfig(name="vllm"))
    if importlib.util.find_spec("vllm") is None:
        sampler = factory()  # building the sampler loads nothing yet ...
        assert isinstance(sampler, VLLMSampler)
        with pytest.raises(EktError, match="vLLM is not importable"):  # ... sampling does
            list(sampler.sample([("p", "q")], SamplingParams(n=1)))


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None or not _cuda(),
    reason="vLLM needs a CUDA GPU and `pip install 'ekt[vllm]'`; this machine has neither",
)
def test_vllm_engine_end_to_end(tiny_model_dir):
    sampler = make_sampler(str(tiny_model_dir), "cuda", 8, BackendConfig(name="vllm"))()
    sp = SamplingParams(n=3, temperature=1.0, max_new_tokens=8, seed=1)
    out = list(sampler.sample([("a", "x = "), ("b", "y = ")], sp))
    assert sorted((c.problem_id, c.sample_idx) for c in out) == [
        (p, i) for p in "ab" for i in range(3)
    ]
    again = list(sampler.sample([("a", "x = "), ("b", "y = ")], sp))
    assert again == out  # seeded
