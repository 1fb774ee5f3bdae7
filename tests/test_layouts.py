"""Expert iteration and live KD in every prompt layout a task uses: the chat layout, and a
procedural task's own exemplars in its few-shot prompts."""

from __future__ import annotations

import json

import pytest
from conftest import amplified_model

from ekt.data.prompt_format import load_format
from ekt.data.tasks import get_task
from ekt.generation.config import SamplingParams
from ekt.methods.expert_iteration import ExpertIterationConfig, Rounds, expert_iteration
from ekt.records import Completion, TrainPair
from ekt.sandbox.pool import SandboxConfig
from ekt.training.kd import Distiller, KDConfig
from ekt.training.train import TrainConfig, encode_pair

pytest.importorskip("reasoning_gym")

TEMPLATE = (
    "{% for m in messages %}<|pad|>{{ m['role'] }}\n{{ m['content'] }}<|endoftext|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|pad|>assistant\n{% endif %}"
)
TRAIN = TrainConfig(
    learning_rate=1e-3, warmup_steps=0, batch_size=2, per_device_train_batch_size=2, max_steps=2
)


@pytest.fixture(scope="module")
def chat_student(tiny_model_dir, tmp_path_factory):
    return amplified_model(tiny_model_dir, tmp_path_factory.mktemp("chat") / "m", 1.0, TEMPLATE)


class ChatSampler:
    """Answers in a fenced block, as a chat model does; right for even-numbered questions."""

    def __init__(self, answers):
        self.answers, self.seen = answers, []

    def sample(self, requests, params):
        for pid, prompt in requests:
            self.seen.append(prompt)
            right = int(pid.rsplit("/", 1)[1]) % 2 == 0
            value = self.answers[pid] if right else -1
            text = f"Here:\n```python\ndef solution():\n    return {value!r}\n```"
            for i in range(params.n):
                yield Completion(pid, i, text, 12)


@pytest.mark.slow
def test_expert_iteration_in_the_chat_layout_with_task_exemplars(tmp_path, chat_student):
    task = get_task("letter_counting")
    problems = task.load("train")[:6]
    answers = {p.id: p.answer for p in problems}
    samplers: list[ChatSampler] = []

    def make_sampler(spec):
        def make():
            samplers.append(ChatSampler(answers))
            return samplers[-1]

        return make

    out = tmp_path / "ei"
    result = expert_iteration(problems, out, Rounds(
        str(chat_student), task, make_sampler,
        SamplingParams(n=1, temperature=0.8, max_new_tokens=32),
        ExpertIterationConfig(rounds=1), TRAIN, SandboxConfig(workers=1, timeout=3),
        device="cpu", prompt_format="chat",
    ))  # fmt: skip
    prompt = samplers[0].seen[0]
    assert isinstance(prompt, list) and prompt[0]["role"] == "system"
    shown = " ".join(m["content"] for m in prompt)
    assert "text.lower().count(letter)" in shown and "Julie" not in shown  # the task's shots
    job = json.loads((out / "round-1" / "generate.json").read_text())
    assert job["prompt_format"].startswith("chat@") and job["prompt_format"].endswith(
        "letter_counting.jsonl"
    )
    # fenced replies were read into programs and graded right: 3 of 6 solved
    assert result.rounds[0].solved == 3 and result.model
    # the student trained in its own (chat) layout
    state = json.loads((out / "round-1" / "model" / "train_summary.json").read_text())
    assert "chat" in json.dumps(state)


def test_kd_teacher_reads_each_pair_in_the_students_chat_layout(tiny_model_dir, tmp_path):
    teacher = amplified_model(tiny_model_dir, tmp_path / "t", 1.5, TEMPLATE)
    student = amplified_model(tiny_model_dir, tmp_path / "s", 1.0, TEMPLATE)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(student)
    fmt = load_format(get_task("letter_counting").prompt_format("chat"))
    program = "def solution():\n    return 3\n"
    pair = TrainPair("letter_counting/train/1", "How many a in 'banana'?", program)
    for view in ("student", "few-shot"):
        d = Distiller(str(teacher), KDConfig(teacher_prompt=view), "cpu")
        examples, dropped = d.build_examples(tok, [pair], 512, "program", fmt)
        assert dropped == 0
        ex = examples[0]
        assert ex["input_ids"] == encode_pair(tok, pair.question, program, 512, "program", fmt)[
            "input_ids"
        ]
        t_text = d.tok.decode(ex["t_input_ids"])
        assert "<|pad|>assistant\n```python\ndef solution():" in t_text  # the chat turn
        prompt = d.tok.decode(ex["t_input_ids"][: ex["t_n_prompt"]])
        assert prompt.endswith("<|pad|>assistant\n")
        assert ("the river was wide" in prompt) is (view == "few-shot")
        # both sides predict the same program tokens: the student's reply starts where its
        # prompt ends
        s_prompt = tok.decode(ex["input_ids"][: ex["n_prompt"]])
        assert s_prompt.endswith("<|pad|>assistant\n")
