"""Program extraction: a model's reply (raw text) -> a whole program, or the reason there is none.

A pure function over text: nothing is executed; ``ast`` checks what a block
defines. Three kinds of reply are told apart automatically:

* **fenced**: the reply holds Markdown code fences (```` ```python ````, ```` ``` ````,
  ``~~~``; an unclosed last fence runs to the end). The first block that defines
  the entry point at top level is the program; blocks that only call it, or
  show output, are ignored.
* **whole**: no fence, but a top-level ``def <entry>(`` line: the program is the
  code around it (imports, helpers and constants above, helpers below); prose
  before and after is dropped.
* **continuation**: the reply starts with an indented line: it continues the
  prompt's ``def`` line (the completion formats), and is cut as ekt always cut
  it: at a stop string or the first unindented line, a torn last line dropped.

In a whole or fenced program only imports, function and class definitions and
plain assignments are kept: ``print(...)`` and other top-level calls, a
``__main__`` guard and assignments that call the entry point (``answer =
solution()``) are removed, so running the program has no side effect before the
sandbox calls the entry point. A torn last line (the reply hit its token limit)
is dropped while the rest parses. A program that defines the entry point but does not
compile is returned as written (the sandbox reports its SyntaxError: a wrong program, not
a reply without one). Windows line ends are read as newlines.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass

# A continuation ends at the first of these (the function layout's stop strings).
CONTINUATION_STOPS = ("\n# Question", "\ndef ", "\nprint(", "\nif __name__", "\n\n\n", "\n```")

KINDS = ("fenced", "whole", "continuation")


@dataclass(frozen=True)
class Extraction:
    program: str  # the whole program ("" when none could be extracted)
    kind: str  # fenced | whole | continuation | "" (failed)
    error: str = ""  # why there is no program ("" when there is one)

    @property
    def ok(self) -> bool:
        return bool(self.program)


_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+#.-]*)[^\n`]*$")
_UNINDENTED = re.compile(r"^\S", re.MULTILINE)
# A top-level line that is code rather than prose (for replies without fences).
_CODE_LINE = re.compile(
    r"^(?:import\s|from\s+[\w.]+\s+import\s|(?:async\s+)?def\s|class\s|@|#|"
    r"if\s+__name__|print\(|return\b|"
    r"[A-Za-z_][\w.]*(?:\[[^\]]*\])?\s*(?::[^=]+)?(?:=|\+=|-=|\*=|/=|//=|%=)(?!=)|"
    r"[A-Za-z_][\w.]*\(.*\)\s*(?:#.*)?$|[)\]}]\s*$)"
)
_NON_CODE_LANGS = frozenset(
    {"text", "txt", "output", "console", "bash", "sh", "shell", "json", "markdown", "md"}
)


def extract(text: str, entry_point: str = "solution", header: str | None = None) -> Extraction:
    """The program in ``text`` (see the module docstring); ``header``: the def line a
    continuation belongs to (default ``def <entry_point>():``)."""
    header = (header or f"def {entry_point}():").rstrip("\n") + "\n"
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    if not text.strip():
        return Extraction("", "", "empty reply")
    blocks = _fenced_blocks(text)
    if blocks:
        reasons = []
        for lang, code in blocks:
            if lang.lower() in _NON_CODE_LANGS:
                continue
            program, why = _whole_program(code, entry_point)
            if program:
                return Extraction(program, "fenced")
            reasons.append(why)
        first_code = next((c for lang, c in blocks if lang.lower() not in _NON_CODE_LANGS), "")
        if first_code.strip() and _starts_indented(first_code):
            program = _continuation(first_code, header)
            if program:
                return Extraction(program, "continuation")
        why = next((r for r in reasons if "parse" in r), reasons[0] if reasons else "")
        return Extraction(
            "", "", f"no code block defines {entry_point}()" + (f" ({why})" * bool(why))
        )
    if _starts_indented(text):
        program = _continuation(text, header)
        if program:
            return Extraction(program, "continuation")
        return Extraction("", "", "continuation holds no statement")
    m = re.search(
        rf"^([ \t]*)(?:async[ \t]+)?def[ \t]+{re.escape(entry_point)}[ \t]*\(", text, re.M
    )
    if m is None:
        if re.search(r"^[ \t]*(?:async[ \t]+)?def[ \t]+\w+[ \t]*\(", text, re.M):
            return Extraction("", "", f"the reply defines no function {entry_point}()")
        return Extraction("", "", "no code in reply")
    program, why = _whole_program(_region(text, m.start(), len(m.group(1))), entry_point)
    if program:
        return Extraction(program, "whole")
    return Extraction("", "", why)


def extract_program(text: str, entry_point: str = "solution", header: str | None = None) -> str:
    """The program in ``text``, or ``<header>    pass`` when there is none (older callers)."""
    got = extract(text, entry_point, header)
    if got.ok:
        return got.program
    return (header or f"def {entry_point}():").rstrip("\n") + "\n    pass\n"


def runnable(program: str, entry_point: str = "solution") -> str:
    """``program`` as the sandbox runs it: it calls ``solution()``, so alias another entry."""
    if entry_point == "solution" or not program:
        return program
    return program.rstrip("\n") + f"\n\n\nsolution = {entry_point}\n"


# -- pieces -----------------------------------------------------------------------------


def _starts_indented(text: str) -> bool:
    first = next((ln for ln in text.split("\n") if ln.strip()), "")
    return first[:1] in (" ", "\t")


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language tag, code) of each fenced block, in order; an unclosed last one runs to the end."""
    blocks: list[tuple[str, str]] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2)
        body: list[str] = []
        i += 1
        while i < len(lines):
            close = lines[i].strip()
            if close.startswith(fence[0] * len(fence)) and not close.strip(fence[0]):
                break
            body.append(lines[i])
            i += 1
        blocks.append((lang, "\n".join(body)))
        i += 1
    return blocks


def _region(text: str, start: int, indent: int) -> str:
    """The code around the def line at offset ``start``: code-like lines above and below."""
    lines = text.split("\n")
    d = text.count("\n", 0, start)

    def own(line: str) -> str | None:  # the line without the def's indentation, None if less
        head = line[:indent]
        return line[indent:] if not head.strip() else None

    def is_code(line: str, below: bool) -> bool:
        rest = own(line)
        if rest is None:
            return not line.strip()
        if not rest.strip():
            return True
        if rest[:1] in (" ", "\t"):
            return below or _CODE_LINE.match(rest.lstrip()) is not None
        return _CODE_LINE.match(rest) is not None

    s = d
    while s > 0 and is_code(lines[s - 1], below=False):
        s -= 1
    e = d + 1
    while e < len(lines) and is_code(lines[e], below=True):
        e += 1
    picked = [own(ln) or "" for ln in lines[s:e]]
    return "\n".join(picked)


def _parse_trimmed(code: str) -> tuple[ast.Module, list[str]] | tuple[None, str]:
    """Parse ``code``, dropping torn lines from its end while it does not parse."""
    lines = code.rstrip().split("\n")
    first_error = ""
    for attempt in (lines, [ln.expandtabs(4) for ln in lines]):
        cur = list(attempt)
        while cur:
            try:
                return ast.parse("\n".join(cur) + "\n"), cur
            except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
                if not first_error:
                    where = getattr(e, "lineno", None)
                    first_error = f"line {where}: {getattr(e, 'msg', e)}" if where else str(e)
                cur = cur[:-1]
        if "\t" not in code:
            break
    return None, f"does not parse ({first_error})"


def _calls(node: ast.AST, names: set[str]) -> bool:
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in names
        for n in ast.walk(node)
    )


def _whole_program(code: str, entry: str) -> tuple[str, str]:
    """(program, "") when ``code`` defines ``entry`` at top level, else ("", reason)."""
    code = textwrap.dedent(code)
    if not code.strip():
        return "", "empty block"
    tree, lines = _parse_trimmed(code)
    if tree is None:
        # The model wrote its program, but it does not compile: that is a wrong program (the
        # sandbox reports the SyntaxError), not a reply without one.
        if re.search(rf"^(?:async[ \t]+)?def[ \t]+{re.escape(entry)}[ \t]*\(", code, re.M):
            return "\n".join(ln.rstrip() for ln in code.split("\n")).strip("\n") + "\n", ""
        return "", str(lines)
    assert isinstance(lines, list)
    defs = [
        n
        for n in tree.body
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == entry
    ]
    if not defs:
        return "", f"no top-level {entry}()"
    side_effects = {entry, "print", "input", "exit", "quit"}
    kept = []
    for n in tree.body:
        if isinstance(n, ast.Import | ast.ImportFrom | ast.FunctionDef | ast.AsyncFunctionDef):
            kept.append(n)
        elif isinstance(n, ast.ClassDef):
            kept.append(n)
        elif isinstance(n, ast.Assign | ast.AnnAssign | ast.AugAssign) and not _calls(
            n, side_effects
        ):
            kept.append(n)
        else:
            kept.append(None)  # a call, a guard, a loop: dropped
    out: list[str] = []
    prev_end = None  # the last line (1-based) of the previous kept statement, if adjacent
    for n in kept:
        if n is None:
            prev_end = None
            continue
        first = min([n.lineno] + [d.lineno for d in getattr(n, "decorator_list", [])])
        end = n.end_lineno or n.lineno
        if prev_end is not None:
            out.extend(lines[prev_end : first - 1])  # comments and blank lines between
        elif out:
            out.append("")
        out.extend(lines[first - 1 : end])
        prev_end = end
    text = "\n".join(ln.rstrip() for ln in out).strip("\n")
    text = re.sub(r"\n{4,}", "\n\n\n", text)
    return text + "\n", ""


def _continuation(text: str, header: str) -> str:
    """``header`` + the body a continuation holds, cut as ekt always cut it ("" if none)."""
    for stop in CONTINUATION_STOPS:
        cut = text.find(stop)
        if cut != -1:
            text = text[: cut + 1]
    m = _UNINDENTED.search(text)
    if m:
        text = text[: m.start()]
    lines = text.rstrip().split("\n")
    # Drop a torn last line (max_new_tokens reached mid-statement) if it breaks the program.
    while lines and lines[-1].strip():
        candidate = header + "\n".join(lines) + "\n"
        try:
            ast.parse(candidate)
            return candidate
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            if len(lines) == 1:
                break
            lines = lines[:-1]
    body = "\n".join(lines).rstrip()
    if not body.strip():
        return ""
    return header + body + "\n"


__all__ = ["CONTINUATION_STOPS", "Extraction", "extract", "extract_program", "runnable"]
