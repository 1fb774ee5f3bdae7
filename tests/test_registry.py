"""The method registry: each method declared once, and everything else reads it."""

import dataclasses
import re
from pathlib import Path

import pytest

from ekt.errors import EktError
from ekt.methods import registry
from ekt.pipeline.config import RunConfig, build_config
from ekt.pipeline.run import HARMLESS_KEYS, stale_outputs

SRC = Path(__file__).resolve().parents[1] / "src" / "ekt"


def test_every_settings_block_is_a_run_config_field_of_its_type():
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    for m in registry.REGISTRY.values():
        if m.settings_key is None:
            continue
        assert m.settings_key in fields, m.name
        assert isinstance(getattr(RunConfig(), m.settings_key), m.settings), m.name


def test_each_method_name_is_declared_once_in_the_source():
    for name in registry.NAMES:
        declared = re.compile(rf'name="{re.escape(name)}"')
        hits = [p for p in SRC.rglob("*.py") if declared.search(p.read_text())]
        assert [p.parent.name for p in hits] == ["methods"], (name, hits)
    # the config's choices are the registry's
    with pytest.raises(EktError, match="grpo, on-policy, got nope"):
        build_config({"methods": ["nope"]})


def test_a_method_setting_makes_only_that_method_stale(tmp_path):
    for m in registry.REGISTRY.values():
        for rel in m.outputs():
            (tmp_path / rel).mkdir(parents=True, exist_ok=True)
    (tmp_path / "teacher").mkdir()
    got = {str(p.relative_to(tmp_path)) for p in stale_outputs(["grpo.trl.beta"], tmp_path)}
    assert got == {"students/grpo", "eval/student-grpo"}
    got = {str(p.relative_to(tmp_path)) for p in stale_outputs(["teacher"], tmp_path)}
    assert "students/grpo" not in got and "students/supervised" not in got
    assert {"teacher", "students/ekt", "students/kd", "seq_kd", "students/on-policy"} <= got
    # the student's training settings leave the data a method prepared (supervised/) alone
    got = {str(p.relative_to(tmp_path)) for p in stale_outputs(["train.learning_rate"], tmp_path)}
    assert "supervised" not in got and "students/supervised" in got
    assert "students/grpo" not in got  # grpo's settings are its own block
    # ... unless grpo starts from a student those settings train
    cfg = build_config({"methods": ["ekt", "grpo"], "grpo": {"start": "ekt"}})
    got = {str(p.relative_to(tmp_path)) for p in
           stale_outputs(["train.learning_rate"], tmp_path, cfg)}  # fmt: skip
    assert {"students/ekt", "students/grpo", "eval/student-grpo"} <= got
    got = {str(p.relative_to(tmp_path)) for p in stale_outputs(["teacher"], tmp_path, cfg)}
    assert "students/grpo" in got and "students/supervised" not in got


def test_method_harmless_keys_join_the_runs():
    assert "grpo.trl.logging_steps" in HARMLESS_KEYS and "train.packing" in HARMLESS_KEYS
    assert "grpo.trl.beta" not in HARMLESS_KEYS


def test_unknown_trl_field_and_misordered_teacher_are_refused():
    with pytest.raises(EktError, match="grpo.trl: num_generatons: not a field"):
        build_config({"methods": ["grpo"], "grpo": {"trl": {"num_generatons": 4}}})
    with pytest.raises(EktError, match="on_policy.teacher: ekt must be listed before"):
        build_config({"methods": ["on-policy", "ekt"], "on_policy": {"teacher": "ekt"}})
    with pytest.raises(EktError, match="grpo.start: ekt must be listed before grpo"):
        build_config({"methods": ["grpo", "ekt"], "grpo": {"start": "ekt"}})
    with pytest.raises(EktError, match="grpo.start: kd must be listed before grpo"):
        build_config({"methods": ["ekt", "grpo"], "grpo": {"start": "kd"}})
    assert build_config({"methods": ["ekt", "grpo"], "grpo": {"start": "ekt"}}).grpo.start == "ekt"


def test_methods_config_compares_the_new_methods_on_the_demo_task():
    from ekt.pipeline.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs"
    cfg = load_config(root / "methods.yaml")
    demo = load_config(root / "demo.yaml")
    assert cfg.methods == ["ekt", "kd", "expert-iteration", "grpo", "on-policy"]
    assert cfg.evaluate_base_student and cfg.task == demo.task == "procedural_mix"
    assert (cfg.teacher, cfg.student, cfg.eval) == (demo.teacher, demo.student, demo.eval)
    assert cfg.on_policy.teacher == "ekt"  # the same-tokenizer path (see the config)
    assert cfg.grpo.trl["num_generations"] == 4 and cfg.grpo.start == "ekt"
