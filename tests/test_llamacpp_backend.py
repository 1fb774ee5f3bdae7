"""``backend: llamacpp``: ekt starts its own llama-server and samples through it, end to end.

Real server, real GGUFs: the smollm2-135m preset's GGUF as it ships, and a transformers
folder (the same preset, dequantised by transformers) converted by llama.cpp's own
``convert_hf_to_gguf.py``. Without ``make llama-server`` these tests skip and say so;
the conversion fetches the llama-cpp-python sdist through pip once (cached).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ekt.data.prompts import teacher_prompt
from ekt.errors import EktError
from ekt.generation.config import SamplingParams


def _need_server() -> None:
    from ekt.generation.backends.llamacpp_server import find_llama_server

    if find_llama_server() is None:
        pytest.skip("llama-server is not built: `make llama-server` (make test builds it)")


def _requests(data_dir, k: int = 2) -> list[tuple[str, str]]:
    from ekt.data.tasks import get_task

    problems = get_task("gsm8k", data_dir=data_dir).load("train")[:k]
    return [(p.id, teacher_prompt(p)) for p in problems]


PARAMS = SamplingParams(n=3, temperature=0.6, max_new_tokens=24, seed=7)


@pytest.mark.slow
def test_llamacpp_backend_samples_a_preset_end_to_end(data_dir):
    from ekt.generation.backends import BackendConfig, make_sampler

    _need_server()
    requests = _requests(data_dir)
    sampler = make_sampler("smollm2-135m", "cpu", 4, BackendConfig(name="llamacpp", threads=2))()
    try:
        first = list(sampler.sample(requests, PARAMS))
        port, cached = sampler.server.port, sampler.sampler.prompt_cached
        again = list(sampler.sample(requests, PARAMS))  # the same server, kept for later calls
        assert sampler.server.port == port
        assert sampler.server.proc.poll() is None
        assert sampler.sampler.server_slots() == 4  # one slot per batch row
        # the kept server's slots still hold the prompts: every request of the second call
        # takes at least the shared few-shot prefix from the cache
        assert sampler.sampler.prompt_cached - cached >= len(again) * 100
    finally:
        proc = sampler.server.proc
        sampler.close()
    assert proc.poll() is not None  # close() stopped the server it started
    assert sorted((c.problem_id, c.sample_idx) for c in first) == [
        (pid, i) for pid, _ in requests for i in range(PARAMS.n)
    ]
    assert all(1 <= c.n_tokens <= PARAMS.max_new_tokens for c in first)
    assert sum(len(c.text) for c in first) > 0


@pytest.mark.slow
def test_a_transformers_folder_is_converted_once_by_llama_cpps_converter(
    data_dir, tmp_path, monkeypatch
):
    from ekt.generation.backends import BackendConfig
    from ekt.generation.backends import llamacpp_local as ll
    from ekt.generation.backends.llamacpp_server import find_llama_server
    from ekt.models import resolve_model

    _need_server()
    folder = Path(resolve_model("smollm2-135m"))  # an HF folder, like a fine-tuned student
    converter = _cached_converter(ll)
    monkeypatch.setenv("EKT_LLAMA_SERVER", str(find_llama_server()))  # from the real cache
    monkeypatch.setenv("EKT_CACHE_DIR", str(tmp_path / "cache"))
    student = tmp_path / "student"
    student.mkdir()
    for p in folder.iterdir():
        if p.is_file():
            (student / p.name).symlink_to(p)
    monkeypatch.setattr(ll, "converter_dir", converter)
    gguf = ll.model_gguf(str(student))
    assert gguf.suffix == ".gguf" and gguf.is_file()
    assert ll.model_gguf(str(student)) == gguf  # cached by checkpoint hash: not converted again
    backend = BackendConfig("llamacpp", threads=2)
    with ll.LlamaLocalSampler(str(student), backend, slots=2, progress=False) as sampler:
        out = list(sampler.sample(_requests(data_dir, 1), PARAMS))
    assert len(out) == PARAMS.n and all(c.n_tokens >= 1 for c in out)
    # a changed checkpoint is another file
    (student / "generation_config.json").unlink(missing_ok=True)
    (student / "generation_config.json").write_text("{}")
    assert ll.checkpoint_hash(student)[:16] not in gguf.name


def _cached_converter(ll):
    """The converter from the real cache (fetched once through pip and kept there), while the
    converted file goes to the test's own cache."""
    where = ll.converter_dir()
    return lambda version=None: where


def test_a_missing_model_or_binary_is_a_clear_error(tmp_path, monkeypatch):
    from ekt.generation.backends import BackendConfig
    from ekt.generation.backends import llamacpp_local as ll

    with pytest.raises(EktError, match="no such .gguf"):
        ll.model_gguf(str(tmp_path / "missing.gguf"))
    with pytest.raises(EktError, match="not a transformers model folder"):
        ll.checkpoint_hash(tmp_path)
    import ekt.generation.backends.llamacpp_server as ls

    monkeypatch.setattr(ls, "find_llama_server", lambda: None)
    with pytest.raises(EktError, match="make llama-server"):
        ll.LlamaLocalSampler("smollm2-135m", BackendConfig("llamacpp"))
