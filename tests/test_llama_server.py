"""The teacher served by a real llama.cpp ``llama-server`` on loopback, with the embedded GGUFs.

``make llama-server`` (part of ``make test``) builds the server once from the
llama.cpp vendored in the llama-cpp-python sdist and caches it under
``$EKT_CACHE_DIR/llama.cpp/<version>/``; without it these tests skip and say so.
Every request goes to the real server running the preset's GGUF as it ships:
nothing is mocked. The checks are the ones the issue asked for: programs come
back indented and run (``ekt generate`` + ``ekt verify``), per-sample token
counts agree with the model's tokenizer, the prompt cache is used, concurrency
follows the server's slots, and a resumed run writes what an uninterrupted one
does.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from ekt.data.prompts import PROGRAM_HEADER, extract_program, teacher_prompt
from ekt.generation.config import SamplingParams

# starts a real llama-server: `make test` only
# (one server per model: every test of the file on one pytest-xdist worker)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("llama_server")]

SLOTS = 4
EMPTY = extract_program("")  # what a reply without a body extracts to
NO_PROGRAM = ("", EMPTY)  # records: "" when extraction failed (extract_error says why)


def _server_bin() -> Path:
    from ekt.generation.backends.llamacpp_server import find_llama_server

    path = find_llama_server()
    if path is None:
        pytest.skip("llama-server is not built: `make llama-server` (make test builds it)")
    return path


def _gguf(preset: str) -> Path:
    from ekt.errors import EktError
    from ekt.models import preset_gguf

    try:
        return preset_gguf(preset)
    except EktError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module", params=["smollm2-135m", "gemma3-270m"])
def served(request, tmp_path_factory):
    """(preset, running server, the preset's HF tokenizer)."""
    from transformers import AutoTokenizer

    from ekt.generation.backends.llamacpp_server import LlamaServerProcess
    from ekt.models import resolve_model

    binary, gguf = _server_bin(), _gguf(request.param)
    tok = AutoTokenizer.from_pretrained(resolve_model(request.param))
    log = tmp_path_factory.mktemp("llama") / "server.log"
    srv = LlamaServerProcess(gguf, slots=SLOTS, threads=2, log=log, binary=binary)
    yield request.param, srv, tok
    srv.stop()


def _sampler(srv, **kw):
    from ekt.generation.backends import BackendConfig, make_sampler

    sampler = make_sampler("ignored", None, 1, BackendConfig(name="openai", base_url=srv.base_url))
    s = sampler()
    for k, v in kw.items():
        setattr(s, k, v)
    s.progress = False
    return s


def _problems(data_dir: Path, k: int):
    from ekt.data.tasks import get_task

    return get_task("gsm8k", data_dir=data_dir).load("train")[:k]


def _generated_count(tok, prompt_sent: str, text: str, stop: str) -> int:
    """Tokens of what the model wrote after ``prompt_sent`` (held newline, text, stop string),
    counted by the model's tokenizer in context, as the model wrote them."""
    base = len(tok(prompt_sent).input_ids)
    held = "\n" if not text or text[0] in " \t\n" else ""  # taken off a reply starting a line
    return len(tok(prompt_sent + held + text + stop).input_ids) - base


def test_make_sampler_finds_llama_cpp_and_its_slots(served):
    from ekt.generation.backends.llamacpp_server import LlamaServerSampler, probe

    _, srv, _ = served
    info = probe(srv.base_url)
    assert info.kind == "llama.cpp" and info.slots == SLOTS
    s = _sampler(srv)
    assert isinstance(s, LlamaServerSampler)
    assert s._resolve_concurrency() == SLOTS  # concurrency 0: as many requests as slots


def test_generate_and_verify_end_to_end(served, data_dir, tmp_path):
    """`ekt generate --backend openai` against llama-server, then `ekt verify`: indented
    programs that run, per-sample token and prompt counts that match the tokenizer."""
    from ekt.cli import main
    from ekt.generation.generate import read_completions

    preset, srv, tok = served
    k, n, max_new = 4, 2, 96
    gen = tmp_path / "gen"
    argv = ["generate", "--model", preset, "--data-dir", str(data_dir), "--limit", str(k)]
    argv += ["--n", str(n), "--max-new-tokens", str(max_new), "--out", str(gen)]
    argv += ["--backend", "openai", "--base-url", srv.base_url]
    assert main(argv) == 0
    records = read_completions(gen)
    assert sorted((c.problem_id, c.sample_idx) for c in records) == sorted(
        (p.id, i) for p in _problems(data_dir, k) for i in range(n)
    )
    prompts = {p.id: teacher_prompt(p) for p in _problems(data_dir, k)}
    with_body = [c for c in records if c.program not in NO_PROGRAM]
    assert len(with_body) >= len(records) * 3 // 4, [c.text[:80] for c in records]
    off = []
    for c in records:
        sent = prompts[c.problem_id].rstrip()
        assert c.prompt_tokens == len(tok(sent).input_ids)
        want = _generated_count(tok, sent, c.text, c.stop)
        if not c.stop and c.n_tokens < max_new:
            want += 1  # ended by EOS, which is generated but not text
        # The server counts the tokens the model wrote; the tokenizer re-encodes the text,
        # which can merge what the model wrote apart (three "\n" tokens for one "\n\n\n").
        assert abs(c.n_tokens - want) <= 2, (c.n_tokens, want, c.text, c.stop)
        off += [c] if abs(c.n_tokens - want) > 1 else []
        assert c.program.startswith(PROGRAM_HEADER)
    assert len(off) <= len(records) // 8, [(c.n_tokens, c.text[-40:], c.stop) for c in off]

    out = tmp_path / "verified.jsonl"
    argv = ["verify", "--data-dir", str(data_dir), "--programs", str(gen), "--out", str(out)]
    assert main(argv + ["--isolation", "standard"]) == 0
    rows = [json.loads(line) for line in out.open()]
    assert len(rows) == len(records)
    ran = [r for r in rows if r["status"] in ("ok", "error") and r["program"] not in NO_PROGRAM]
    assert len(ran) >= len(rows) // 2


def test_token_counts_are_the_tokens_the_model_wrote(served, data_dir, tmp_path):
    """Every record's ``n_tokens`` is exactly the number of tokens the server generated, and
    the model's tokenizer decodes those tokens to the record: the held-back newline, the text,
    then the stop string that ended it (or the EOS token)."""
    from ekt.generation.generate import generate, read_completions

    preset, srv, tok = served
    problems = _problems(data_dir, 4)
    sampler = _sampler(srv, token_ids={})
    params = SamplingParams(n=2, temperature=0.6, max_new_tokens=96, seed=3)
    generate(sampler, problems, tmp_path / "gen", params)
    records = read_completions(tmp_path / "gen")
    assert len(records) == 8 and len(sampler.token_ids) == 8
    prompts = {p.id: teacher_prompt(p).rstrip() for p in problems}
    specials = set(tok.all_special_ids)
    for c in records:
        ids = sampler.token_ids[(c.problem_id, c.sample_idx)]
        assert len(ids) == c.n_tokens, (c.n_tokens, ids)
        assert c.prompt_tokens == len(tok(prompts[c.problem_id]).input_ids)
        body = [t for t in ids if t not in specials]
        wrote = tok.decode(body)
        held = "\n" if wrote.startswith("\n") and not c.text.startswith("\n") else ""
        assert wrote.startswith(held + c.text + c.stop), (wrote, c.text, c.stop)
        if c.stop:
            # the last token completed the stop string: without it, the stop is not there
            assert c.stop not in tok.decode(body[:-1])[len(held) + len(c.text) :]
        elif c.n_tokens < params.max_new_tokens:
            assert ids[-1] in specials  # ended by EOS
            assert len(body) == len(ids) - 1


def test_prompt_trimming_is_what_keeps_the_programs(served, data_dir):
    """With the prompt ending on its bare newline (the issue's setup) SmolLM2 loses its
    programs; with the newline held back they come back indented."""
    preset, srv, _ = served
    requests = [(p.id, teacher_prompt(p)) for p in _problems(data_dir, 4)]
    params = SamplingParams(n=2, temperature=0.6, max_new_tokens=48, seed=5)

    def bodies(trim: bool) -> int:
        out = list(_sampler(srv, trim_prompt=trim).sample(requests, params))
        return sum(extract_program(c.text) != EMPTY for c in out)

    trimmed = bodies(True)
    assert trimmed >= 6
    if preset == "smollm2-135m":  # the tokenizer that merges "\n" with the indentation
        assert bodies(False) <= 2


def test_prompt_cache_is_reused_and_can_be_turned_off(served, data_dir):
    _, srv, _ = served
    requests = [(p.id, teacher_prompt(p)) for p in _problems(data_dir, 3)]
    params = SamplingParams(n=2, temperature=0.6, max_new_tokens=8, seed=1)
    on = _sampler(srv)
    list(on.sample(requests, params))
    # The few-shot prefix is several hundred tokens; later requests take it from a slot.
    assert on.prompt_cached >= 300
    off = _sampler(srv, cache_prompt=False)
    list(off.sample(requests, params))
    assert off.prompt_cached == 0


def test_resumed_run_equals_an_uninterrupted_one(served, data_dir, tmp_path):
    """Cut a finished shard short (as a kill would) and resume: the same records.

    llama.cpp's logits depend (by float rounding) on how its batches were formed, so the
    run is made repeatable bit for bit: one request at a time, prompts prefilled whole.
    """
    from ekt.generation.generate import generate

    _, srv, _ = served
    exact = {"concurrency": 1, "cache_prompt": False}
    problems = _problems(data_dir, 3)
    params = SamplingParams(n=3, temperature=0.8, max_new_tokens=40, seed=11)
    full = tmp_path / "full"
    generate(_sampler(srv, **exact), problems, full, params)
    shard = full / "samples" / "shard-00000.jsonl"
    want = {(o["problem_id"], o["sample_idx"]): o for o in map(json.loads, shard.open())}
    assert len(want) == 9

    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    lines = (cut / "samples" / "shard-00000.jsonl").read_text().splitlines(keepends=True)
    (cut / "samples" / "shard-00000.jsonl").write_text("".join(lines[:4]))
    (cut / "samples" / "shard-00000.done").unlink()
    summary = generate(_sampler(srv, **exact), problems, cut, params)
    assert summary.new_samples == 5
    got = {
        (o["problem_id"], o["sample_idx"]): o
        for o in map(json.loads, (cut / "samples" / "shard-00000.jsonl").open())
    }
    assert got == want
    # Seeds differ per sample: the three samples of a question are not all one text.
    assert any(len({want[(p.id, i)]["text"] for i in range(3)}) > 1 for p in problems)


def test_index_ranges_draw_the_samples_of_a_full_call(served, data_dir):
    """``sample(..., start=i)`` (an adaptive budget's round) sends each index with that index's
    seed: indices 2..3 drawn alone are the full call's indices 2..3 (one request at a time,
    prompts prefilled whole, as above, so the server's batching changes nothing)."""
    _, srv, _ = served
    exact = {"concurrency": 1, "cache_prompt": False}
    requests = [(p.id, teacher_prompt(p)) for p in _problems(data_dir, 2)]
    params = SamplingParams(n=4, temperature=0.8, max_new_tokens=24, seed=4)
    whole = {
        (c.problem_id, c.sample_idx): c for c in _sampler(srv, **exact).sample(requests, params)
    }
    part = list(_sampler(srv, **exact).sample(requests, replace(params, n=2), start=2))
    assert sorted((c.problem_id, c.sample_idx) for c in part) == [
        (pid, i) for pid, _ in requests for i in (2, 3)
    ]
    assert all(c.text == whole[(c.problem_id, c.sample_idx)].text for c in part)
    assert len({c.text for c in whole.values()}) > 1
