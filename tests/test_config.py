from pathlib import Path

import pytest

from ekt.errors import EktError
from ekt.pipeline.config import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "configs" / name)
    assert cfg.methods and cfg.eval.n >= max(cfg.eval.k)
    assert (REPO / "configs" / name).read_text().startswith("#")  # says what it is and needs


def test_modern_config_is_a_matrix_on_vllm():
    cfg = load_config(REPO / "configs" / "modern.yaml")
    assert cfg.is_matrix and len(cfg.pairs()) == 2
    assert cfg.teacher_sampling.backend.name == "vllm"
    assert "Hardware:" in (REPO / "configs" / "modern.yaml").read_text()


def test_paper_config_is_the_published_setting():
    cfg = load_config(REPO / "configs" / "paper.yaml")
    assert cfg.teacher == "EleutherAI/gpt-j-6b"
    assert cfg.students == ["EleutherAI/gpt-neo-125m", "EleutherAI/gpt-neo-1.3B"]
    assert (cfg.teacher_sampling.n, cfg.teacher_sampling.temperature) == (100, 0.6)
    assert cfg.dev_size == 500 and cfg.eval.k[-1] == 100 and cfg.eval.limit is None


@pytest.mark.parametrize(
    "text,msg",
    [
        ("name: [unclosed", "invalid YAML"),
        ("nmae: x\n", "unknown key(s) nmae"),
        ("eval:\n  n: 2\n  k: [1, 5]\n", "--k 5 exceeds --n 2"),
        ("methods: [magic]\n", "unknown method 'magic'"),
        ("teacher_sampling:\n  n: many\n", "teacher_sampling.n: expected int"),
        ("train:\n  lr: 1\n", "train: unknown key(s) lr"),
        ("students: [a, a]\n", "students: a model is listed twice"),
        ("teachers: a\n", None),
    ],
)
def test_bad_configs(tmp_path, text, msg):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    if msg is None:  # accepted: a single name where a list is expected
        assert load_config(p).teachers == ["a"]
        return
    with pytest.raises(EktError) as e:
        load_config(p)
    assert msg in str(e.value)


def test_ray_block_maps_onto_the_ray_flags(tmp_path):
    from ekt.pipeline.distributed import RayCluster

    p = tmp_path / "c.yaml"
    p.write_text("ray: {address: auto, verifiers: 2, verify_shard_size: 64}\n")
    assert load_config(p).ray == RayCluster(address="auto", verifiers=2, verify_shard_size=64)
    p.write_text("name: x\n")
    assert load_config(p).ray is None  # no block: runs locally
    p.write_text("ray: {max_attempts: 0}\n")
    with pytest.raises(EktError, match="ray.max_attempts must be >= 1"):
        load_config(p)
