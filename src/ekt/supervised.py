"""Reference programs from GSM8K's calculator annotations (the supervised upper bound).

Each step of a GSM8K solution annotates its arithmetic as ``<<48/2=24>>``. A
reference program assigns every annotated expression to a step variable, refers
to an earlier step by name where the expression reuses that step's result, and
returns the last step. Expressions are checked with ``ast`` to be plain
arithmetic and are never evaluated here: the programs are verified in the
sandbox like any other, and those that do not return the gold answer (the
annotations are sometimes inconsistent) are dropped by the filter.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable

from ekt.prompts import PROGRAM_HEADER
from ekt.records import Problem, TrainPair

_ANNOTATION = re.compile(r"<<([^<>=]+)=([^<>]*)>>")
_ALLOWED_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
SMALL = 12  # literals up to this size are left as written (they are rarely earlier results)


def _parse_number(text: str) -> float | None:
    text = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        return float(text)
    except ValueError:
        return None


def _arithmetic(expr: str) -> ast.expr | None:
    cleaned = expr.replace(",", "").replace("$", "").replace("x", "*").strip()
    try:
        tree = ast.parse(cleaned, mode="eval")
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Expression | ast.Load):
            continue
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            continue
        if isinstance(node, ast.BinOp) and isinstance(node.op, _ALLOWED_OPS):
            continue
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            continue
        if isinstance(node, (*_ALLOWED_OPS, ast.USub, ast.UAdd)):
            continue
        return None
    return tree.body


class _UseEarlierSteps(ast.NodeTransformer):
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
    """A program from the annotations of one solution, or None when there are none usable."""
    steps: list[str] = []
    results: list[tuple[str, float]] = []
    for i, m in enumerate(_ANNOTATION.finditer(solution_text), start=1):
        expr = _arithmetic(m.group(1))
        if expr is None:
            return None
        expr = _UseEarlierSteps(results).visit(expr)
        name = f"step{i}"
        steps.append(f"    {name} = {ast.unparse(expr)}\n")
        value = _parse_number(m.group(2))
        if value is not None:
            results.append((name, value))
    if not steps:
        return None
    return PROGRAM_HEADER + "".join(steps) + f"    return step{len(steps)}\n"


def reference_pairs(problems: Iterable[Problem]) -> list[TrainPair]:
    """Unverified supervised pairs (verify them in the sandbox before training)."""
    out = []
    for p in problems:
        prog = reference_program(p.solution)
        if prog is not None:
            out.append(TrainPair(p.id, p.question, prog, "supervised"))
    return out
