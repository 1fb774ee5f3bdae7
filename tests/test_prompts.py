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
    from ekt.data.tasks import GSM8K

    by_id = GSM8K(data_dir=str(data_dir)).by_id()
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

    from ekt.data.tasks import GSM8K

    task = GSM8K(data_dir=str(data_dir))
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
