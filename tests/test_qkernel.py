"""ekt.generation.qkernel: GGUF blocks decoded exactly, the C kernel's product, the matching
of GGUF tensors to a model's layers, and sampling with it (against float32 decoding)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter, quants

from ekt.generation import qkernel
from ekt.generation.qkernel import FORMATS, Packed, decode_blocks, dequantize

needs_kernel = pytest.mark.skipif(
    qkernel.library() is None, reason=f"no C kernel: {qkernel.build_error()}"
)

# Where each format keeps its float16 fields (random bytes there could be NaN or inf).
_F16_AT = {"Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2],
           "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208], "Q2_K": [80, 82], "Q3_K": [108],
           "IQ4_NL": [0], "IQ4_XS": [0]}  # fmt: skip


def _random_blocks(kind: str, rows: int, cols: int, seed: int) -> np.ndarray:
    per, size, _ = FORMATS[kind]
    rng = np.random.default_rng(seed)
    nb = rows * cols // per
    b = rng.integers(0, 256, (nb, size), dtype=np.uint8)
    for at in _F16_AT[kind]:
        d = (rng.standard_normal(nb) * 0.02).astype(np.float16)
        b[:, at : at + 2] = d.view(np.uint8).reshape(nb, 2)
    return b


@pytest.mark.parametrize("kind", sorted(FORMATS))
def test_every_format_decodes_to_ggufs_own_dequantisation_bit_for_bit(kind):
    rows, cols = 6, FORMATS[kind][0] * 3
    blocks = _random_blocks(kind, rows, cols, seed=len(kind))
    want = quants.dequantize(blocks.reshape(rows, -1), getattr(GGMLQuantizationType, kind))
    q, s, m = decode_blocks(kind, blocks, rows, cols)
    assert q.dtype == np.int8 and s.shape == (rows, cols // 16)
    got = dequantize(q, s, m)
    assert got.shape == want.shape
    assert np.array_equal(got.view(np.uint32), want.astype(np.float32).view(np.uint32))


def test_decode_refuses_a_wrong_block_count():
    blocks = _random_blocks("Q8_0", 4, 64, seed=1)
    with pytest.raises(ValueError, match="blocks"):
        decode_blocks("Q8_0", blocks, 5, 64)
    with pytest.raises(ValueError, match="whole number"):
        decode_blocks("Q4_K", _random_blocks("Q4_K", 1, 256, seed=2), 1, 200)


def _packed(kind: str, n: int, k: int, seed: int) -> tuple[Packed, np.ndarray]:
    q, s, m = decode_blocks(kind, _random_blocks(kind, n, k, seed), n, k)
    return Packed.of(q, s, m), dequantize(q, s, m)


@needs_kernel
@pytest.mark.parametrize("kind", ["Q8_0", "Q4_1", "Q4_K", "Q6_K", "Q2_K", "IQ4_XS"])
@pytest.mark.parametrize("rows", [1, 3, 8, 13, 16, 64])
def test_kernel_is_the_float32_product_up_to_rounding(kind, rows):
    n, k = 48, 512
    p, w = _packed(kind, n, k, seed=rows)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows))
    exact = x.double() @ torch.from_numpy(w).double().T
    got = p.matmul(x, threads=2)
    assert got.shape == (rows, n) and got.dtype == torch.float32
    bound = (x.double().abs() @ torch.from_numpy(w).double().abs().T) * (k * 2**-24) + 1e-30
    assert bool(((got.double() - exact).abs() <= bound).all())
    # and no worse than float32's own product
    plain = (x @ torch.from_numpy(w).T).double()
    assert (got.double() - exact).abs().max() <= 4 * (plain - exact).abs().max() + 1e-12


@needs_kernel
def test_kernel_rows_do_not_depend_on_the_batch_or_the_thread_count():
    p, _ = _packed("Q5_0", 64, 256, seed=5)
    x = torch.randn(19, 256, generator=torch.Generator().manual_seed(0))
    whole = p.matmul(x, threads=2)
    one_thread = p.matmul(x, threads=1)
    assert torch.equal(whole, one_thread)
    for r in (0, 7, 18):
        assert torch.equal(p.matmul(x[r : r + 1], threads=2)[0], whole[r])
    assert torch.equal(p.matmul(x.view(1, 19, 256), threads=2)[0], whole)


def _write_gguf(path, tensors, permuted=None):
    """A GGUF file with string-array metadata (the parser skips it) and quantised tensors."""
    w = GGUFWriter(str(path), "llama")
    w.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(300)])
    w.add_uint32("test.number", 7)
    w.add_array("test.floats", [0.5, 1.5])
    for name, (kind, raw) in tensors.items():
        w.add_tensor(name, raw, raw_dtype=getattr(GGMLQuantizationType, kind))
    w.add_tensor("extra.f32", np.ones((3, 5), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_the_tensor_table_matches_ggufs_reader(tmp_path):
    tensors = {
        "a": ("Q8_0", quants.quantize(np.random.default_rng(0).standard_normal((16, 64)).astype(
            np.float32), GGMLQuantizationType.Q8_0)),
        "b": ("Q4_1", quants.quantize(np.random.default_rng(1).standard_normal((32, 96)).astype(
            np.float32), GGMLQuantizationType.Q4_1)),
    }  # fmt: skip
    path = tmp_path / "t.gguf"
    _write_gguf(path, tensors)
    ours = {name: (dims, kind, raw) for name, dims, kind, raw in qkernel.gguf_tensors(path)}
    for t in GGUFReader(str(path)).tensors:
        dims, kind, raw = ours[t.name]
        assert dims == [int(d) for d in t.shape] and kind == t.tensor_type.name
        if kind in FORMATS:
            assert np.array_equal(raw, np.asarray(t.data).reshape(-1).view(np.uint8))
    assert set(ours) == {"a", "b", "extra.f32"}
    (tmp_path / "bad.gguf").write_bytes(b"GGML" + bytes(32))
    with pytest.raises(ValueError, match="not a GGUF"):
        list(qkernel.gguf_tensors(tmp_path / "bad.gguf"))


@pytest.fixture(scope="module")
def quantised_tiny(tmp_path_factory):
    """A tiny llama whose linear weights are GGUF blocks (several formats), the GGUF file
    (one tensor's rows permuted, one tensor that matches no layer), and its tokenizer."""
    from tiny_models import make_tiny_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("qtiny")
    folder = make_tiny_model(root / "model", hidden_size=64, num_layers=2)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    kinds = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
    # first in the file, while every layer of its shape is still unmatched
    shape = model.model.layers[0].mlp.up_proj.weight.shape
    junk = np.random.default_rng(9).standard_normal(shape).astype(np.float32)
    tensors = {"junk": ("Q8_0", quants.quantize(junk, GGMLQuantizationType.Q8_0))}
    names = []
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear) or not Packed.fits(*mod.weight.shape):
            continue
        kind = kinds[len(names) % len(kinds)]
        raw = quants.quantize(mod.weight.detach().numpy(), getattr(GGMLQuantizationType, kind))
        deq = quants.dequantize(raw, getattr(GGMLQuantizationType, kind)).astype(np.float32)
        with torch.no_grad():
            mod.weight.copy_(torch.from_numpy(deq))
        names.append(name)
        if name.endswith("layers.0.self_attn.q_proj"):  # stored with its rows reordered
            perm = np.random.default_rng(3).permutation(raw.shape[0])
            raw = raw[perm]
        tensors[f"t{len(names)}.{name}"] = (kind, raw)
    path = root / "tiny.gguf"
    _write_gguf(path, tensors)
    return model, tok, path, names


@needs_kernel
def test_attach_packs_every_layer_the_file_reproduces(quantised_tiny):
    model, _, path, names = quantised_tiny
    q = qkernel.attach(model, path)
    mods = dict(model.named_modules())
    assert {id(mods[n]) for n in names} == {id(m) for m in q.packed}
    assert q.skipped.get("junk") == "reproduces no layer of the model bit for bit"
    permuted = mods[next(n for n in names if n.endswith("layers.0.self_attn.q_proj"))]
    x = torch.randn(5, permuted.weight.shape[1])
    torch.testing.assert_close(q.packed[permuted].matmul(x, 2), x @ permuted.weight.T)


@needs_kernel
def test_a_model_that_differs_from_the_file_is_not_packed(quantised_tiny, tmp_path):
    from tiny_models import make_tiny_model
    from transformers import AutoModelForCausalLM

    model, _, path, _ = quantised_tiny
    other = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "m", seed=4))
    q = qkernel.attach(other, path)
    assert len(q) == 0 and q.skipped and "no GGUF tensor reproduces it" in q.skipped.values()


@needs_kernel
def test_active_routes_only_small_inference_products_and_restores(quantised_tiny):
    model, _, path, _ = quantised_tiny
    q = qkernel.attach(model, path)
    mod, p = next(iter(q.packed.items()))
    calls = []
    real = p.matmul

    def spy(x, threads):
        calls.append(tuple(x.shape))
        return real(x, threads)

    p.matmul = spy  # type: ignore[method-assign]
    try:
        with q.active():
            with torch.inference_mode():
                mod(torch.randn(2, 3, mod.in_features))  # 6 rows: the kernel
                mod(torch.randn(qkernel.MAX_ROWS + 1, mod.in_features))  # prefill: float32
            x = torch.randn(4, mod.in_features, requires_grad=True)
            mod(x).sum().backward()  # training: float32, with a gradient
            assert x.grad is not None
        assert calls == [(2, 3, mod.in_features)]
        assert "forward" not in mod.__dict__
    finally:
        del p.matmul


@needs_kernel
def test_sampling_with_blocks_matches_float32_sampling(quantised_tiny):
    from ekt.generation.backends.torch_sampler import TransformersSampler
    from ekt.generation.config import SamplingParams

    model, tok, path, _ = quantised_tiny
    q = qkernel.attach(model, path)
    params = SamplingParams(n=6, temperature=0.8, max_new_tokens=24, stop=("\n\n",), seed=1)
    requests = [("a", "def solution():\n"), ("b", "# Question: two apples\n")]
    fast = TransformersSampler(model, tok, progress=False, quantized=q).sample(requests, params)
    fast = list(fast)
    plain = list(TransformersSampler(model, tok, progress=False).sample(requests, params))
    assert [c.sample_idx for c in fast] == [c.sample_idx for c in plain]
    same = sum(a.text == b.text for a, b in zip(fast, plain))
    assert same >= len(plain) - 1  # float rounding may flip a draw, rarely
    assert "forward" not in next(iter(q.packed)).__dict__


def test_no_compiler_keeps_float32(tmp_path):
    code = (
        "from ekt.generation import qkernel\n"
        "assert qkernel.library() is None\n"
        "print(qkernel.build_error())\n"
    )
    env = dict(os.environ, CC=str(tmp_path / "no-such-cc"), EKT_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "no-such-cc" in out.stdout


@needs_kernel
@pytest.mark.parametrize("preset", ["smollm2-135m", "gemma3-270m"])
def test_presets_pack_every_linear_and_decode_as_float32_does(preset):
    from ekt.generation.backends import BackendConfig, make_sampler
    from ekt.models import PRESETS, shipped_gguf

    if preset not in PRESETS or shipped_gguf(preset) is None:
        pytest.skip(f"{preset} not installed")
    sampler = make_sampler(preset, "cpu", 4)()
    model, q = sampler.model, sampler.quantized
    assert q is not None and not q.skipped
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(q) == len(linears)
    ids = torch.tensor([sampler.tok("def solution():\n    total = 3 * 4").input_ids])
    with torch.inference_mode():
        want = model(input_ids=ids).logits[0, -4:]
        with q.active():
            got = model(input_ids=ids).logits[0, -4:]
    assert not torch.equal(got, want)  # the kernel did run
    torch.testing.assert_close(got, want, rtol=0, atol=2e-3 * float(want.abs().max()))
    assert bool((got.argmax(-1) == want.argmax(-1)).all())
    off = make_sampler(preset, "cpu", 4, BackendConfig(gguf_decode=False))()
    assert off.quantized is None


@needs_kernel
def test_a_weight_changed_after_packing_goes_back_to_float32(quantised_tiny):
    model, _, path, _ = quantised_tiny
    q = qkernel.attach(model, path)
    mod = next(iter(q.packed))
    before = mod.weight.detach().clone()
    try:
        with torch.no_grad():
            mod.weight.mul_(2.0)  # an optimizer step, in place
        x = torch.randn(3, mod.in_features)
        with q.active(), torch.inference_mode():
            got = mod(x)
        torch.testing.assert_close(got, x @ mod.weight.T)
        assert mod not in q.packed and "its weight changed after packing" in q.skipped.values()
    finally:
        with torch.no_grad():
            mod.weight.copy_(before)


@needs_kernel
def test_a_truncated_gguf_keeps_float32_with_a_note(quantised_tiny, tmp_path, capsys):
    model, _, path, _ = quantised_tiny
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:600])
    assert qkernel.for_spec(model, str(cut)) is None
    assert "decoding with float32 weights (could not read the blocks" in capsys.readouterr().err
