"""``ekt export`` writes exactly what the student was trained on, in the prompt format the run
recorded, with a dataset card.

The reference is ekt's own training pair builder (``ekt.training.train.encode_pair``, the ids
the Trainer sees), decoded with the tiny model's tokenizer: a messages line, rendered as the
student saw it, is that text byte for byte. TRL's SFTTrainer reads the exports (slow test).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from tiny_models import make_tiny_model
from transformers import AutoTokenizer

from ekt.cli import main
from ekt.data.prompt_format import load_format
from ekt.pipeline.config import RunConfig, TeacherSampling, dump_config
from ekt.records import TrainPair, read_jsonl, write_json_atomic, write_jsonl_atomic
from ekt.training.train import encode_pair

# the trained student is a module fixture: every test of the file on one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("export_faithful")

HEADER = "def solution():\n"
PAIRS = [
    TrainPair("homework/train/0", "Ann has 3 pens and buys 4 more. How many pens?",
              HEADER + "    pens = 3 + 4\n    return pens\n"),
    TrainPair("homework/train/3", "A box holds 6 eggs.\nHow many eggs in 5 boxes?",
              HEADER + "    eggs = 6 * 5\n    return eggs\n"),
]  # fmt: skip
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}<|endoftext|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    """The tiny model, its tokenizer given a chat template (an instruct student)."""
    d = make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    tok = AutoTokenizer.from_pretrained(d)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(d)
    return d


def make_run(root: Path, student_format: str | None) -> Path:
    """A run folder as `ekt run` leaves it: config.yaml, manifest.json, train_pairs.jsonl."""
    d = root / "run"
    write_jsonl_atomic(d / "train_pairs.jsonl", PAIRS)
    if student_format is not None:
        cfg = RunConfig(name="hw", task="homework.yaml", teacher="my-teacher", student="tiny",
                        student_prompt_format=student_format,
                        teacher_sampling=TeacherSampling(n=8, temperature=0.6))  # fmt: skip
        (d / "config.yaml").write_text(dump_config(cfg))
    write_json_atomic(d / "manifest.json", {
        "ekt": "test", "data": {"source": "/data/{split}.jsonl",
                                "sha256": {"homework/train": "ab" * 32}},
    })  # fmt: skip
    return d


def _export(run: Path, out: Path, *extra: str) -> list[dict]:
    assert main(["export", str(run), "--format", "messages", "--out", str(out), *extra]) == 0
    return [obj for _, obj in read_jsonl(out)]


def _trained_text(tok, pair: TrainPair, fmt: str) -> str:
    """What the Trainer is fed for a pair (ekt's builder), as text."""
    ids = encode_pair(tok, pair.question, pair.program, 4096, "program", fmt)["input_ids"]
    return tok.decode(ids)


@pytest.mark.parametrize("fmt", ["function", "chat"])
def test_messages_export_is_the_trained_conversation(tmp_path, student, fmt, capsys):
    run = make_run(tmp_path, fmt)
    rows = _export(run, tmp_path / "m.jsonl")
    assert f"prompt format {fmt}" in capsys.readouterr().out  # the run's, not the default
    tok = AutoTokenizer.from_pretrained(student)
    layout = load_format(fmt)
    assert [r["problem_id"] for r in rows] == [p.problem_id for p in PAIRS]
    for row, pair in zip(rows, PAIRS, strict=True):
        messages = row["messages"]
        if fmt == "chat":  # the system message, the question, the fenced program
            assert [m["role"] for m in messages] == ["system", "user", "assistant"]
            assert messages[0]["content"] == layout.instruction
            text = tok.apply_chat_template(messages, tokenize=False)
        else:  # the prompt ends with the header; the reply is the body, not the header again
            assert [m["role"] for m in messages] == ["user", "assistant"]
            assert messages[0]["content"].endswith(HEADER)
            assert not messages[1]["content"].lstrip().startswith("def ")
            text = "".join(m["content"] for m in messages) + tok.eos_token
        assert text.count(HEADER.strip()) == 1  # the header once
        assert text == _trained_text(tok, pair, fmt)  # byte for byte


def test_prompt_format_flag_overrides_the_recorded_one(tmp_path, student):
    run = make_run(tmp_path, "chat")
    rows = _export(run, tmp_path / "m.jsonl", "--prompt-format", "function")
    tok = AutoTokenizer.from_pretrained(student)
    assert [m["role"] for m in rows[0]["messages"]] == ["user", "assistant"]
    joined = "".join(m["content"] for m in rows[0]["messages"]) + tok.eos_token
    assert joined == _trained_text(tok, PAIRS[0], "function")
    # a run without a config (pairs copied by hand) is in the default layout
    bare = make_run(tmp_path / "bare", None)
    rows = _export(bare, tmp_path / "b.jsonl")
    assert [m["role"] for m in rows[0]["messages"]] == ["user", "assistant"]


def test_prompt_completion_chat_is_conversational(tmp_path):
    run = make_run(tmp_path, "chat")
    out = tmp_path / "pc.jsonl"
    assert main(["export", str(run), "--format", "prompt-completion", "--out", str(out)]) == 0
    row = next(obj for _, obj in read_jsonl(out))
    layout = load_format("chat")
    assert row["prompt"] == layout.student(PAIRS[0].question)
    assert row["completion"] == [{"role": "assistant", "content": layout.assistant(
        PAIRS[0].program)}]  # fmt: skip


def test_every_export_carries_a_dataset_card(tmp_path):
    import yaml

    run = make_run(tmp_path, "function")
    out = tmp_path / "m.jsonl"
    _export(run, out)
    card = (tmp_path / "m.jsonl.card.md").read_text()
    front = yaml.safe_load(card.split("---")[1])["ekt"]
    assert front["teacher"] == "my-teacher" and front["task"] == "homework.yaml"
    assert front["teacher_sampling"]["n"] == 8 and front["teacher_sampling"]["temperature"] == 0.6
    assert front["data_sha256"] == {"homework/train": "ab" * 32}
    assert front["data_source"] == "/data/{split}.jsonl"
    pairs_bytes = (run / "train_pairs.jsonl").read_bytes()
    assert front["pairs_sha256"] == hashlib.sha256(pairs_bytes).hexdigest()
    assert (front["pairs"], front["questions"], front["sources"]) == (2, 2, {"teacher": 2})
    assert front["prompt_format"] == "function" and front["export_format"] == "messages"
    assert "my-teacher" in card.split("---", 2)[2]  # and in words below the front matter


@pytest.mark.slow
def test_trl_sft_trainer_trains_on_exactly_ekts_examples(tmp_path, student):
    """The student is trained by ekt in the chat layout; the export (which reads the layout
    from the student's train_summary.json) loaded into SFTTrainer tokenises to ekt's ids."""
    import datasets
    import trl
    from transformers import AutoModelForCausalLM

    from ekt.training.config import TrainConfig
    from ekt.training.train import train_student

    run = make_run(tmp_path, None)  # no config.yaml: the layout comes from the student
    cfg = TrainConfig(learning_rate=1e-3, warmup_steps=0, batch_size=2,
                      per_device_train_batch_size=2, max_steps=1)  # fmt: skip
    train_student(str(student), run / "train_pairs.jsonl", run / "students" / "ekt", cfg,
                  device="cpu", prompt_format="chat")  # fmt: skip
    out = tmp_path / "m.jsonl"
    rows = _export(run, out)
    assert [m["role"] for m in rows[0]["messages"]][0] == "system"
    tok = AutoTokenizer.from_pretrained(student)
    ds = datasets.load_dataset("json", data_files=str(out), split="train")
    args = trl.SFTConfig(output_dir=str(tmp_path / "trl"), max_steps=2,
                         per_device_train_batch_size=2, learning_rate=1e-2, report_to="none",
                         save_strategy="no", use_cpu=True, bf16=False)  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(student)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    for example, pair in zip(trainer.train_dataset, PAIRS, strict=True):
        ekt_ids = encode_pair(tok, pair.question, pair.program, 4096, "program", "chat")
        assert example["input_ids"] == ekt_ids["input_ids"]
    assert trainer.train().global_step == 2
    # the completion layout's prompt-completion export: TRL reads the same text
    pc = tmp_path / "pc.jsonl"
    assert main(["export", str(run), "--format", "prompt-completion", "--out", str(pc),
                 "--prompt-format", "function"]) == 0  # fmt: skip
    ds = datasets.load_dataset("json", data_files=str(pc), split="train")
    plain = AutoTokenizer.from_pretrained(student)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=plain)
    for example, pair in zip(trainer.train_dataset, PAIRS, strict=True):
        assert plain.decode(example["input_ids"]) == _trained_text(plain, pair, "function")
