"""The symbolic-grading helper: reads ``[gold, value]`` JSON lines, answers ``1`` or ``0``.

Started by :mod:`ekt.data.symbolic`, which kills it when a pair takes too long. It limits its
own address space first, so a huge expression ends it instead of the machine's memory.
"""

from __future__ import annotations

import json
import os
import resource
import sys


def _limit_memory() -> None:
    mb = int(os.environ.get("EKT_SYMBOLIC_MEMORY_MB", "1024"))
    resource.setrlimit(resource.RLIMIT_AS, (mb << 20, mb << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _as_latex(text: str) -> str:
    text = text.strip()
    return text if "$" in text or "\\boxed" in text else f"${text}$"


def main() -> None:
    _limit_memory()
    sys.setrecursionlimit(4000)
    from math_verify import parse, verify
    from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig

    latex = [LatexExtractionConfig()]
    expr = [ExprExtractionConfig()]

    def parsed(text: str, gold: bool) -> list:
        first = parse(_as_latex(text), extraction_config=latex, parsing_timeout=None)
        if first or gold:
            return first
        return parse(text, extraction_config=expr, parsing_timeout=None)

    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            gold, value = json.loads(line)
            g = parsed(gold, True)
            v = parsed(value, False)
            ok = bool(g) and bool(v) and verify(g, v, timeout_seconds=None)
        except (Exception, RecursionError):  # a value that does not parse is simply wrong
            ok = False
        out.write("1\n" if ok else "0\n")
        out.flush()


if __name__ == "__main__":
    main()
