import ast

from ekt.data.prompts import (
    EXEMPLARS,
    PROGRAM_HEADER,
    extract_program,
    student_prompt,
    teacher_prompt,
)
from ekt.records import Problem

P = Problem("gsm8k/test/0", "Tom has 3 apples.\nHe eats one. How many are left?", 2, "test")


def test_teacher_prompt_has_examples_and_ends_inside_solution():
    prompt = teacher_prompt(P)
    assert len(EXEMPLARS) >= 4
    assert prompt.count(PROGRAM_HEADER) == len(EXEMPLARS) + 1
    assert prompt.endswith(
        "# Question: Tom has 3 apples. He eats one. How many are left?\n" + PROGRAM_HEADER
    )
    for e in EXEMPLARS:
        assert e.body in prompt


def test_student_prompt_is_bare_question():
    assert student_prompt(P) == (
        "# Question: Tom has 3 apples. He eats one. How many are left?\n" + PROGRAM_HEADER
    )


def test_exemplar_programs_compute_their_gold(data_dir):
    from ekt.data.tasks import get_task

    by_id = get_task("gsm8k", data_dir=str(data_dir)).by_id()
    for e in EXEMPLARS:
        ns: dict = {}
        exec(PROGRAM_HEADER + e.body, ns)  # our own trusted exemplar code
        assert abs(ns["solution"]() - by_id[e.source_id].answer) < 1e-9
        assert " ".join(by_id[e.source_id].question.split()) == " ".join(e.question.split())


def test_extract_stops_at_next_example():
    text = "    a = 3\n    return a - 1\n\n\n# Question: next one\ndef solution():\n    return 0\n"
    assert extract_program(text) == "def solution():\n    a = 3\n    return a - 1\n"


def test_extract_strips_trailing_junk():
    text = "    x = 2\n    return x\nprint(solution())\nThe answer is 2."
    assert extract_program(text) == "def solution():\n    x = 2\n    return x\n"


def test_extract_drops_torn_last_line():
    assert extract_program("    x = 2\n    y = (x +") == "def solution():\n    x = 2\n"


def test_extract_handles_empty_and_nested_blocks():
    assert extract_program("") == "def solution():\n    pass\n"
    text = "    total = 0\n    for i in range(3):\n        total += i\n\n    return total\n"
    prog = extract_program(text)
    ast.parse(prog)
    assert "return total" in prog


# sha256 of the function-format prompts computed from the code before prompt formats became
# data (commit e74045e): teacher and student prompts of the first 50 train and 50 test
# questions, then teacher prompts of "Q?" with 0..5 exemplars. A change of one byte fails.
PINNED_PROMPTS_SHA256 = "9dade854451ea94d4523f08359f0c63afc97cdcb77d23b1ef46b9d5f39c19426"


def test_function_format_prompts_are_byte_identical_to_before(data_dir):
    import hashlib

    from ekt.data.tasks import get_task

    task = get_task("gsm8k", data_dir=str(data_dir))
    problems = task.load("train")[:50] + task.load("test")[:50]
    h = hashlib.sha256()
    for p in problems:
        h.update(teacher_prompt(p).encode())
        h.update(b"\0")
        h.update(student_prompt(p).encode())
        h.update(b"\0")
    for k in range(6):
        h.update(teacher_prompt("Q?", k).encode())
    assert h.hexdigest() == PINNED_PROMPTS_SHA256


# -- prompt formats as files -----------------------------------------------------------------

import json  # noqa: E402

import pytest  # noqa: E402

from ekt.data.prompt_format import load_format  # noqa: E402
from ekt.errors import EktError  # noqa: E402

OWN_FORMAT = """\
name: mine
style: completion
entry_point: answer
exemplars: shots.jsonl
instruction: "# Solve:"
stop: ["\\n\\n"]
templates:
  teacher: |
    {{ instruction }}
    {% for e in exemplars %}
    Q: {{ e.question }}
    {{ e.program }}

    {% endfor %}
    Q: {{ question }}
    {{ header }}
  student: |
    Q: {{ question }}
    {{ header }}
"""


def _own(tmp_path, text=OWN_FORMAT, shots=None):
    d = tmp_path / "fmt"
    d.mkdir(exist_ok=True)
    (d / "own.yaml").write_text(text)
    rows = shots if shots is not None else [
        {"source_id": "gsm8k/train/7", "question": "Two  plus\\ntwo?",
         "program": "def answer():\n    return 2 + 2\n"},
    ]  # fmt: skip
    (d / "shots.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d / "own.yaml"


def test_a_users_own_format_file_lays_out_prompts(tmp_path):
    fmt = load_format(str(_own(tmp_path)))
    assert fmt.entry_point == "answer" and fmt.header == "def answer():\n"
    assert fmt.stop == ("\n\n",)
    assert fmt.teacher("What is 3 + 3?") == (
        "# Solve:\nQ: Two  plus\\ntwo?\ndef answer():\n    return 2 + 2\n\n"
        "Q: What is 3 + 3?\ndef answer():\n"
    )
    assert fmt.student("What is\n 3 + 3?") == "Q: What is 3 + 3?\ndef answer():\n"


def test_exemplars_of_any_format_are_excluded(tmp_path, data_dir):
    from ekt.data.prompts import is_exemplar
    from ekt.data.tasks import get_task

    task = get_task("gsm8k", data_dir=str(data_dir))
    target = task.load("train")[10]
    path = _own(tmp_path, shots=[
        {"source_id": "", "question": target.question.upper() + "  ",
         "program": "def answer():\n    return 1\n"},
    ])  # fmt: skip
    assert not is_exemplar(target)
    assert is_exemplar(target, [str(path)])  # by text, whitespace and case aside
    other = get_task("gsm8k", data_dir=str(data_dir), exemplar_formats=(str(path),))
    ids = {p.id for p in other.load("train")}
    assert target.id not in ids and len(ids) == len(task.load("train")) - 1


def test_built_in_chat_and_tinygsm_formats():
    chat = load_format("chat")
    msgs = chat.teacher("Tom has 3 apples.", 2)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[2]["content"].startswith("```python\ndef solution():\n")
    assert msgs[2]["content"].endswith("\n```") and msgs[-1]["content"] == "Tom has 3 apples."
    assert chat.student("Q?") == [msgs[0], {"role": "user", "content": "Q?"}]
    assert chat.stop == ()
    tiny = load_format("tinygsm")
    assert tiny.entry_point == "simple_math_problem"
    assert tiny.student("Q?") == 'def simple_math_problem() -> float:\n    """\n    Q?\n    """\n'
    for e in tiny.exemplars:
        ns: dict = {}
        exec(e.program, ns)  # our own trusted exemplar code
        assert ns["simple_math_problem"]() == pytest.approx(_solve(e.source_id))


def _solve(source_id):
    ns: dict = {}
    exec(next(e for e in EXEMPLARS if e.source_id == source_id).program, ns)  # trusted
    return ns["solution"]()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace("style: completion", "style: poem"), "style must be"),
        (lambda t: t + "colour: red\n", "unknown key"),
        (lambda t: t.replace("entry_point: answer", "entry_point: 3x"), "identifier"),
        (lambda t: t.replace("  student: |", "  studnt: |"), "needs templates"),
        (lambda t: t.replace("{{ question }}\n    {{ header }}\n  student",
                             "{{ question }\n  student"), "templates.teacher line"),
        (lambda t: t.replace("shots.jsonl", "none.jsonl"), "no such file"),
        (lambda t: "[1, 2]", "a mapping"),
        (lambda t: t.replace("name: mine", "name: [unclosed"), "not valid YAML"),
    ],
)
def test_bad_format_files_say_what_and_where(tmp_path, edit, message):
    path = _own(tmp_path, edit(OWN_FORMAT))
    with pytest.raises(EktError, match=message) as e:
        load_format(str(path))
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"question": "q", "program": "def other():\n    return 1\n"}, "does not define answer"),
        ({"question": "q", "program": "def answer(:\n"}, "does not parse"),
        ({"question": "", "program": "def answer():\n    return 1\n"}, "'question' must be"),
        ({"question": "q", "program": "def answer():\n  return 1\n", "x": 1}, "unknown field"),
    ],
)
def test_bad_exemplar_files_name_the_line(tmp_path, row, message):
    path = _own(tmp_path, shots=[row])
    with pytest.raises(EktError, match=message) as e:
        load_format(str(path))
    assert "shots.jsonl:1" in str(e.value)


def test_a_template_naming_an_unknown_variable_fails_at_render(tmp_path):
    path = _own(tmp_path, OWN_FORMAT.replace("Q: {{ question }}\n    {{ header }}\n  student",
                                             "Q: {{ qestion }}\n  student"))  # fmt: skip
    fmt = load_format(str(path))
    with pytest.raises(EktError, match=r"templates\.teacher: UndefinedError.*qestion"):
        fmt.teacher("x")


def test_unknown_format_name_lists_the_built_ins():
    with pytest.raises(EktError, match="function, chat, tinygsm"):
        load_format("chatml")
