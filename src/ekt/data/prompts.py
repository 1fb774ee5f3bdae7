"""Prompts: the teacher's few-shot view, the student's zero-shot view, and program extraction.

Both views end with ``def solution():`` and a newline, so every model continues
a function body. The teacher sees ``EXEMPLARS`` first; the student sees only the
question. ``extract_program`` turns a continuation back into a whole program.

The exemplar programs were written for this project for five GSM8K training
questions; those questions are excluded from every split (``is_exemplar``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ekt.records import Problem

PROGRAM_HEADER = "def solution():\n"
INSTRUCTION = (
    "# Each question below is answered by a Python function solution() that computes\n"
    "# the answer step by step with named variables and returns it as a number.\n\n"
)
# Generation may stop at any of these; extract_program cuts there too.
STOP_STRINGS = ["\n# Question", "\ndef ", "\nprint(", "\nif __name__", "\n\n\n", "\n```"]


@dataclass(frozen=True)
class Exemplar:
    source_id: str  # the GSM8K problem the example was written for
    question: str
    body: str  # the function body, indented by four spaces


EXEMPLARS: tuple[Exemplar, ...] = (
    Exemplar(
        "gsm8k/train/3",
        "Julie is reading a 120-page book. Yesterday, she was able to read 12 pages and today, "
        "she read twice as many pages as yesterday. If she wants to read half of the remaining "
        "pages tomorrow, how many pages should she read?",
        "    book_pages = 120\n"
        "    read_yesterday = 12\n"
        "    read_today = read_yesterday * 2\n"
        "    pages_left = book_pages - read_yesterday - read_today\n"
        "    read_tomorrow = pages_left / 2\n"
        "    return read_tomorrow\n",
    ),
    Exemplar(
        "gsm8k/train/5",
        "Mark has a garden with flowers. He planted plants of three different colors in it. Ten "
        "of them are yellow, and there are 80% more of those in purple. There are only 25% as "
        "many green flowers as there are yellow and purple flowers. How many flowers does Mark "
        "have in his garden?",
        "    yellow = 10\n"
        "    purple = yellow + yellow * 80 / 100\n"
        "    green = (yellow + purple) * 25 / 100\n"
        "    total_flowers = yellow + purple + green\n"
        "    return total_flowers\n",
    ),
    Exemplar(
        "gsm8k/train/12",
        "Randy has 60 mango trees on his farm. He also has 5 less than half as many coconut "
        "trees as mango trees. How many trees does Randy have in all on his farm?",
        "    mango_trees = 60\n"
        "    coconut_trees = mango_trees / 2 - 5\n"
        "    all_trees = mango_trees + coconut_trees\n"
        "    return all_trees\n",
    ),
    Exemplar(
        "gsm8k/train/14",
        "Joy can read 8 pages of a book in 20 minutes. How many hours will it take her to read "
        "120 pages?",
        "    pages_per_block = 8\n"
        "    minutes_per_block = 20\n"
        "    pages_to_read = 120\n"
        "    minutes_needed = pages_to_read / pages_per_block * minutes_per_block\n"
        "    hours_needed = minutes_needed / 60\n"
        "    return hours_needed\n",
    ),
    Exemplar(
        "gsm8k/train/25",
        "Ralph is going to practice playing tennis with a tennis ball machine that shoots out "
        "tennis balls for Ralph to hit. He loads up the machine with 175 tennis balls to start "
        "with. Out of the first 100 balls, he manages to hit 2/5 of them. Of the next 75 tennis "
        "balls, he manages to hit 1/3 of them. Out of all the tennis balls, how many did Ralph "
        "not hit?",
        "    total_balls = 175\n"
        "    hit_first = 100 * 2 / 5\n"
        "    hit_next = 75 * 1 / 3\n"
        "    not_hit = total_balls - hit_first - hit_next\n"
        "    return not_hit\n",
    ),
)

_EXEMPLAR_IDS = frozenset(e.source_id for e in EXEMPLARS)


def _normalise(text: str) -> str:
    return " ".join(text.split()).lower()


_EXEMPLAR_QUESTIONS = frozenset(_normalise(e.question) for e in EXEMPLARS)


def is_exemplar(problem: Problem) -> bool:
    """True for a problem whose question is used as a few-shot example (by id or by text)."""
    return problem.id in _EXEMPLAR_IDS or _normalise(problem.question) in _EXEMPLAR_QUESTIONS


def _question_block(question: str) -> str:
    return f"# Question: {' '.join(question.split())}\n{PROGRAM_HEADER}"


def teacher_prompt(problem: Problem | str, n_exemplars: int = len(EXEMPLARS)) -> str:
    """Instruction, worked examples, then the target question, ending inside ``solution``."""
    question = problem if isinstance(problem, str) else problem.question
    shots = "".join(_question_block(e.question) + e.body + "\n\n" for e in EXEMPLARS[:n_exemplars])
    return INSTRUCTION + shots + _question_block(question)


def student_prompt(problem: Problem | str) -> str:
    """The bare question, zero-shot, in the same layout the teacher's examples use."""
    question = problem if isinstance(problem, str) else problem.question
    return _question_block(question)


_UNINDENTED = re.compile(r"^\S", re.MULTILINE)


def extract_program(text: str) -> str:
    """Turn a continuation of ``def solution():`` into a whole program.

    The body ends at the first non-blank line that is not indented (the next
    example, a stray ``print``, prose) or at a stop string; trailing blank
    lines and a torn last line without a newline that does not parse are
    dropped. The result always starts with ``def solution():``.
    """
    for stop in STOP_STRINGS:
        cut = text.find(stop)
        if cut != -1:
            text = text[: cut + 1]
    m = _UNINDENTED.search(text)
    if m:
        text = text[: m.start()]
    lines = text.rstrip().split("\n")
    # Drop a torn last line (max_new_tokens reached mid-statement) if it breaks the program.
    while lines and lines[-1].strip():
        candidate = PROGRAM_HEADER + "\n".join(lines) + "\n"
        try:
            compile(candidate, "<program>", "exec")
            return candidate
        except SyntaxError:
            if len(lines) == 1:
                break
            lines = lines[:-1]
    body = "\n".join(lines).rstrip()
    return PROGRAM_HEADER + (body + "\n" if body else "    pass\n")
