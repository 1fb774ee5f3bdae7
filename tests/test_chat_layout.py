"""Chat prompts for local models: the tokenizer's own chat template, at sampling and training.

The tiny test model gets a small ChatML-like template written here; its end-of-turn token
is the model's EOS, as in SmolLM2-Instruct's template.
"""

from __future__ import annotations

import pytest

from ekt.data.prompt_format import load_format
from ekt.errors import EktError
from ekt.generation.backends.torch_sampler import TransformersSampler
from ekt.generation.config import SamplingParams
from ekt.generation.sampler import chat_ids
from ekt.training.train import encode_pair

TEMPLATE = (
    "{% for m in messages %}<|pad|>{{ m['role'] }}\n{{ m['content'] }}<|endoftext|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|pad|>assistant\n{% endif %}"
)
QUESTION = "A ball costs $2. How much do 5 balls cost?"
PROGRAM = "def solution():\n    price = 2\n    return price * 5\n"


@pytest.fixture(scope="module")
def chat_model(tiny_model_dir, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return model, tok


def test_chat_prompt_is_rendered_with_the_tokenizers_template(chat_model):
    model, tok = chat_model
    messages = load_format("chat").teacher(QUESTION, 1)
    pr = TransformersSampler(model, tok, progress=False).prepare(messages)
    text = tok.decode(pr.ids, skip_special_tokens=False)
    fmt = load_format("chat")
    ex = fmt.exemplars[0]
    assert text == (
        f"<|pad|>system\n{fmt.instruction}<|endoftext|>\n"
        f"<|pad|>user\n{' '.join(ex.question.split())}<|endoftext|>\n"
        f"<|pad|>assistant\n```python\n{ex.program}```<|endoftext|>\n"
        f"<|pad|>user\n{QUESTION}<|endoftext|>\n<|pad|>assistant\n"
    )
    assert pr.skip == "" and pr.allowed is None  # chat prompts are never healed


def test_chat_greedy_sample_is_model_generate_on_the_template(chat_model):
    import torch

    model, tok = chat_model
    messages = load_format("chat").student(QUESTION)
    sampler = TransformersSampler(model, tok, progress=False)
    params = SamplingParams(n=2, temperature=0, max_new_tokens=10, stop=())
    out = list(sampler.sample([("p", messages)], params))
    ids = torch.tensor([chat_ids(tok, messages)])
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=10, pad_token_id=tok.pad_token_id)  # fmt: skip
    want = tok.decode(ref[0, ids.shape[1] :], skip_special_tokens=True)
    assert [c.text for c in out] == [want, want]


def test_a_tokenizer_without_chat_template_says_so(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(EktError, match="no chat template.*--prompt-format function"):
        chat_ids(tok, [{"role": "user", "content": "hi"}])


def test_instruct_student_pair_puts_the_loss_on_the_assistant_turn_only(chat_model):
    _, tok = chat_model
    ex = encode_pair(tok, QUESTION, PROGRAM, 400, "program", "chat")
    prompt_ids = chat_ids(tok, load_format("chat").student(QUESTION))
    assert ex["input_ids"][: len(prompt_ids)] == prompt_ids
    assert all(x == -100 for x in ex["labels"][: len(prompt_ids)])
    scored = [t for t in ex["labels"] if t != -100]
    assert scored == ex["input_ids"][len(prompt_ids) :]
    assert tok.decode(scored, skip_special_tokens=False) == (
        f"```python\n{PROGRAM}```<|endoftext|>\n"
    )
    full = encode_pair(tok, QUESTION, PROGRAM, 400, "all", "chat")
    assert full["labels"] == full["input_ids"] == ex["input_ids"]


def test_completion_pair_layout_is_unchanged(chat_model):
    _, tok = chat_model
    ex = encode_pair(tok, QUESTION, PROGRAM, 400, "program")
    prompt = f"# Question: {QUESTION}\ndef solution():\n"
    assert tok.decode(ex["input_ids"], skip_special_tokens=False) == (
        prompt + PROGRAM[len("def solution():\n") :] + "<|endoftext|>"
    )
