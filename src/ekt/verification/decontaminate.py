"""Decontamination: drop training questions that overlap an evaluation set.

A training question is contaminated by an evaluation set when the two share a run of ``n``
consecutive words (13 by default, the window GPT-3's and later contamination studies used),
after lower-casing and keeping only letters and digits as words, so punctuation, spacing and
case changes do not hide an overlap. A question shorter than ``n`` words is contaminated when
it equals an evaluation question word for word. Pure functions over text; the filter stage
uses them with every evaluation task of a run (and the sets those tasks were built from).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

DEFAULT_NGRAM = 13
_WORD = re.compile(r"[^\W_]+")


def fold_question(text: str) -> str:
    """A question with whitespace runs as single spaces and lower-cased; every symbol kept."""
    return " ".join(text.split()).lower()


def words(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(text.lower()))


def ngrams(ws: tuple[str, ...], n: int) -> Iterable[tuple[str, ...]]:
    return (ws[i : i + n] for i in range(len(ws) - n + 1))


@dataclass
class Decontaminator:
    """The n-grams of named question sets; ``hits(question)`` names the sets it overlaps."""

    sets: Mapping[str, Iterable[str]]
    n: int = DEFAULT_NGRAM
    # only a question equal to one of the sets (whitespace and case folded, every symbol kept)
    # counts: for templated questions, whose words and n-grams all questions share
    exact: bool = False
    _grams: dict[tuple[str, ...], set[str]] = field(default_factory=dict, init=False)
    _whole: dict[tuple[str, ...], set[str]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"decontamination n-gram size must be >= 1, got {self.n}")
        for name, questions in self.sets.items():
            for q in questions:
                if self.exact:
                    self._whole.setdefault((fold_question(q),), set()).add(name)
                    continue
                ws = words(q)
                self._whole.setdefault(ws, set()).add(name)
                for g in ngrams(ws, self.n):
                    self._grams.setdefault(g, set()).add(name)

    def hits(self, question: str) -> set[str]:
        if self.exact:
            return set(self._whole.get((fold_question(question),), ()))
        ws = words(question)
        found = set(self._whole.get(ws, ()))
        if len(ws) >= self.n:
            for g in ngrams(ws, self.n):
                found |= self._grams.get(g, set())
        return found

    def __call__(self, question: str) -> bool:
        return bool(self.hits(question))
