"""``ekt run CONFIG --dry-run``: the plan's numbers, what a previous run changes, no weights.

Every count here is worked out by hand from the config (questions x n, + greedy) or with
the real tokenizer of the model (a tiny HF folder, and the embedded SmolLM2 preset), and the
previous run is a folder of real records in the schema the pipeline writes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from transformers import AutoTokenizer

from ekt.cli import main
from ekt.data.prompt_format import load_format
from ekt.generation.budget import expected_samples
from ekt.pipeline.config import build_config, dump_config
from ekt.pipeline.plan import ASSUMED_PASS_AT_1, plan_experiment, render, train_steps
from ekt.records import JsonlWriter


def _config(data_dir: Path, teacher: Path | str, student: Path | str, **over) -> dict:
    cfg = {
        "name": "plan",
        "data_dir": str(data_dir),
        "teacher": str(teacher),
        "student": str(student),
        "methods": ["ekt"],
        "train_limit": 3,
        "device": "cpu",
        "teacher_sampling": {"n": 2, "max_new_tokens": 10},
        "train": {"batch_size": 2, "per_device_train_batch_size": 2, "num_train_epochs": 1},
        "eval": {"limit": 2, "n": 3, "k": [1], "max_new_tokens": 7, "greedy": True},
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def _stage(plan, prefix: str):
    found = [s for s in plan.stages if s.name.startswith(prefix)]
    assert len(found) == 1, [s.name for s in plan.stages]
    return found[0]


def _tokens(model: Path | str, prompts: list) -> list[int]:
    tok = AutoTokenizer.from_pretrained(str(model))
    return [len(tok(p).input_ids) for p in prompts]


@pytest.fixture(scope="module")
def smollm2() -> str:
    """The embedded SmolLM2 preset's converted folder (its tokenizer, no weights loaded)."""
    from ekt.errors import EktError
    from ekt.models import converted_dir, preset_gguf

    try:
        folder = converted_dir(preset_gguf("smollm2-135m"), "smollm2-135m")
    except EktError as e:
        pytest.skip(f"preset not installed: {e}")
    if not (folder / "tokenizer_config.json").is_file():
        pytest.skip("smollm2-135m is not converted here (`ekt models smollm2-135m`)")
    return str(folder)


def test_plan_counts_prompts_samples_and_tokens_by_hand(tiny_model_dir, data_dir, smollm2):
    cfg = build_config(_config(data_dir, tiny_model_dir, "smollm2-135m"))
    plan = plan_experiment(cfg, "/nonexistent/run")
    train = cfg.load_task().load("train")[:3]
    test = cfg.load_task().load("test")[:2]
    fmt = load_format("function")

    teacher = _stage(plan, "teacher sampling")
    assert (teacher.prompts, teacher.samples_max, teacher.samples_expected) == (3, 6, 6)
    assert teacher.completion_tokens_max == 6 * 10
    # a local engine prefills each prompt once per question (its samples share the cache)
    lens = _tokens(tiny_model_dir, [fmt.teacher(p) for p in train])
    assert teacher.prompt_tokens_max == sum(lens)
    assert teacher.cost_max is None  # no price table
    assert _stage(plan, "verify").programs == 6

    train_ekt = _stage(plan, "train ekt")
    assert (train_ekt.pairs, train_ekt.steps, train_ekt.exact_pairs) == (3, 2, False)

    ev_teacher = _stage(plan, "evaluate teacher")
    assert (ev_teacher.prompts, ev_teacher.samples_max) == (2, 2 * 3 + 2)  # n=3 + greedy
    assert ev_teacher.completion_tokens_max == 8 * 7
    lens = _tokens(tiny_model_dir, [fmt.teacher(p) for p in test])
    assert ev_teacher.prompt_tokens_max == 2 * sum(lens)  # the sampled call and the greedy one

    base = _stage(plan, "evaluate student-base")
    # the preset's real tokenizer, zero-shot prompts (SmolLM2 adds no BOS: a few dozen tokens)
    smol = _tokens(smollm2, [fmt.student(p) for p in test])
    assert base.prompt_tokens_max == 2 * sum(smol)
    assert all(20 < n < 200 for n in smol)
    assert _stage(plan, "evaluate student-ekt").samples_max == 8

    totals = plan.totals()
    assert totals["samples_max"] == 6 + 8 + 8 + 8
    assert totals["completion_tokens_max"] == 60 + 3 * 56
    text = render(plan)
    assert text.splitlines()[-1] == plan.summary()
    assert plan.summary().startswith("total: 30 samples, ")
    assert "no price table" in plan.summary()


def test_train_steps_as_the_trainer_counts_them():
    train = {"batch_size": 8, "per_device_train_batch_size": 4, "num_train_epochs": 2}
    cfg = build_config({"train": train}).train
    # 17 pairs: 5 micro-batches of 4, 2 accumulated per step -> 3 steps an epoch
    assert train_steps(17, cfg) == 6
    assert train_steps(0, cfg) == 0
    capped = build_config({"train": {"max_steps": 5}}).train
    assert train_steps(1000, capped) == 5


def _previous_run(out: Path, cfg, problems, correct: dict[str, list[bool]], n_tokens: int) -> None:
    """A run folder as the pipeline leaves it: config.yaml, teacher shards, executions."""
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(dump_config(cfg))
    samples = out / "teacher" / "samples"
    samples.mkdir(parents=True)
    with (
        JsonlWriter(samples / "shard-00000.jsonl") as w,
        JsonlWriter(out / "teacher" / "executions.jsonl") as ex,
    ):
        for i, p in enumerate(problems):
            for k, ok in enumerate(correct[p.id]):
                rec = {
                    "problem_id": p.id,
                    "sample_idx": k,
                    "text": "    return 1\n",
                    "n_tokens": n_tokens + i,  # 9, 10, 11 tokens: mean n_tokens + 1
                    "program": "def solution():\n    return 1\n",
                    "extract_error": "",
                    "prompt_tokens": 0,
                    "stop": "",
                }
                w.write(rec)
                ex.write(
                    {
                        **rec,
                        "status": "ok",
                        "value": 1,
                        "type": "int",
                        "error": "",
                        "stdout_tail": "",
                        "ms": 1.0,
                        "correct": ok,
                    }
                )
    (samples / "shard-00000.done").write_text("")


def test_previous_run_measures_tokens_and_pass_rates(tiny_model_dir, data_dir, tmp_path):
    over = {"teacher_sampling": {"budget": "adaptive", "round_size": 1}}
    cfg = build_config(_config(data_dir, tiny_model_dir, tiny_model_dir, **over))
    problems = cfg.load_task().load("train")[:3]
    correct = dict(zip([p.id for p in problems], [[True, True], [False, True], [False, False]]))

    before = plan_experiment(cfg, tmp_path / "run")
    t0 = _stage(before, "teacher sampling")
    assert t0.samples_expected == t0.samples_max == 6  # nothing measured: the full ceiling
    assert t0.completion_tokens_expected == 60
    assumed = t0.budget["assumed"]
    assert [float(p) for p in assumed] == list(ASSUMED_PASS_AT_1)
    for p, v in assumed.items():
        assert v == pytest.approx(3 * expected_samples(float(p), 2, 1), abs=0.05)
    assert "ASSUMPTIONS" in render(before)

    _previous_run(tmp_path / "run", cfg, problems, correct, n_tokens=9)
    after = plan_experiment(cfg, tmp_path / "run")
    t1 = _stage(after, "teacher sampling")
    # pass@1 1, 0.5, 0: one round of one sample, then 1 + 0.5, then both samples
    assert t1.samples_expected == pytest.approx(1 + 1.5 + 2)
    assert t1.samples_expected == pytest.approx(
        sum(expected_samples(p, 2, 1) for p in (1.0, 0.5, 0.0))
    )
    assert t1.samples_max == 6
    # a local engine sends a question's prompt once per round it is still sampled in
    lens = _tokens(tiny_model_dir, [load_format("function").teacher(p) for p in problems])
    assert t1.prompt_tokens_max == 2 * sum(lens)
    assert t1.prompt_tokens_expected == pytest.approx(sum(x * e for x, e in zip(lens, (1, 1.5, 2))))
    assert t1.completion_tokens_expected == pytest.approx(10 * 4.5)  # measured 10 a sample
    assert t1.completion_tokens_max == 60
    assert t1.budget["adaptive"] == pytest.approx(4.5)
    assert t1.budget["measured_questions"] == 3
    assert _stage(after, "verify").programs == pytest.approx(4.5)
    assert after.totals()["samples_expected"] < before.totals()["samples_expected"]

    # shards gone, results.json kept: its stages.teacher_generate still measures the tokens
    shutil.rmtree(tmp_path / "run" / "teacher" / "samples")
    usage = {"samples": 6, "completion_tokens": 42, "prompt_tokens": 0}
    (tmp_path / "run" / "results.json").write_text(
        json.dumps({"stages": {"teacher_generate": usage}})
    )
    t3 = _stage(plan_experiment(cfg, tmp_path / "run"), "teacher sampling")
    assert t3.completion_tokens_expected == pytest.approx(7 * 4.5)  # 42 / 6 a sample

    # the same folder under another temperature: its measurements no longer apply
    hotter = build_config(
        _config(
            data_dir,
            tiny_model_dir,
            tiny_model_dir,
            teacher_sampling={"budget": "adaptive", "round_size": 1, "temperature": 1.2},
        )
    )
    t2 = _stage(plan_experiment(hotter, tmp_path / "run"), "teacher sampling")
    assert t2.samples_expected == 6 and t2.completion_tokens_expected == 60
    assert any("teacher_sampling.temperature" in n for n in t2.notes)


def test_price_table_gives_the_cost(tiny_model_dir, data_dir):
    price = {"name": "openai", "price_input_per_mtok": 2.0, "price_output_per_mtok": 10.0}
    over = {"teacher_sampling": {"backend": price}}
    cfg = build_config(_config(data_dir, tiny_model_dir, tiny_model_dir, **over))
    plan = plan_experiment(cfg)
    train = cfg.load_task().load("train")[:3]
    lens = _tokens(tiny_model_dir, [load_format("function").teacher(p) for p in train])
    teacher = _stage(plan, "teacher sampling")
    # the openai backend sends one request per sample (n_per_request 1): each bills its prompt
    assert teacher.prompt_tokens_max == 2 * sum(lens)
    assert teacher.cost_max == pytest.approx(2 * sum(lens) * 2.0 / 1e6 + 60 * 10.0 / 1e6)
    ev = _stage(plan, "evaluate teacher")  # the teacher's backend prices its evaluation too
    assert ev.cost_max == pytest.approx(ev.prompt_tokens_max * 2e-6 + 8 * 7 * 1e-5)
    assert _stage(plan, "evaluate student-base").cost_max is None  # eval.backend: no prices
    assert plan.totals()["cost_max"] == pytest.approx(teacher.cost_max + ev.cost_max, abs=1e-6)
    assert f"${plan.totals()['cost_max']:,.2f} at most" in plan.summary()


def test_dry_run_loads_no_model_and_writes_nothing(
    tiny_model_dir, data_dir, smollm2, tmp_path, monkeypatch, capsys
):
    import transformers

    import ekt.generation.backends
    import ekt.models
    import ekt.pipeline.experiment

    def refuse(*a, **k):
        raise AssertionError("--dry-run reached a model load")

    for obj, name in (
        (transformers.AutoModelForCausalLM, "from_pretrained"),
        (ekt.models, "load_model"),
        (ekt.models, "convert_gguf"),
        (ekt.pipeline.experiment, "run_experiment"),  # imported by `ekt run` when it runs
        (ekt.generation.backends, "make_sampler"),  # imported by the commands that sample
    ):
        monkeypatch.setattr(obj, name, refuse)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_config(data_dir, tiny_model_dir, "smollm2-135m")))
    out = tmp_path / "run"
    assert main(["run", str(path), "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.strip().splitlines()[-1].startswith("total: 30 samples, ")
    assert "evaluate student-base" in text
    assert not out.exists()  # a plan writes nothing

    assert main(["run", str(path), "--dry-run", "--json", "--out", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["samples_max"] == 30
    assert data["summary"].startswith("total: 30 samples")
    assert [s["name"] for s in data["stages"]][0].startswith("teacher sampling")

    assert main(["run", str(path), "--json"]) == 2  # --json is the plan's form only
    assert "--dry-run" in capsys.readouterr().err


def test_matrix_lists_shared_stages_once_and_totals_them(tiny_model_dir, data_dir, tmp_path):
    t2 = shutil.copytree(tiny_model_dir, tmp_path / "teacher-b")
    s2 = shutil.copytree(tiny_model_dir, tmp_path / "student-b")
    raw = _config(data_dir, tiny_model_dir, tiny_model_dir, methods=["ekt", "supervised"])
    raw.update(teachers=[str(tiny_model_dir), str(t2)], students=[str(tiny_model_dir), str(s2)])
    plan = plan_experiment(build_config(raw), tmp_path / "m")
    assert len(plan.cells) == 4
    names = [s.name for s in plan.stages]
    assert names.count("teacher sampling (train)") == 2  # per teacher, not per cell
    assert sum(n.startswith("verify") for n in names) == 2
    assert sum(n.startswith("supervised") for n in names) == 1
    assert names.count("train ekt") == 4 and names.count("train supervised") == 2
    evals = [n.split(" (")[0] for n in names if n.startswith("evaluate")]
    assert evals.count("evaluate teacher") == 2 and evals.count("evaluate student-base") == 2
    assert evals.count("evaluate student-ekt") == 4
    assert evals.count("evaluate student-supervised") == 2
    # 2 teachers x 3 questions x 2 samples; 10 evaluations x (2 questions x 3 + 2 greedy)
    assert plan.totals()["samples_max"] == 2 * 6 + 10 * 8
    assert plan.summary().startswith("total: 92 samples")
    assert all(s.cell for s in plan.stages)  # each stage says its cell, or shared


@pytest.mark.parametrize(
    "change, message",
    [
        ({"teacher_samplin": {"n": 2}}, "unknown key(s) teacher_samplin"),
        ({"teacher": "/nonexistent/teacher.gguf"}, "teacher: --model /nonexistent/teacher.gguf"),
        ({"eval": {"n": 2, "k": [4]}}, "exceeds"),
    ],
)
def test_bad_config_fails_as_a_real_run_does(
    change, message, tiny_model_dir, data_dir, tmp_path, capsys
):
    raw = _config(data_dir, tiny_model_dir, tiny_model_dir)
    raw.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out)]) == 2
    real = capsys.readouterr().err
    assert main(["run", str(path), "--dry-run", "--out", str(out)]) == 2
    planned = capsys.readouterr().err
    assert message in real
    assert planned == real


def test_expert_iteration_rounds_from_a_previous_run(tiny_model_dir, data_dir, tmp_path):
    raw = _config(data_dir, tiny_model_dir, tiny_model_dir, methods=["expert-iteration"])
    raw["expert_iteration"] = {"rounds": 3}
    cfg = build_config(raw)
    fresh = plan_experiment(cfg, tmp_path / "run")
    rounds = [s for s in fresh.stages if s.name.startswith("expert iteration")]
    assert [s.samples_max for s in rounds] == [6, 6, 6]  # 3 questions x n=2, at most all
    assert [s.samples_expected for s in rounds] == [6, 6, 6]

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(dump_config(cfg))
    ei = out / "students" / "expert-iteration"
    for r, attempted in ((1, 3), (2, 1)):  # round 2: one question left; then it stopped
        (ei / f"round-{r}").mkdir(parents=True)
        (ei / f"round-{r}" / "round.json").write_text(
            json.dumps({"round": r, "attempted": attempted})
        )
    (ei / "rounds.jsonl").write_text("")
    after = plan_experiment(cfg, out)
    rounds = [s for s in after.stages if s.name.startswith("expert iteration")]
    assert [s.samples_expected for s in rounds] == [6, 2, 0]
    assert [s.samples_max for s in rounds] == [6, 6, 6]
    assert after.totals()["samples_expected"] < fresh.totals()["samples_expected"]


def test_plan_says_what_a_teacher_token_budget_caps(tiny_model_dir, data_dir):
    over = {"methods": ["ekt", "expert-iteration"], "teacher_token_budget": 1000}
    plan = plan_experiment(build_config(_config(data_dir, tiny_model_dir, tiny_model_dir, **over)))
    (note,) = [n for n in plan.notes if n.startswith("teacher_token_budget")]
    # 3 questions x 2 samples x 10 tokens at most: the budget cannot be spent
    assert "(ekt)" in note and "draws at most 60 tokens, less than the budget" in note
    assert note in render(plan)
    over["teacher_token_budget"] = 50
    plan = plan_experiment(build_config(_config(data_dir, tiny_model_dir, tiny_model_dir, **over)))
    (note,) = [n for n in plan.notes if n.startswith("teacher_token_budget")]
    assert "less than the budget" not in note
    over["teacher_token_budget"] = 0
    with pytest.raises(Exception, match="teacher_token_budget: must be a positive"):
        build_config(_config(data_dir, tiny_model_dir, tiny_model_dir, **over)).validate()
