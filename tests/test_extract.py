"""Extraction corpus: realistic model replies with the exact program (or failure) expected.

Every reply was written for this project in the styles chat and base models answer in:
fenced blocks with and without a language tag, restated def lines, prose around the code,
trailing print calls and __main__ guards, helpers, imports, type hints, docstrings, tabs,
CRLF, torn endings, continuations of a def line, and replies with no usable code.
"""

from __future__ import annotations

import pytest

from ekt.data.extract import extract, extract_program, runnable

S = "def solution():\n"
PROG_A = S + "    apples = 3\n    eaten = 1\n    return apples - eaten\n"
PROG_B = S + "    price = 12\n    count = 4\n    total = price * count\n    return total\n"

# (name, reply, expected program or None, expected kind or a substring of the error)
CASES: list[tuple[str, str, str | None, str]] = [
    # -- fenced, with a language tag ------------------------------------------------------
    ("fence-python", "```python\n" + PROG_A + "```", PROG_A, "fenced"),
    (
        "fence-prose-around",
        "Sure! Here is a program that solves it:\n\n```python\n" + PROG_A + "```\n\n"
        "The function subtracts the eaten apple from the three apples, giving 2.",
        PROG_A,
        "fenced",
    ),
    ("fence-py-tag", "```py\n" + PROG_B + "```\n", PROG_B, "fenced"),
    ("fence-Python3-tag", "```Python3\n" + PROG_B + "```", PROG_B, "fenced"),
    (
        "fence-print-after",
        "```python\n" + PROG_A + "\nprint(solution())\n```\nOutput: 2",
        PROG_A,
        "fenced",
    ),
    (
        "fence-main-guard",
        "```python\n" + PROG_A + "\n\nif __name__ == \"__main__\":\n    print(solution())\n```",
        PROG_A,
        "fenced",
    ),
    (
        "fence-result-assigned",
        "```python\n" + PROG_B + "\nresult = solution()\nprint(f\"The answer is {result}\")\n```",
        PROG_B,
        "fenced",
    ),
    (
        "fence-second-block-calls",
        "Here's the function:\n```python\n" + PROG_A + "```\nYou can run it like this:\n"
        "```python\nprint(solution())\n```\nwhich prints `2`.",
        PROG_A,
        "fenced",
    ),
    (
        "fence-first-block-calls-second-defines",
        "Call it with:\n```python\nsolution()\n```\nwhere\n```python\n" + PROG_B + "```",
        PROG_B,
        "fenced",
    ),
    (
        "fence-output-block-first",
        "```text\n48\n```\n```python\n" + PROG_B + "```",
        PROG_B,
        "fenced",
    ),
    # -- fenced, no language tag -------------------------------------------------------------
    ("fence-bare", "```\n" + PROG_A + "```", PROG_A, "fenced"),
    ("fence-tilde", "~~~python\n" + PROG_A + "~~~\n", PROG_A, "fenced"),
    ("fence-bare-prose", "Answer:\n```\n" + PROG_B + "```\nDone.", PROG_B, "fenced"),
    (
        "fence-four-backticks",
        "````python\n" + PROG_A + "````",
        PROG_A,
        "fenced",
    ),
    # -- helpers, imports, type hints, docstrings ------------------------------------------
    (
        "fence-helper-before",
        "```python\ndef percent(value, pct):\n    return value * pct / 100\n\n\n"
        "def solution():\n    base = 80\n    return base + percent(base, 25)\n```",
        "def percent(value, pct):\n    return value * pct / 100\n\n\n"
        "def solution():\n    base = 80\n    return base + percent(base, 25)\n",
        "fenced",
    ),
    (
        "fence-helper-after",
        "```python\ndef solution():\n    return half(10) + 1\n\ndef half(x):\n    return x / 2\n"
        "\nprint(solution())\n```",
        "def solution():\n    return half(10) + 1\n\ndef half(x):\n    return x / 2\n",
        "fenced",
    ),
    (
        "fence-import",
        "```python\nimport math\n\ndef solution():\n    boxes = math.ceil(25 / 6)\n"
        "    return boxes\n```",
        "import math\n\ndef solution():\n    boxes = math.ceil(25 / 6)\n    return boxes\n",
        "fenced",
    ),
    (
        "fence-from-import-and-constant",
        "```python\nfrom fractions import Fraction\n\nRATE = Fraction(3, 4)\n\n"
        "def solution():\n    return 40 * RATE\n\nprint(solution())\n```",
        "from fractions import Fraction\n\nRATE = Fraction(3, 4)\n\n"
        "def solution():\n    return 40 * RATE\n",
        "fenced",
    ),
    (
        "fence-type-hints-docstring",
        "```python\ndef solution() -> float:\n    \"\"\"Cost of 3 pens at $1.25 each.\"\"\"\n"
        "    pens: int = 3\n    price: float = 1.25\n    return pens * price\n```",
        "def solution() -> float:\n    \"\"\"Cost of 3 pens at $1.25 each.\"\"\"\n"
        "    pens: int = 3\n    price: float = 1.25\n    return pens * price\n",
        "fenced",
    ),
    (
        "fence-comments-kept",
        "```python\ndef solution():\n    # cookies baked per tray\n    per_tray = 12\n"
        "    trays = 3  # three trays\n    return per_tray * trays\n```",
        "def solution():\n    # cookies baked per tray\n    per_tray = 12\n"
        "    trays = 3  # three trays\n    return per_tray * trays\n",
        "fenced",
    ),
    (
        "fence-decorated-helper",
        "```python\nimport functools\n\n@functools.cache\ndef fib(n):\n"
        "    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\ndef solution():\n"
        "    return fib(10)\n```",
        "import functools\n\n@functools.cache\ndef fib(n):\n"
        "    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\ndef solution():\n"
        "    return fib(10)\n",
        "fenced",
    ),
    # -- tabs, CRLF, indentation -------------------------------------------------------------
    (
        "fence-tabs",
        "```python\ndef solution():\n\tmiles = 30\n\thours = 2\n\treturn miles / hours\n```",
        "def solution():\n\tmiles = 30\n\thours = 2\n\treturn miles / hours\n",
        "fenced",
    ),
    (
        "fence-crlf",
        ("```python\n" + PROG_A + "```\nThat's it.").replace("\n", "\r\n"),
        PROG_A,
        "fenced",
    ),
    (
        "fence-indented-in-list",
        "1. Write the function:\n\n   ```python\n   def solution():\n       eggs = 16\n"
        "       return eggs - 3\n   ```\n2. Run it.",
        "def solution():\n    eggs = 16\n    return eggs - 3\n",
        "fenced",
    ),
    (
        "fence-trailing-spaces",
        "```python   \ndef solution():   \n    x = 7   \n    return x * 2\n```",
        "def solution():\n    x = 7\n    return x * 2\n",
        "fenced",
    ),
    # -- torn endings (token limit) --------------------------------------------------------
    (
        "fence-unclosed",
        "```python\n" + PROG_B,
        PROG_B,
        "fenced",
    ),
    (
        "fence-unclosed-torn-line",
        "```python\ndef solution():\n    price = 12\n    count = 4\n    return price * count\n"
        "\nprint(solu",
        "def solution():\n    price = 12\n    count = 4\n    return price * count\n",
        "fenced",
    ),
    # -- whole programs without fences -----------------------------------------------------
    ("whole-bare", PROG_A, PROG_A, "whole"),
    (
        "whole-prose-before-after",
        "To solve this, we subtract.\n\n" + PROG_A + "\nThis returns 2, the apples left.",
        PROG_A,
        "whole",
    ),
    (
        "whole-print-after",
        PROG_B + "\nprint(solution())\n",
        PROG_B,
        "whole",
    ),
    (
        "whole-main-guard",
        PROG_B + "\nif __name__ == '__main__':\n    print(solution())\n",
        PROG_B,
        "whole",
    ),
    (
        "whole-import-above-prose",
        "We need rounding up.\nimport math\n\ndef solution():\n    return math.ceil(7 / 2)\n"
        "\nThe answer is 4.",
        "import math\n\ndef solution():\n    return math.ceil(7 / 2)\n",
        "whole",
    ),
    (
        "whole-crlf-tabs",
        "def solution():\r\n\tlegs = 4\r\n\tdogs = 3\r\n\treturn legs * dogs\r\n",
        "def solution():\n\tlegs = 4\n\tdogs = 3\n\treturn legs * dogs\n",
        "whole",
    ),
    (
        "whole-helper-below",
        "def solution():\n    return double(21)\n\ndef double(x):\n    return 2 * x\n\n"
        "Explanation: double 21.",
        "def solution():\n    return double(21)\n\ndef double(x):\n    return 2 * x\n",
        "whole",
    ),
    # -- continuations of the prompt's def line (base models) ------------------------------
    (
        "continuation",
        "    apples = 3\n    eaten = 1\n    return apples - eaten\n",
        PROG_A,
        "continuation",
    ),
    (
        "continuation-next-question",
        "    a = 3\n    return a - 1\n\n\n# Question: next one\ndef solution():\n    return 0\n",
        S + "    a = 3\n    return a - 1\n",
        "continuation",
    ),
    (
        "continuation-print-prose",
        "    x = 2\n    return x\nprint(solution())\nThe answer is 2.",
        S + "    x = 2\n    return x\n",
        "continuation",
    ),
    (
        "continuation-torn",
        "    x = 2\n    y = (x +",
        S + "    x = 2\n",
        "continuation",
    ),
    (
        "continuation-crlf",
        "    x = 5\r\n    return x * 3\r\n",
        S + "    x = 5\n    return x * 3\n",
        "continuation",
    ),
    (
        "continuation-in-fence",
        "```python\n    total = 9\n    return total\n```",
        S + "    total = 9\n    return total\n",
        "continuation",
    ),
    # -- failures ----------------------------------------------------------------------------
    ("empty", "", None, "empty reply"),
    ("whitespace", "  \n\n\t\n", None, "empty reply"),
    (
        "prose-only",
        "Tom starts with 3 apples and eats 1, so he has 3 - 1 = 2 apples left.\n#### 2",
        None,
        "no code",
    ),
    (
        "refusal",
        "I'm sorry, but I can't help with that request.",
        None,
        "no code",
    ),
    (
        "other-function-name",
        "```python\ndef calculate_apples():\n    return 3 - 1\n\nprint(calculate_apples())\n```",
        None,
        "no code block defines solution()",
    ),
    (
        "other-function-no-fence",
        "def compute():\n    return 3 - 1\n",
        None,
        "defines no function solution()",
    ),
    (
        "fence-script-no-function",
        "```python\napples = 3\neaten = 1\nprint(apples - eaten)\n```",
        None,
        "no code block defines solution()",
    ),
    (
        "fence-only-calls",
        "```python\nprint(solution())\n```",
        None,
        "no code block defines solution()",
    ),
    (  # the model's program does not compile: returned as written, the sandbox says why
        "fence-broken-syntax",
        "```python\ndef solution():\n    cost = $15 * 2\n    return cost\n```\nDone.",
        "def solution():\n    cost = $15 * 2\n    return cost\n",
        "fenced",
    ),
    (
        "whole-broken-syntax",
        "Here:\ndef solution():\n    if 2 * 16 = 32\n    return 32\n",
        "def solution():\n    if 2 * 16 = 32\n    return 32\n",
        "whole",
    ),
    (
        "fence-broken-no-entry",
        "```python\nx = (1 +\ny = 2\n```",
        None,
        "does not parse",
    ),
    (
        "nested-in-class",
        "```python\nclass Solver:\n    def solution(self):\n        return 2\n```",
        None,
        "no code block defines solution()",
    ),
    (
        "unindented-body",
        "apples = 3\nreturn apples - 1\n",
        None,
        "no code",
    ),
]


@pytest.mark.parametrize(("name", "reply", "program", "what"), CASES, ids=[c[0] for c in CASES])
def test_corpus(name: str, reply: str, program: str | None, what: str) -> None:
    got = extract(reply)
    if program is None:
        assert not got.ok and got.program == "" and got.kind == ""
        assert what in got.error, got.error
    else:
        assert got.error == ""
        assert got.program == program
        assert got.kind == what


def test_corpus_is_large_and_covers_every_kind() -> None:
    assert len(CASES) >= 40
    kinds = [c[3] for c in CASES if c[2] is not None]
    assert {k: kinds.count(k) >= 5 for k in ("fenced", "whole", "continuation")} == {
        "fenced": True, "whole": True, "continuation": True,
    }  # fmt: skip
    assert sum(c[2] is None for c in CASES) >= 8


def test_extracted_programs_parse_unless_the_model_wrote_broken_code() -> None:
    import ast

    for name, reply, program, _ in CASES:
        if program is not None and "broken" not in name:
            ast.parse(extract(reply).program)


def test_other_entry_point_and_header() -> None:
    reply = (
        "```python\ndef simple_math_problem() -> float:\n    \"\"\"\n    Tom has 3 apples.\n"
        "    \"\"\"\n    apples = 3\n    result = apples - 1\n    return result\n```\n"
        "print(simple_math_problem())"
    )
    got = extract(reply, "simple_math_problem")
    assert got.kind == "fenced"
    assert got.program.startswith("def simple_math_problem() -> float:\n")
    assert extract(reply).error.startswith("no code block defines solution()")
    header = "def simple_math_problem() -> float:"
    cont = extract("    result = 3 - 1\n    return result\n", "simple_math_problem", header)
    assert cont.program == header + "\n    result = 3 - 1\n    return result\n"
    run = runnable(got.program, "simple_math_problem")
    ns: dict = {}
    exec(compile(run, "<test>", "exec"), ns)  # our own program, written above
    assert ns["solution"]() == 2


def test_extraction_never_runs_the_reply(tmp_path) -> None:
    marker = tmp_path / "ran"
    reply = (
        f"```python\nopen({str(marker)!r}, 'w').write('x')\n\ndef solution():\n"
        f"    return 1\n\nprint(open({str(marker)!r}, 'w'))\n```"
    )
    got = extract(reply)
    assert not marker.exists()
    assert got.program == "def solution():\n    return 1\n"


def test_extract_program_keeps_the_old_fallback() -> None:
    assert extract_program("no code here") == "def solution():\n    pass\n"
    assert extract_program("```python\n" + PROG_A + "```") == PROG_A
