"""Reference programs from GSM8K's calculator annotations (the supervised upper bound).

Each step of a GSM8K solution annotates its arithmetic as ``<<48/2=24>>``. A
reference program assigns every annotated expression to a step variable, refers
to an earlier step by name where the expression reuses that step's result, and
returns the last step -- or, when the solution's ``#### answer`` line names the
result of an earlier step and not of the last one, that earlier step (later
steps are then dropped). Expressions are checked with ``ast`` to be plain
arithmetic (numbers, ``+ - * / // % **``, unary signs, parentheses) and are
never evaluated here: the programs are verified in the sandbox like any other,
and those that do not return the gold answer (some solutions finish with an
unannotated step) are dropped by the filter.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Iterable

from ekt.data.grading import grade_value
from ekt.data.prompts import PROGRAM_HEADER
from ekt.records import Problem, TrainPair

_ANNOTATION = re.compile(r"<<([^<>=]+)=([^<>]*)>>")
_LEADING_ZEROS = re.compile(r"(?<![\d.])0+(?=\d)")  # "05" is a SyntaxError in Python 3
_ALLOWED_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
_ALLOWED_UNARY = (ast.USub, ast.UAdd)
SMALL = 12  # literals up to this size are left as written (they are rarely earlier results)


def _parse_number(text: str) -> float | None:
    text = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _final_answer(solution_text: str) -> float | None:
    if "####" not in solution_text:
        return None
    return _parse_number(solution_text.rsplit("####", 1)[1])


def parse_arithmetic(expr: str) -> ast.expr | None:
    """The ``ast`` of an annotation's left side when it is plain arithmetic, else None.

    Thousands separators and dollar signs are dropped, ``x`` is read as ``*`` and
    leading zeros are removed. Only int/float literals, the binary operators
    ``+ - * / // % **`` and unary ``+``/``-`` are accepted; names, calls,
    comparisons, strings and everything else make the result None.
    """
    cleaned = expr.replace(",", "").replace("$", "").replace("x", "*").strip()
    cleaned = _LEADING_ZEROS.sub("", cleaned)
    if not cleaned:
        return None
    try:
        tree = ast.parse(cleaned, mode="eval")
    except (SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Expression):
            continue
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            continue
        if isinstance(node, ast.BinOp) and isinstance(node.op, _ALLOWED_OPS):
            continue
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, _ALLOWED_UNARY):
            continue
        if isinstance(node, _ALLOWED_OPS + _ALLOWED_UNARY):
            continue
        return None
    return tree.body


class _UseEarlierSteps(ast.NodeTransformer):
    """Replace a literal by the most recent step variable whose annotated result it equals."""

    def __init__(self, results: list[tuple[str, float]]):
        self.results = results

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        v = node.value
        if type(v) in (int, float) and abs(v) > SMALL:
            for name, value in reversed(self.results):
                if abs(value - v) < 1e-9:
                    return ast.Name(id=name, ctx=ast.Load())
        return node


def reference_program(solution_text: str) -> str | None:
    """A program from the annotations of one solution, or None when it has none usable.

    None when the text has no annotation or any annotation is not plain arithmetic.
    """
    steps: list[str] = []
    results: list[tuple[str, float | None]] = []
    known: list[tuple[str, float]] = []
    for i, m in enumerate(_ANNOTATION.finditer(solution_text), start=1):
        expr = parse_arithmetic(m.group(1))
        if expr is None:
            return None
        expr = _UseEarlierSteps(known).visit(expr)
        name = f"step{i}"
        steps.append(f"    {name} = {ast.unparse(expr)}\n")
        value = _parse_number(m.group(2))
        results.append((name, value))
        if value is not None:
            known.append((name, value))
    if not steps:
        return None
    last = len(steps)
    gold = _final_answer(solution_text)
    last_value = results[-1][1]
    if gold is not None and (last_value is None or not _close(last_value, gold)):
        for j in range(len(results) - 1, -1, -1):
            value = results[j][1]
            if value is not None and _close(value, gold):
                last = j + 1
                break
    return PROGRAM_HEADER + "".join(steps[:last]) + f"    return step{last}\n"


def _close(a: float, b: float) -> bool:
    return grade_value(a, "float", b)  # the one grading rule (ekt.data.grading)


def reference_pairs(problems: Iterable[Problem]) -> list[TrainPair]:
    """Unverified supervised pairs (verify them in the sandbox before training)."""
    out = []
    for p in problems:
        prog = reference_program(p.solution)
        if prog is not None:
            out.append(TrainPair(p.id, p.question, prog, "supervised"))
    return out
