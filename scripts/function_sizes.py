"""The longest functions and the widest signatures of a source tree (default: src/).

For the house-keeping issue: it prints the ten longest functions (lines from ``def`` to the
last line of the body, nested functions counted in their parent and on their own), the ten
widest signatures (parameters, ``self``/``cls`` not counted), and the median length, so that
a refactor can show its before and after::

    python scripts/function_sizes.py [ROOT] [--top N]

The last line is machine-readable::

    functions=<n> median_lines=<m> over_100=<k> params_8_or_more=<w> longest=<lines>
"""

from __future__ import annotations

import argparse
import ast
import statistics
from pathlib import Path


def functions(root: Path) -> list[tuple[int, int, str]]:
    """(lines, parameters, "path:line name") for every function and method under ``root``."""
    out = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        stack: list[tuple[ast.AST, str]] = [(tree, "")]
        while stack:
            node, owner = stack.pop()
            for child in ast.iter_child_nodes(node):
                name = owner
                if isinstance(child, ast.ClassDef):
                    name = f"{owner}{child.name}."
                elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    a = child.args
                    params = [*a.posonlyargs, *a.args, *a.kwonlyargs]
                    n = len([p for p in params if p.arg not in ("self", "cls")])
                    n += bool(a.vararg) + bool(a.kwarg)
                    first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                    lines = (child.end_lineno or child.lineno) - first + 1
                    where = f"{path.relative_to(root.parent)}:{child.lineno}"
                    out.append((lines, n, f"{where} {owner}{child.name}"))
                    name = f"{owner}{child.name}."
                stack.append((child, name))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", nargs="?", default="src")
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args()
    found = functions(Path(args.root).resolve())
    if not found:
        raise SystemExit(f"no functions under {args.root}")
    print(f"The {args.top} longest functions (lines):")
    for lines, _, where in sorted(found, reverse=True)[: args.top]:
        print(f"  {lines:5d}  {where}")
    print(f"The {args.top} widest signatures (parameters):")
    for _, n, where in sorted(found, key=lambda f: (-f[1], f[2]))[: args.top]:
        print(f"  {n:5d}  {where}")
    sizes = [f[0] for f in found]
    print(
        f"functions={len(found)} median_lines={statistics.median(sizes):g} "
        f"over_100={sum(s > 100 for s in sizes)} params_8_or_more={sum(f[1] >= 8 for f in found)} "
        f"longest={max(sizes)}"
    )


if __name__ == "__main__":
    main()
