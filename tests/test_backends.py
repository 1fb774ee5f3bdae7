"""Backend selection: the YAML block and CLI flags, and vLLM's mapping of SamplingParams.

The vLLM engine itself needs a CUDA GPU; its end-to-end test skips here with the reason.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from ekt.errors import EktError
from ekt.generation.backends import BackendConfig, make_sampler
from ekt.generation.backends.vllm_offline import VLLMSampler, to_completions, vllm_params
from ekt.generation.config import SamplingParams
from ekt.generation.sampler import derive_seed
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
        ("teacher_sampling:\n  backend: {concurrency: -1}\n", "concurrency must be >= 0"),
        ("teacher_sampling:\n  backend: {server: tgi}\n", "llama.cpp, generic, got tgi"),
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


def test_shipped_chat_teacher_config_loads():
    cfg = load_config(CONFIGS / "chat_teacher.yaml")
    b = cfg.teacher_sampling.backend
    assert cfg.teacher_sampling.prompt_format == "chat" and cfg.student_prompt_format == "chat"
    assert b.name == "openai" and b.api == "chat" and b.api_key_env == "OPENAI_API_KEY"


@pytest.mark.parametrize(
    "block, message",
    [
        ("teacher_sampling:\n  backend: {max_stop: -1}\n", "max_stop must be >= 0"),
        ("teacher_sampling:\n  backend: {headers: {X-A: 1}}\n",
         r"teacher_sampling\.backend\.headers: expected str, got 1"),
        ("teacher_sampling:\n  backend: {extra_body: [1]}\n",
         r"teacher_sampling\.backend\.extra_body: expected dict"),
        ("teacher_sampling:\n  prompt_format: nosuch\n", "teacher_sampling.prompt_format"),
        ("student_prompt_format: chat.yml\n", "no such YAML file"),
    ],
)
def test_bad_chat_settings_are_refused(tmp_path, block, message):
    p = tmp_path / "c.yaml"
    p.write_text(block)
    with pytest.raises(EktError, match=message):
        load_config(p)


def test_hosted_api_flags_take_json():
    from ekt.cli import UsageError, parse

    o, _ = parse("generate", [
        "--model", "m", "--out", "o",
        "--api-key-env", "MY_KEY", "--headers", '{"X-Team": "ekt"}',
        "--extra-body", '{"top_k": 20}', "--max-stop", "4", "--requests-per-minute", "60",
        "--price-input-per-mtok", "0.15", "--price-output-per-mtok", "0.6",
    ])  # fmt: skip
    cfg = o.sampling.backend
    assert cfg.headers == {"X-Team": "ekt"} and cfg.extra_body == {"top_k": 20}
    assert cfg.price == (0.15, 0.6) and cfg.max_stop == 4 and cfg.api_key_env == "MY_KEY"
    with pytest.raises((UsageError, EktError)):
        parse("generate", ["--model", "m", "--out", "o", "--headers", "[1]"])


def test_a_chat_format_on_the_completions_api_is_refused_before_any_request(
    data_dir, tmp_path, capsys
):
    from ekt.cli import main

    argv = [
        "generate", "--model", "m", "--data-dir", str(data_dir), "--limit", "1",
        "--prompt-format", "chat", "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1",
        "--out", str(tmp_path / "g"),
    ]  # fmt: skip
    assert main(argv) != 0
    assert "only with --api chat" in capsys.readouterr().err
    assert not (tmp_path / "g" / "samples").exists()


def test_vllm_index_ranges_are_one_seeded_request_per_index():
    """``start``: each index is its own n=1 request seeded from (seed, problem, index), so a
    round draws an index the same way whatever the rounds are (a stand-in engine that
    writes the seed it was given)."""

    class Engine:
        def __init__(self, **kw):
            self.calls = []

        def generate(self, prompts, sps, use_tqdm=False):
            self.calls.append(sps)
            return [
                SimpleNamespace(
                    outputs=[SimpleNamespace(index=0, text=f"s{sp['seed']}", token_ids=[1])]
                )
                for sp in sps
            ]

    sampler = VLLMSampler("m", BackendConfig("vllm"), llm_factory=Engine, chunk_size=3)
    sp = SamplingParams(n=2, temperature=0.8, seed=5)
    got = list(sampler.sample([("a", "p"), ("b", "q")], sp, start=2))
    assert [(c.problem_id, c.sample_idx) for c in got] == [("a", 2), ("a", 3), ("b", 2), ("b", 3)]
    for c in got:
        assert c.text == f"s{derive_seed(5, c.problem_id, c.sample_idx) % 2**31}"
    assert all(x["n"] == 1 for call in sampler._llm.calls for x in call)
    greedy = list(sampler.sample([("a", "p")], SamplingParams(n=3, temperature=0), start=4))
    assert [c.sample_idx for c in greedy] == [4, 5, 6] and len({c.text for c in greedy}) == 1
    # start=None: indices 0 .. n-1, each drawn as a round would draw it
    whole = list(sampler.sample([("a", "p")], SamplingParams(n=4, temperature=0.8, seed=5)))
    rounds = [c for i in (0, 2) for c in sampler.sample([("a", "p")], replace(sp, n=2), i)]
    assert [c.text for c in whole] == [c.text for c in rounds]
    assert [c.sample_idx for c in whole] == [0, 1, 2, 3]


def test_llamacpp_backend_flags_reach_its_sampler(monkeypatch):
    """backend llamacpp: its settings from flags, and the sampler gets one slot per batch row."""
    import ekt.generation.backends.llamacpp_server as ls

    monkeypatch.setattr(ls, "find_llama_server", lambda: Path("/bin/true"))
    cfg = BackendConfig(name="llamacpp", threads=3, ctx_per_slot=1024, gguf_outtype="f16")
    sampler = make_sampler("smollm2-135m", None, 6, cfg)()
    assert (sampler.slots, sampler.threads, sampler.ctx_per_slot) == (6, 3, 1024)
    assert sampler.outtype == "f16" and sampler.server is None  # started on the first sample()
    with pytest.raises(EktError, match="gguf_outtype"):
        make_sampler("m", None, 4, BackendConfig(name="llamacpp", gguf_outtype="q4"))
