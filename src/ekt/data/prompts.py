"""Prompts of the default format, exemplar exclusion, and program extraction (the public API).

The layouts themselves are data (``ekt.data.prompt_format``, files under
``ekt/data/formats/``); this module keeps the names the rest of ekt uses for the
default ``function`` format: both views end with ``def solution():`` and a
newline, so every model continues a function body. The teacher sees
``EXEMPLARS`` first; the student sees only the question. ``extract`` (from
``ekt.data.extract``) turns any reply, a continuation or a chat answer, back
into a whole program.

The exemplar programs were written for this project for five GSM8K training
questions; those questions are excluded from every split (``is_exemplar``), as
are the exemplars of any other format passed to it.
"""

from __future__ import annotations

from collections.abc import Iterable

from ekt.data.extract import Extraction, extract, extract_program, runnable
from ekt.data.prompt_format import Exemplar, Prompt, PromptFormat, load_format, squash
from ekt.records import Problem

_DEFAULT = load_format()
PROGRAM_HEADER = _DEFAULT.header
INSTRUCTION = _DEFAULT.instruction + "\n\n"
# Generation may stop at any of these; a continuation is cut there too.
STOP_STRINGS = list(_DEFAULT.stop)
EXEMPLARS: tuple[Exemplar, ...] = _DEFAULT.exemplars


def is_exemplar(problem: Problem, formats: Iterable[str | PromptFormat] = ()) -> bool:
    """True for a problem used as a few-shot example (by id or by text) by the default
    format or by any of ``formats``."""
    question = squash(problem.question).lower()
    for fmt in (_DEFAULT, *(load_format(f) for f in formats)):
        if problem.id in fmt.exemplar_ids or question in fmt.exemplar_questions:
            return True
    return False


def teacher_prompt(
    problem: Problem | str, n_exemplars: int | None = None, fmt: str | PromptFormat | None = None
) -> Prompt:
    """Instruction, worked examples, then the target question (text, or chat messages)."""
    return load_format(fmt).teacher(problem, n_exemplars)


def student_prompt(problem: Problem | str, fmt: str | PromptFormat | None = None) -> Prompt:
    """The bare question, zero-shot, in the same layout the teacher's examples use."""
    return load_format(fmt).student(problem)


def extract_for(text: str, fmt: str | PromptFormat | None = None) -> Extraction:
    """``extract`` with the format's entry point and def line."""
    f = load_format(fmt)
    return extract(text, f.entry_point, f.header)


__all__ = [
    "EXEMPLARS",
    "INSTRUCTION",
    "PROGRAM_HEADER",
    "STOP_STRINGS",
    "Exemplar",
    "Extraction",
    "Prompt",
    "PromptFormat",
    "extract",
    "extract_for",
    "extract_program",
    "is_exemplar",
    "load_format",
    "runnable",
    "student_prompt",
    "teacher_prompt",
]
