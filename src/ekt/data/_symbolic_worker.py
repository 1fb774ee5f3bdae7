"""The symbolic-grading helper: reads ``[gold, value]`` JSON lines, answers ``1`` or ``0``.

Started by :mod:`ekt.data.symbolic`, which kills it when a pair takes too long. It limits its
own address space first, so a huge expression ends it instead of the machine's memory.
"""

from __future__ import annotations

import json
import re
import sys

from ekt.data.helper import limit_memory

_PYTHON_NAMES = [
    (re.compile(r"\*\*"), "^"),
    (re.compile(r"(?<![\\a-zA-Z])pi\b"), r"\\pi "),
    (re.compile(r"(?<![\\a-zA-Z])(oo|inf|infinity)\b"), r"\\infty "),
]


def _as_latex(text: str) -> str:
    text = text.strip()
    return text if "$" in text or "\\boxed" in text else f"${text}$"


def _python_spelling(text: str) -> str:
    """Python/sympy spellings (``9*pi``, ``2**x``, ``oo``) in LaTeX; unchanged text has none."""
    if "\\" in text:
        return text
    for pat, repl in _PYTHON_NAMES:
        text = pat.sub(repl, text)
    return text


def main() -> None:
    limit_memory()
    sys.setrecursionlimit(4000)
    from math_verify import parse, verify
    from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig

    latex = [LatexExtractionConfig()]
    expr = [ExprExtractionConfig()]

    def readings(text: str, gold: bool) -> list[list]:
        """The text read as LaTeX and (for a returned value) as a plain expression ("9*pi")."""
        out = [parse(_as_latex(text), extraction_config=latex, parsing_timeout=None)]
        if not gold:
            spelled = _python_spelling(text)
            if spelled != text:
                out.append(parse(_as_latex(spelled), extraction_config=latex, parsing_timeout=None))
            whole = parse(text, extraction_config=expr, parsing_timeout=None)
            # extraction finds expressions anywhere ("2" in "2^{99}"): keep only a whole reading
            if whole and "".join(str(whole[-1]).split()) == "".join(text.split()):
                out.append(whole)
        return [r for r in out if r]

    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            gold, value = json.loads(line)
            golds = readings(gold, True)
            ok = bool(golds) and any(
                verify(golds[0], v, timeout_seconds=None) for v in readings(value, False)
            )
        except (Exception, RecursionError):  # a value that does not parse is simply wrong
            ok = False
        out.write("1\n" if ok else "0\n")
        out.flush()


if __name__ == "__main__":
    main()
