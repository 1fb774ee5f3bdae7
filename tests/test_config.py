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
        ("eval:\n  n: 2\n  k: [1, 5]\n", "eval.k 5 exceeds --n 2"),
        ("methods: [magic]\n", "methods: expected one of ekt, supervised, kd, seq-kd"),
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


# -- the generated CLI and config reader ------------------------------------------------------


def test_run_overrides_any_key_and_the_resolved_config_records_them(tmp_path):
    import yaml

    from ekt.pipeline.config import dump_config

    p = tmp_path / "c.yaml"
    p.write_text("train:\n  learning_rate: 1.0e-3\neval:\n  n: 4\n  k: [1, 4]\n")
    cfg = load_config(p, ["--train.learning_rate", "2e-5", "--eval.n", "8", "--eval.k", "[1,8]"])
    assert cfg.train.learning_rate == 2e-5 and cfg.eval.n == 8 and cfg.eval.k == [1, 8]
    saved = yaml.safe_load(dump_config(cfg))
    assert saved["train"]["learning_rate"] == 2e-5 and saved["eval"]["n"] == 8
    assert saved["sandbox"]["pin_workers"] is True  # every SandboxConfig field is a key
    with pytest.raises(EktError, match="command line: unrecognized arguments: --eval.nn"):
        load_config(p, ["--eval.nn", "3"])
    with pytest.raises(EktError, match="train.learning_rate: expected float, got fast"):
        load_config(p, ["--train.learning_rate", "fast"])


def test_sandbox_fields_the_old_block_lacked_are_settable(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("sandbox:\n  pin_workers: false\n  deny_read: [/secret]\n  timeout: 2.5\n")
    cfg = load_config(p)
    assert cfg.sandbox.pin_workers is False and cfg.sandbox.deny_read == ["/secret"]
    assert cfg.sandbox.timeout == 2.5


def test_sampling_defaults_are_declared_once():
    from ekt.evaluation.evaluate import EvalConfig
    from ekt.generation.config import SamplingParams
    from ekt.pipeline.config import TeacherSampling

    for cls in (TeacherSampling, EvalConfig):
        assert issubclass(cls, SamplingParams)
        own = set(cls.__dict__.get("__annotations__", {}))
        assert not own & {"temperature", "top_p", "max_new_tokens", "stop"}, cls
    assert TeacherSampling().temperature == EvalConfig().temperature == SamplingParams().temperature
    assert (TeacherSampling().n, EvalConfig().n, EvalConfig().seed) == (4, 10, 1234)


def test_expert_iteration_overrides_apply_by_replace():
    from ekt.methods.expert_iteration import ExpertIterationConfig
    from ekt.pipeline.config import TeacherSampling

    base = TeacherSampling(temperature=0.7, max_new_tokens=64)
    got = ExpertIterationConfig(n=6, seed=9).sampling(base)
    assert (got.n, got.seed, got.temperature, got.max_new_tokens) == (6, 9, 0.7, 64)
    with pytest.raises(EktError, match="--temperature must be >= 0"):
        ExpertIterationConfig(temperature=-1.0).sampling(base)


def test_train_config_has_ekt_defaults_and_builds_training_arguments():
    from transformers import TrainingArguments

    from ekt.training.config import TrainConfig

    cfg = TrainConfig(num_train_epochs=2, per_device_train_batch_size=4, batch_size=8)
    assert (cfg.num_train_epochs, cfg.per_device_train_batch_size) == (2, 4)
    assert cfg.accumulation_steps() == 2 and cfg.learning_rate == 1e-4
    args = cfg.training_arguments(output_dir="x", gradient_accumulation_steps=2)
    assert type(args) is TrainingArguments and args.weight_decay == 0.1
    with pytest.raises(EktError, match="--gradient-accumulation-steps is derived"):
        TrainConfig(gradient_accumulation_steps=4)


@pytest.mark.parametrize("command", ["generate", "verify", "filter", "train", "evaluate", "run",
                                     "report", "demo", "models", "tasks", "export"])  # fmt: skip
def test_every_flag_has_help_text(command):
    from ekt.cli import command_parser

    for action in command_parser(command)._actions:
        if not action.option_strings or action.dest == "help":
            continue
        text = (action.help or "").strip()
        assert text and not text.startswith("(type"), f"{command} {action.option_strings}"


def test_earlier_flag_spellings_map_onto_the_keys():
    from ekt.cli import parse

    options, _ = parse("train", [
        "--student", "m", "--pairs", "p", "--out", "o", "--learning-rate", "3e-4",
        "--per-device-train-batch-size", "2", "--batch-size", "4", "--num-train-epochs", "2",
        "--kd-alpha", "0.25", "--no-packing", "--method", "kd", "--teacher", "t",
    ])  # fmt: skip
    t = options.train
    assert options.student == "m" and t.learning_rate == 3e-4 and t.num_train_epochs == 2
    assert t.per_device_train_batch_size == 2 and t.packing is False and options.kd.alpha == 0.25
    ev, _ = parse("evaluate", ["--model", "m", "--out", "o", "--k", "1,5", "--n", "5",
                               "--no-greedy", "--timeout", "2", "--ray", "--ray-verifiers", "3"])
    assert ev.eval.k == [1, 5] and ev.eval.greedy is False and ev.sandbox.timeout == 2.0
    assert ev.ray.verifiers == 3 and ev.ray.address is None
    canonical, _ = parse("evaluate", ["--model", "m", "--out", "o", "--eval.temperature", "0.2"])
    assert canonical.eval.temperature == 0.2


def test_errors_name_the_flag_as_typed():
    from ekt.cli import UsageError, parse

    with pytest.raises(UsageError, match="--learning-rate: expected float, got fast"):
        parse("train", ["--student", "m", "--pairs", "p", "--out", "o", "--learning-rate", "fast"])
    with pytest.raises(EktError, match=r"^--top-p must be in \(0, 1\]"):
        parse("generate", ["--model", "m", "--out", "o", "--top-p", "0"])
    with pytest.raises(UsageError, match="--prompt: expected one of teacher, student, got x"):
        parse("generate", ["--model", "m", "--out", "o", "--prompt", "x"])
    with pytest.raises(UsageError, match="required: --model"):
        parse("generate", ["--out", "o"])


def test_a_new_commented_field_becomes_a_flag_and_a_key():
    import dataclasses

    import jsonargparse

    from ekt.cli import aliases, leaf_keys, normalize
    from ekt.pipeline.config import add_dataclass, instantiate

    @dataclasses.dataclass
    class Block:
        api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the API key
        retries: int = 2
        """requests retried at most"""

    @dataclasses.dataclass
    class Options:
        block: Block = dataclasses.field(default_factory=Block)

    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    add_dataclass(parser, Options, None)
    helps = {a.dest: a.help for a in parser._actions}
    assert helps["block.api_key_env"].startswith("environment variable holding the API key")
    assert helps["block.retries"].startswith("requests retried at most")
    keys = leaf_keys(Options)
    assert aliases(keys)["api_key_env"] == "block.api_key_env"
    argv, _ = normalize(["--api-key-env", "MY_KEY"], keys)
    got = instantiate(Options, parser.parse_args(argv))
    assert got.block == Block(api_key_env="MY_KEY")


def test_the_layout_names_every_run_path(tmp_path):
    from ekt.layout import RunLayout

    lay = RunLayout.of("x", tmp_path)
    assert lay.teacher_executions == tmp_path / "teacher" / "executions.jsonl"
    assert lay.eval("teacher").executions("greedy") == (
        tmp_path / "eval" / "teacher" / "greedy" / "executions.jsonl"
    )
    assert lay.expert_iteration().round(2).record == (
        tmp_path / "students" / "expert-iteration" / "round-2" / "round.json"
    )
    assert RunLayout.of("demo").dir.as_posix() == "runs/demo"


def test_train_report_to_passes_through_to_the_trainer_arguments(tmp_path):
    """Experiment tracking: `train.report_to` reaches transformers.TrainingArguments as set;
    the default stays off."""
    p = tmp_path / "track.yaml"
    p.write_text("name: t\ntrain:\n  report_to: [tensorboard, mlflow]\n")
    args = load_config(p).train.training_arguments(output_dir=str(tmp_path / "o"))
    assert args.report_to == ["tensorboard", "mlflow"]
    default = load_config(REPO / "configs" / "demo.yaml").train
    assert default.training_arguments(output_dir=str(tmp_path / "d")).report_to == []


def test_extends_lays_a_variant_over_its_base(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text(
        "name: base\ntask: gsm8k\nteacher: a\nstudent: b\nmethods: [ekt, kd]\n"
        "train: {learning_rate: 1.0e-4, num_train_epochs: 2}\n"
        "eval: {limit: 30, k: [1, 5], n: 5}\n"
    )
    (tmp_path / "sub" / "variant.yaml").write_text(
        "extends: ../base.yaml\nname: variant\nmethods: [ekt]\n"
        "train: {learning_rate: 3.0e-5}\neval: {k: [1]}\n"
    )
    (tmp_path / "sub" / "again.yaml").write_text("extends: variant.yaml\neval: {limit: 7}\n")
    cfg = load_config(tmp_path / "sub" / "again.yaml")
    assert (cfg.name, cfg.task, cfg.teacher, cfg.student) == ("variant", "gsm8k", "a", "b")
    assert cfg.methods == ["ekt"]  # a list replaces the base's, never appends
    assert cfg.train.learning_rate == 3.0e-5 and cfg.train.num_train_epochs == 2  # merged
    assert (cfg.eval.limit, cfg.eval.k, cfg.eval.n) == (7, [1], 5)
    # flags still go on top of the whole chain
    assert load_config(tmp_path / "sub" / "again.yaml", ["--eval.limit", "3"]).eval.limit == 3


@pytest.mark.parametrize(
    "files, msg",
    [
        ({"a.yaml": "extends: a.yaml\n"}, "cannot extend itself"),
        ({"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: a.yaml\n"}, "cannot extend itself"),
        ({"a.yaml": "extends: missing.yaml\n"}, "missing.yaml: config file not found"),
        ({"a.yaml": "extends: [x]\n"}, "expected the path of another config file"),
        ({"a.yaml": "extends: b.yaml\n", "b.yaml": "task: gsm8k\ntrian: {}\n"}, "trian"),
        ({"a.yaml": "extends: b.yaml\n", "b.yaml": "- 1\n"}, "expected a mapping"),
    ],
)
def test_extends_errors_name_the_file(tmp_path, files, msg):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(EktError, match=msg) as e:
        load_config(tmp_path / "a.yaml")
    assert str(tmp_path / "a.yaml") in str(e.value)
