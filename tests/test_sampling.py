"""TransformersSampler on the tiny model (fast), and on each embedded preset (slow-ish)."""

from __future__ import annotations

import ast

import pytest
from conftest import TOY_QUESTIONS

from ekt.data.prompts import STOP_STRINGS, extract_program, student_prompt, teacher_prompt
from ekt.errors import EktError
from ekt.generation.backends.torch_sampler import TransformersSampler
from ekt.generation.config import SamplingParams
from ekt.generation.sampler import derive_seed, truncate_at_stop

# the presets are loaded once (module fixtures): every test of the file on one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("sampling")

QUESTIONS = TOY_QUESTIONS[:5]
REQUESTS = [(f"toy/{i}", student_prompt(q)) for i, q in enumerate(QUESTIONS)]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """The tiny model, with its residual branches amplified.

    Freshly initialised with tied embeddings, it only ever repeats the prompt's last
    token under greedy decoding; amplified, its greedy continuations differ by prompt
    and change along the way, which makes the equality tests below meaningful.
    """
    import torch

    from ekt.models import load_model

    model, tok = load_model(str(tiny_model_dir), device="cpu")
    with torch.no_grad():
        for name, w in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                w.mul_(40)
    return model, tok


def _run(tiny, requests, params, **kw):
    model, tok = tiny
    out = list(TransformersSampler(model, tok, progress=False, **kw).sample(requests, params))
    return {(c.problem_id, c.sample_idx): c for c in out}, out


# ---- SamplingParams ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"n": 0}, "--n"),
        ({"temperature": -0.1}, "--temperature"),
        ({"temperature": float("nan")}, "--temperature"),
        ({"top_p": 0.0}, "--top-p"),
        ({"top_p": 1.5}, "--top-p"),
        ({"max_new_tokens": 0}, "--max-new-tokens"),
        ({"stop": ("",)}, "--stop"),
    ],
)
def test_invalid_params_raise_ekt_error(kwargs, flag):
    with pytest.raises(EktError, match=flag):
        SamplingParams(**kwargs)


def test_params_defaults_and_stop_tuple():
    p = SamplingParams(stop=["\n\n"])  # type: ignore[arg-type]
    assert p.stop == ("\n\n",)
    assert SamplingParams().stop == tuple(STOP_STRINGS)
    assert SamplingParams(temperature=0).greedy and not SamplingParams().greedy


def test_bad_batch_size(tiny):
    with pytest.raises(EktError, match="--batch-size"):
        TransformersSampler(*tiny, batch_size=0)


def test_truncate_at_stop_and_derive_seed():
    assert truncate_at_stop("a = 1\n\n\n# Question: x", STOP_STRINGS) == ("a = 1", True)
    assert truncate_at_stop("x\ndef f\n# Question", ["\n# Question", "\ndef "]) == ("x", True)
    assert truncate_at_stop("plain", STOP_STRINGS) == ("plain", False)
    assert derive_seed(0, "p/1", 0) == derive_seed(0, "p/1", 0)
    assert len({derive_seed(0, "p/1", 0), derive_seed(0, "p/1", 1), derive_seed(1, "p/1", 0)}) == 3


# ---- tiny model --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("shared", [True, False])
def test_n_records_per_problem(tiny, shared):
    for batch_size in (2, 4, 8, 16):  # n > batch, one problem per batch, and packed problems
        params = SamplingParams(n=3, temperature=1.0, max_new_tokens=8, stop=())
        by_key, out = _run(tiny, REQUESTS, params, batch_size=batch_size, shared_prefix=shared)
        assert len(out) == len(REQUESTS) * 3
        for pid, _ in REQUESTS:
            assert {i for (p, i) in by_key if p == pid} == {0, 1, 2}
        assert all(1 <= c.n_tokens <= 8 for c in out)


def test_stop_strings_truncate(tiny):
    # Full continuations first, then the same samples with stop strings that occur in them.
    # pack_prompts=False and n=1 keep every sample in a batch of its own, so the two runs
    # take identical draws and the cut texts must be prefixes of the full ones.
    base = SamplingParams(n=1, temperature=1.0, max_new_tokens=24, stop=(), seed=3)
    full, _ = _run(tiny, REQUESTS, base, pack_prompts=False)
    stops = ("e", " =")
    cut, _ = _run(
        tiny, REQUESTS, SamplingParams(**{**base.__dict__, "stop": stops}), pack_prompts=False
    )
    model, tok = tiny
    n_cut = 0
    for key, c in cut.items():
        f = full[key]
        expected, stopped = truncate_at_stop(f.text, stops)
        assert c.text == expected
        assert not any(s in c.text for s in stops)
        if stopped:
            n_cut += 1
            assert c.n_tokens <= f.n_tokens
        else:
            assert c.n_tokens == f.n_tokens
    assert n_cut >= 3  # the stop strings did fire


def test_stop_n_tokens_counts_the_completing_token(tiny):
    import torch

    model, tok = tiny
    params = SamplingParams(n=1, temperature=0, max_new_tokens=30, stop=())
    sampler = TransformersSampler(model, tok, progress=False, heal_prompt=False)
    (full,) = sampler.sample(REQUESTS[:1], params)
    ids = tok(REQUESTS[0][1]).input_ids
    gen = model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=30,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
    )[0, len(ids) :].tolist()
    # Choose as stop string the text of a token in the middle of the continuation.
    for k in range(2, len(gen) - 1):
        head, upto = tok.decode(gen[:k]), tok.decode(gen[: k + 1])
        stop = upto[len(head) :]
        if upto.startswith(head) and stop.strip() and stop not in head:
            break
    else:
        pytest.skip("tiny model continuation has no clean stop token")
    (c,) = sampler.sample(REQUESTS[:1], SamplingParams(**{**params.__dict__, "stop": (stop,)}))
    assert c.text == tok.decode(gen[:k])
    assert c.n_tokens == k + 1


@pytest.mark.slow
def test_same_seed_same_records_other_seed_differs(tiny):
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=16, stop=(), seed=7)
    a, _ = _run(tiny, REQUESTS, params, batch_size=8)
    b, _ = _run(tiny, REQUESTS, params, batch_size=8)
    assert a == b
    c, _ = _run(tiny, REQUESTS, SamplingParams(**{**params.__dict__, "seed": 8}), batch_size=8)
    assert any(a[k].text != c[k].text for k in a)
    assert len({a[("toy/0", i)].text for i in range(4)}) > 1  # samples of one problem differ


@pytest.mark.slow
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("pack", [False, True])
def test_order_and_subset_do_not_change_a_problem(tiny, pack, shared):
    """Resume/reorder: each problem's records depend only on (seed, problem, index).

    Without packing this is exact by construction. With packing, another batch
    composition changes logits only by rounding; on the tiny model that never flips a draw.
    """
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=16, stop=(), seed=11)
    kw = {"pack_prompts": pack, "shared_prefix": shared}
    whole, _ = _run(tiny, REQUESTS, params, batch_size=4, **kw)
    for subset in (REQUESTS[::-1], REQUESTS[2:], [REQUESTS[3], REQUESTS[0]]):
        part, _ = _run(tiny, subset, params, batch_size=4, **kw)
        for key, c in part.items():
            assert c == whole[key], key
    # A different batch size regroups rows but takes the same draws.
    other, _ = _run(tiny, REQUESTS, params, batch_size=3, **kw)
    assert other == whole


@pytest.mark.slow
@pytest.mark.parametrize("shared", [True, False])
def test_greedy_equals_model_generate(tiny, shared):
    import torch

    model, tok = tiny
    params = SamplingParams(n=3, temperature=0, max_new_tokens=20, stop=())
    for pack in (False, True):
        kw = {"heal_prompt": False, "pack_prompts": pack, "shared_prefix": shared}
        got, out = _run(tiny, REQUESTS, params, **kw)
        assert len(out) == len(REQUESTS) * 3
        for pid, prompt in REQUESTS:
            ids = tok(prompt, return_tensors="pt").input_ids
            gen = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=20,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )[0, ids.shape[1] :].tolist()
            eos = [i for i, t in enumerate(gen) if t == tok.eos_token_id]
            n = eos[0] + 1 if eos else len(gen)
            text = tok.decode(gen[: eos[0]] if eos else gen, skip_special_tokens=True)
            for i in range(3):
                assert got[(pid, i)].text == text, (pack, pid)
                assert got[(pid, i)].n_tokens == n


@pytest.mark.slow
def test_token_healing(tiny):
    """A prompt ending in a token that longer tokens extend is healed (tiny BPE merges '\\n   ')."""
    model, tok = tiny
    sampler = TransformersSampler(model, tok, progress=False)
    prompt = REQUESTS[0][1]
    prepared = sampler.prepare(prompt)
    ids = tok(prompt).input_ids
    if prepared.allowed is None:
        pytest.skip("tiny tokenizer has no token extending the prompt's last token")
    assert prepared.ids == ids[:-1]
    assert prepared.skip == "\n"
    assert ids[-1] in prepared.allowed.tolist()
    vocab = tok.convert_ids_to_tokens(prepared.allowed.tolist())
    head = tok.convert_ids_to_tokens(ids[-1])
    assert all(v.startswith(head) for v in vocab) and len(vocab) > 1
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=12, stop=(), seed=1)
    assert len(list(sampler.sample(REQUESTS[:2], params))) == 8
    plain = TransformersSampler(model, tok, progress=False, heal_prompt=False).prepare(prompt)
    assert plain.allowed is None and plain.ids == ids


def test_top_p_tiny_keeps_greedy_token(tiny):
    # top_p close to 0 leaves only the most likely token: sampling becomes greedy.
    g, _ = _run(tiny, REQUESTS[:2], SamplingParams(n=1, temperature=0, max_new_tokens=10, stop=()))
    s, _ = _run(
        tiny,
        REQUESTS[:2],
        SamplingParams(n=2, temperature=1.0, top_p=1e-6, max_new_tokens=10, stop=()),
    )
    for (pid, _i), c in s.items():
        assert c.text == g[(pid, 0)].text


# ---- shared prefix and continuous batching ----------------------------------------------------


@pytest.mark.slow
def test_shared_prefix_computed_once_and_matches_padded_path(tiny, monkeypatch):
    """Teacher prompts share the few-shot block: it is prefilled once, for every problem."""
    model, tok = tiny
    requests = [(pid, teacher_prompt(q)) for pid, q in zip((p for p, _ in REQUESTS), QUESTIONS)]
    sampler = TransformersSampler(model, tok, progress=False, batch_size=5)
    assert sampler._use_shared_prefix()  # (its self-check runs a prefix of its own)
    lengths: list[int] = []
    real = sampler._prefill_prefix
    monkeypatch.setattr(
        sampler, "_prefill_prefix", lambda kv, ids: (lengths.append(len(ids)), real(kv, ids))
    )
    ids = [sampler.prepare(p).ids for _, p in requests]
    common = next(i for i in range(min(map(len, ids))) if len({x[i] for x in ids}) > 1)
    for params in (
        SamplingParams(n=3, temperature=1.0, max_new_tokens=16, stop=(), seed=2),
        SamplingParams(n=2, temperature=0, max_new_tokens=16, stop=()),
    ):
        lengths.clear()
        got = {(c.problem_id, c.sample_idx): c for c in sampler.sample(requests, params)}
        assert lengths == [common] and common > 100
        want, _ = _run(tiny, requests, params, batch_size=5, shared_prefix=False)
        assert got == want


def test_a_later_call_with_the_same_prefix_reuses_its_keys_and_values(tiny, monkeypatch):
    """An adaptive budget's rounds: the few-shot prefix is prefilled by the first call only,
    and a round gives the records a fresh sampler gives; a changed weight prefills again."""
    import torch

    model, tok = tiny
    requests = [(pid, teacher_prompt(q)) for pid, q in zip((p for p, _ in REQUESTS), QUESTIONS)]
    sampler = TransformersSampler(model, tok, progress=False, batch_size=4)
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=12, stop=(), seed=4)
    widths: list[int] = []
    real = sampler._run
    monkeypatch.setattr(
        sampler,
        "_run",
        lambda kv, ids, pos, **kw: (widths.append(ids.shape[1]), real(kv, ids, pos, **kw))[1],
    )
    list(sampler.sample(requests, params))
    prefills = [w for w in widths if w > 100]
    assert len(prefills) == 1
    widths.clear()
    second = list(sampler.sample(requests, params, start=2))
    assert not [w for w in widths if w > 100]  # the prefix came from the first call
    fresh = list(TransformersSampler(model, tok, progress=False, batch_size=4).sample(
        requests, params, start=2))  # fmt: skip
    assert second == fresh
    with torch.no_grad():
        w = model.model.layers[0].mlp.down_proj.weight
        w.add_(0.0)  # in place: the weights' version moves on
    widths.clear()
    list(sampler.sample(requests, params, start=2))
    assert len([w for w in widths if w > 100]) == 1


def test_continuous_batching_keeps_the_batch_full(tiny, monkeypatch):
    model, tok = tiny
    sampler = TransformersSampler(model, tok, progress=False, batch_size=3)
    assert sampler._use_shared_prefix()  # (its self-check runs a decode step of its own)
    sizes: list[int] = []
    real = sampler._forward_decode
    monkeypatch.setattr(
        sampler,
        "_forward_decode",
        lambda kv, tokens, lens: (sizes.append(tokens.shape[0]), real(kv, tokens, lens))[1],
    )
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=12, stop=("e",), seed=5)
    out = list(sampler.sample(REQUESTS, params))
    assert len(out) == len(REQUESTS) * 2
    # Every row is fed n_tokens - 1 tokens (its first comes from its prompt's prefill) ...
    assert sum(sizes) == sum(c.n_tokens - 1 for c in out)
    assert max(sizes) == 3
    # ... and a finished row's slot is refilled at once, so the job takes fewer steps than
    # static batches of 3 rows (in admission order) that each run until their longest row ends.
    rows = sorted(out, key=lambda c: (c.problem_id, c.sample_idx))
    static = sum(max(c.n_tokens - 1 for c in rows[i : i + 3]) for i in range(0, len(rows), 3))
    assert len(sizes) < static
    assert sum(c.n_tokens < 12 for c in out) >= 2  # rows did stop early (and were refilled)


def test_models_without_support_fall_back(tiny, monkeypatch, capsys):
    model, tok = tiny
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, stop=(), seed=1)
    want, _ = _run(tiny, REQUESTS[:2], params, shared_prefix=False)
    monkeypatch.setattr(type(model), "_supports_attention_backend", False)
    got, _ = _run(tiny, REQUESTS[:2], params)
    assert got == want
    assert "shared-prefix sampling is off" in capsys.readouterr().err
    with pytest.raises(EktError, match="shared-prefix"):
        _run(tiny, REQUESTS[:2], params, shared_prefix=True)


def test_self_check_rejects_wrong_attention(tiny, monkeypatch):
    import torch

    from ekt.generation.prefix_cache import SharedPrefixKV

    def wrong(self, layer, q, k, v, *args):
        return torch.zeros(q.shape[0], q.shape[2], q.shape[1], q.shape[3])

    monkeypatch.setattr(SharedPrefixKV, "attend", wrong)
    sampler = TransformersSampler(*tiny, progress=False)
    assert sampler._use_shared_prefix() is False


# ---- the embedded presets ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gsm8k_problem(data_dir):
    from ekt.data.tasks import get_task

    return get_task("gsm8k", data_dir=str(data_dir)).load("train")[0]


def _program_shaped(program: str) -> bool:
    tree = ast.parse(program)
    fn = tree.body[0]
    assert isinstance(fn, ast.FunctionDef) and fn.name == "solution"
    return any(isinstance(s, (ast.Assign, ast.AugAssign, ast.Return)) for s in fn.body)


@pytest.fixture(scope="module", params=["smollm2-135m", "gemma3-270m"])
def preset(request):
    from ekt.models import load_model

    model, tok = load_model(request.param, device="cpu")
    return request.param, model, tok


@pytest.mark.slow
def test_preset_writes_a_program(preset, gsm8k_problem):
    _name, model, tok = preset
    sampler = TransformersSampler(model, tok, progress=False)
    params = SamplingParams(n=1, temperature=0, max_new_tokens=48)
    (c,) = sampler.sample([(gsm8k_problem.id, teacher_prompt(gsm8k_problem))], params)
    program = extract_program(c.text)
    compile(program, "<program>", "exec")
    assert _program_shaped(program), c.text
    assert c.text.startswith("    "), c.text  # continues the function body, indented
    assert 1 <= c.n_tokens <= 48


@pytest.mark.slow
def test_preset_greedy_equals_generate_with_packing(preset, data_dir):
    """Long few-shot prompts (> Gemma's 512-token sliding window), left-padded together."""
    import torch

    from ekt.data.tasks import get_task

    _name, model, tok = preset
    problems = get_task("gsm8k", data_dir=str(data_dir)).load("train")[1:3]
    requests = [(p.id, teacher_prompt(p)) for p in problems]
    params = SamplingParams(n=1, temperature=0, max_new_tokens=12, stop=())
    sampler = TransformersSampler(model, tok, progress=False, heal_prompt=False)
    got = {c.problem_id: c for c in sampler.sample(requests, params)}
    for pid, prompt in requests:
        ids = tok(prompt, return_tensors="pt").input_ids
        assert ids.shape[1] > 512
        gen = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )[0, ids.shape[1] :].tolist()
        assert tok.eos_token_id not in gen
        assert got[pid].text == tok.decode(gen, skip_special_tokens=True)


def test_importing_ekt_bounds_how_long_torchs_thread_pool_spins():
    """libgomp reads its wait settings once, when torch loads: importing ekt first sets a short
    spin (a pool spinning 300,000 turns is 2-4x slower on a shared CPU); a value the user set
    wins, OMP_WAIT_POLICY or GOMP_SPINCOUNT."""
    import os
    import subprocess
    import sys

    code = (
        "import os, ekt, torch; "
        "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"
    )
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

    def run(**extra: str) -> str:
        env = {**base, **extra}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert run() == "None 5000"
    assert run(OMP_WAIT_POLICY="PASSIVE") == "PASSIVE None"
    assert run(OMP_WAIT_POLICY="ACTIVE") == "ACTIVE None"
    assert run(GOMP_SPINCOUNT="300000") == "None 300000"


def test_two_level_draw_equals_one_cumulative_sum_over_the_vocabulary():
    """The block-wise inverse-CDF draw picks what one float64 cumulative sum over the whole
    vocabulary picks (random rows, several vocabulary sizes, peaked and flat), never a token of
    zero probability (top-p masks them), and the argmax for a target at the total."""
    import torch

    from ekt.generation.backends.torch_sampler import _inverse_cdf

    def reference(probs, u):
        cdf = probs.to(torch.float64).cumsum(dim=-1)
        picks = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(1)
        return torch.where(picks < probs.shape[-1], picks, probs.argmax(dim=-1))

    g = torch.Generator().manual_seed(0)
    for vocab in (7, 1000, 49152):
        for scale in (1.0, 8.0, 40.0):
            probs = torch.softmax(torch.randn(8, vocab, generator=g) * scale, dim=-1)
            probs[:, ::3] = 0.0  # masked tokens, as top-p leaves them
            probs[:, 1] = 1e-3  # at least one token left per row
            for _ in range(10):
                u = torch.rand(8, dtype=torch.float64, generator=g)
                got = _inverse_cdf(probs, u, torch.float64)
                assert torch.equal(got, reference(probs, u))
                assert bool((probs.gather(1, got[:, None]) > 0).all())
    probs = torch.softmax(torch.randn(4, 1000, generator=g), dim=-1)
    assert torch.equal(_inverse_cdf(probs, torch.ones(4, dtype=torch.float64), torch.float64),
                       probs.argmax(dim=-1))  # fmt: skip


def test_packed_prompt_prefill_matches_prefilling_each_prompt_alone(tiny, monkeypatch):
    """The prompts admitted in one step are prefilled in one forward pass (packed): fewer
    passes, and the same samples as prefilling each prompt alone, greedy and sampled."""
    import ekt.generation.backends.torch_sampler as sampling

    model, tok = tiny
    passes: list[int] = []
    real = TransformersSampler._run

    def counting(self, kv, ids, pos, **kw):
        if kv.mode == "suffix":
            passes.append(len(kv._spans))
        return real(self, kv, ids, pos, **kw)

    monkeypatch.setattr(TransformersSampler, "_run", counting)
    requests = [(f"toy/{i}", student_prompt(q)) for i, q in enumerate(TOY_QUESTIONS)]
    sampler = TransformersSampler(model, tok, progress=False, batch_size=4)
    assert sampler._use_shared_prefix()  # its self-check done before counting

    def run(params):
        passes.clear()
        return {(c.problem_id, c.sample_idx): c.text for c in sampler.sample(requests, params)}

    for params in (
        SamplingParams(n=1, temperature=0.0, max_new_tokens=10, stop=()),
        SamplingParams(n=2, temperature=1.0, max_new_tokens=10, stop=(), seed=3),
    ):
        packed = run(params)
        assert max(passes) > 1 and sum(passes) == len(requests)  # several prompts in one pass
        monkeypatch.setattr(sampling, "PREFILL_TOKENS", 1)  # every prompt alone
        alone = run(params)
        monkeypatch.setattr(sampling, "PREFILL_TOKENS", 512)
        assert passes == [1] * len(requests)
        assert packed == alone and len(packed) == len(requests) * params.n


def test_packed_prefill_keys_and_logits_match_alone(tiny):
    """``SharedPrefixKV.begin_suffix`` with several problems: each problem's keys, values and
    last logits are those of its prefill alone, to float rounding."""
    import torch

    model, tok = tiny
    sampler = TransformersSampler(model, tok, progress=False)
    assert sampler._use_shared_prefix()
    prefix = tok("# Question: how many?\n").input_ids
    owns = [tok(q).input_ids[:n] for q, n in zip(TOY_QUESTIONS[:3], (5, 1, 9))]
    with torch.inference_mode():
        kv = sampler._new_kv(1, 16)
        sampler._prefill_prefix(kv, prefix)
        logits = sampler._prefill_suffixes(kv, owns)
        got = [kv.take_suffix(i) for i in range(len(owns))]
        for i, own in enumerate(owns):
            want = sampler._prefill_suffix(kv, own)
            keys, values = kv.take_suffix()
            torch.testing.assert_close(logits[i], want, atol=1e-4, rtol=1e-4)
            for a, b in zip(got[i][0] + got[i][1], keys + values):
                assert a.shape == b.shape and a.shape[1] == len(own)
                torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
