"""A program may return a list or tuple of plain values (wire kind ``l``).

Real sandbox runs: the right lists come back as JSON lists with type "list" or "tuple";
every hostile one (subclasses, objects with methods, cycles, a million items, 10**5
levels, huge strings and ints, another thread changing the list) comes back with value
None and its exact note, and the same worker then runs the next program. Hand-made
frames check that the ekt process re-validates a list it is sent (parse_result), and
the rest of ekt (grading, voting, answer text, records) treats a list as no number.
"""

from __future__ import annotations

import os
import sys
import warnings
from fractions import Fraction

import pytest

from ekt.data.grading import as_number, grade_value, majority_vote
from ekt.data.symbolic import value_text
from ekt.records import Execution, JsonlWriter, read_records
from ekt.sandbox.pool import Sandbox, SandboxConfig, detect_protections
from ekt.sandbox.wire import (
    MAX_LIST_CHARS,
    parse_raw_result,
    parse_result,
    plain_value,
    result_bytes,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

SUPPORT = detect_protections() if sys.platform.startswith("linux") else {}
ISOLATION = "strict" if all(SUPPORT.get(k) for k in ("seccomp", "landlock", "scratch_tmpfs")) \
    else "standard"
NEXT = "def solution():\n    return 7\n"


def _workers() -> set[int]:
    """Pids of the sandbox workers below this process."""
    out = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            if ppid != os.getpid():
                continue
            with open(f"/proc/{d}/cmdline", "rb") as fh:
                if b"ekt.sandbox.child" in fh.read():
                    out.add(int(d))
        except (OSError, IndexError, ValueError):
            continue
    return out


def _sandbox(isolation: str = ISOLATION) -> Sandbox:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Sandbox(SandboxConfig(workers=1, timeout=5.0, isolation=isolation))


@pytest.fixture(scope="module")
def box():
    sb = _sandbox()
    yield sb
    sb.close()


def run_then_next(box: Sandbox, body: str) -> Execution:
    """Run ``body`` (a module defining solution) and then NEXT on the one worker: the
    first's Execution, after checking that the same worker ran NEXT."""
    list(box.run([NEXT]))
    before = _workers()
    ex, nxt = box.run([body, NEXT])
    assert (nxt.status, nxt.value, nxt.type) == ("ok", 7, "int"), nxt
    assert _workers() == before, "the worker was replaced"
    return ex


def ret(expr: str, prelude: str = "") -> str:
    return f"{prelude}def solution():\n    return {expr}\n"


# -- the right values ---------------------------------------------------------------------

RIGHT = [
    ("ints", ret("[1, 2, 3]"), [1, 2, 3], "list"),
    ("tuple", ret("('a', 2)"), ["a", 2], "tuple"),
    ("empty", ret("[]"), [], "list"),
    ("empty_tuple", ret("()"), [], "tuple"),
    ("strings", ret("['alpha', 'βeta', 'x' * 3]"), ["alpha", "βeta", "xxx"], "list"),
    ("nested", ret("[[1, [2, (3, 4)]], 'x', ()]"), [[1, [2, [3, 4]]], "x", []], "list"),
    ("four_levels", ret("[[[[1]]]]"), [[[[1]]]], "list"),
    ("scalars", ret("[True, None, -0.0, 1.5, 1e300, False]"),
     [True, None, -0.0, 1.5, 1e300, False], "list"),
    ("largest_int", ret("[2 ** 3322 - 1, -(2 ** 3322) + 1]"),
     [2**3322 - 1, -(2**3322) + 1], "list"),
    ("fraction_as_text", ret("[Fraction(1, 3), Fraction(4), Fraction(-6, 4)]",
                             "from fractions import Fraction\n"), ["1/3", 4, "-3/2"], "list"),
    ("decimal_as_float", ret("(Decimal('2.5'),)", "from decimal import Decimal\n"), [2.5], "tuple"),
    ("shared_sublist", ret("[r, r, (r,)]", "r = [0, 1]\n"), [[0, 1], [0, 1], [[0, 1]]], "list"),
    ("string_cut", ret("['x' * 10**7, 'y']"), ["x" * 1000, "y"], "list"),
    ("lone_surrogate", ret("['\\ud800é']"), ["\ufffdé"], "list"),
    ("256_items", ret("list(range(256))"), list(range(256)), "list"),
    ("256_in_all", ret("[list(range(127)), tuple(range(127))]"),
     [list(range(127)), list(range(127))], "list"),
]


@pytest.mark.parametrize("name,program,value,type_", RIGHT, ids=[c[0] for c in RIGHT])
def test_right_values(box, name, program, value, type_):
    ex = run_then_next(box, program)
    assert (ex.status, ex.type, ex.error) == ("ok", type_, ""), ex
    assert ex.value == value, ex
    assert repr(ex.value) == repr(value)  # -0.0 stays -0.0, ints stay ints
    assert not grade_value(ex.value, ex.type, 7)


def test_numpy_scalars_in_a_list(box):
    pytest.importorskip("numpy")
    ex = run_then_next(box, ret("[np.int64(3), np.float32(0.5), np.bool_(True), np.uint8(2)]",
                                "import numpy as np\n"))
    assert (ex.status, ex.value, ex.type, ex.error) == ("ok", [3, 0.5, True, 2], "list", ""), ex
    ex = run_then_next(box, ret("[np.float64('nan')]", "import numpy as np\n"))
    assert (ex.status, ex.value, ex.type, ex.error) == (
        "ok", None, "list", "non-finite float in list"), ex


# -- the refused ones ---------------------------------------------------------------------

BOOM = "import os\ndef boom(*a, **k):\n    os._exit(3)  # a method was called: the child dies\n"
EVIL_METHODS = (
    "__eq__ __ne__ __hash__ __repr__ __str__ __format__ __index__ __int__ __float__ "
    "__bool__ __len__ __iter__ __getitem__ __reduce__ __reduce_ex__ __sizeof__ __copy__ "
    "__deepcopy__ __getattribute__ __class_getitem__ __mro_entries__"
).split()


def _evil(name: str, base: str) -> str:
    """A class whose every method the reduction might reach kills the child."""
    return f"class {name}({base}):\n" + "".join(f"    {m} = boom\n" for m in EVIL_METHODS)


META = ("class Meta(type):\n    @property\n    def __name__(cls):\n        os._exit(3)\n"
        "    __repr__ = __eq__ = boom\n")
EVIL = BOOM + META + (
    "class Evil(metaclass=Meta):\n"
    + "".join(f"    {m} = boom\n" for m in EVIL_METHODS)
    + "    @property\n    def __class__(self):\n        return list\n"
)
CHAIN = "a = [1]\nb = (a,)\nc = [b]\na.append(c)\n"  # a -> c -> b -> a
DEEP = "x = []\nfor _ in range(10**5):\n    x = [x]\n"
HUGE_INT = (10**100000).bit_length()
SWAP = (
    "import sys, types\nclass Fake:\n    pass\n"
    "fake = types.ModuleType('fractions')\nfake.Fraction = Fake\n"
    "sys.modules['fractions'] = fake\n"
)

REFUSED = [
    ("list_subclass", BOOM + _evil("L", "list"), "L([1, 2])", "L",
     "unsupported return type"),
    ("tuple_subclass", BOOM + _evil("T", "tuple"), "T((1, 2))", "T", "unsupported return type"),
    ("namedtuple", "import collections\nP = collections.namedtuple('P', 'x y')\n", "P(1, 2)", "P",
     "unsupported return type"),
    ("object_with_methods", EVIL, "[1, Evil()]", "list", "unsupported list item (Evil)"),
    ("object_in_tuple", EVIL, "(1, [2, Evil()])", "tuple", "unsupported tuple item (Evil)"),
    ("nested_list_subclass", BOOM + _evil("L", "list"), "[[1], L([2])]", "list",
     "unsupported list item (L)"),
    ("str_subclass", "class S(str):\n    pass\n", "['a', S('b')]", "list",
     "unsupported list item (S)"),
    ("int_subclass", "import enum\nclass E(enum.IntEnum):\n    A = 1\n", "[E.A]", "list",
     "unsupported list item (E)"),
    ("swapped_fractions", SWAP, "[Fake()]", "list", "unsupported list item (Fake)"),
    ("contains_itself", "a = [1]\na.append(a)\n", "a", "list", "list contains itself"),
    ("cycle_through_a_tuple", CHAIN, "a", "list", "list contains itself"),
    ("tuple_cycle", CHAIN, "b", "tuple", "tuple contains itself"),
    ("million_items", "", "[0] * 10**6", "list", "list too long (1000000 items)"),
    ("million_tuple", "", "tuple(range(10**6))", "tuple", "tuple too long (1000000 items)"),
    ("257_items", "", "list(range(257))", "list", "list too long (257 items)"),
    ("too_many_in_all", "", "[[0] * 200, [0] * 200]", "list", "list too long (402 items)"),
    ("nested_million", "", "[1, [0] * 10**6]", "list", "list too long (1000002 items)"),
    ("deep_1e5", DEEP, "x", "list", "list nested too deep (more than 4 levels)"),
    ("five_levels", "", "[[[[[1]]]]]", "list", "list nested too deep (more than 4 levels)"),
    ("five_levels_tuple", "", "((((1,),),),[[[[]]]])", "tuple",
     "tuple nested too deep (more than 4 levels)"),
    ("huge_strings", "", "['x' * 10**7] * 9", "list", "list too large (9028 characters as JSON)"),
    ("huge_int_inside", "", "[1, 10**100000]", "list",
     f"int too large ({HUGE_INT} bits) in list"),
    ("int_past_the_bound", "", "(2 ** 3322,)", "tuple", "int too large (3323 bits) in tuple"),
    ("nan", "", "[1.0, float('nan')]", "list", "non-finite float in list"),
    ("inf_decimal", "from decimal import Decimal\n", "[Decimal('-Infinity')]", "list",
     "non-finite float in list"),
    ("huge_fraction", "from fractions import Fraction\n", "[Fraction(2**3000, 3**1000)]",
     "list", "Fraction too large in list"),
    ("large_ints_text", "", "[2 ** 3322 - 1] * 9", "list",
     f"list too large ({9 * len(str(2**3322 - 1)) + 10} characters as JSON)"),
]


@pytest.mark.parametrize("name,prelude,expr,type_,note", REFUSED, ids=[c[0] for c in REFUSED])
def test_refused(box, name, prelude, expr, type_, note):
    ex = run_then_next(box, ret(expr, prelude))
    assert (ex.status, ex.value, ex.type, ex.error) == ("ok", None, type_, note), ex


MUTATOR = """\
import sys, threading
sys.setswitchinterval(1e-6)
x = list(range(100))
def churn():
    while True:  # x is list(range(m)) at every moment, 1 <= m <= 201
        x.append(len(x))
        if len(x) > 200:
            del x[1:]
def solution():
    threading.Thread(target=churn, daemon=True).start()
    for _ in range(20000):  # let it run a while
        pass
    return RETURN
"""


@pytest.mark.parametrize("expr,type_", [("x", "list"), ("(x, 'end')", "tuple")])
def test_list_changed_by_another_thread(box, expr, type_):
    """Another thread of the program grows and cuts the list while it is reduced: the
    result is one consistent copy of it, and the child never fails."""
    sb = box
    if box.protections().get("threads_refused"):  # only the reduction is under test here
        sb = _sandbox("none")
    try:
        for _ in range(3):
            ex = run_then_next(sb, MUTATOR.replace("RETURN", expr))
            assert (ex.status, ex.type, ex.error) == ("ok", type_, ""), ex
            items = ex.value if type_ == "list" else ex.value[0]
            if type_ == "tuple":
                assert ex.value[1] == "end"
            assert 1 <= len(items) <= 201 and items == list(range(len(items))), ex
    finally:
        if sb is not box:
            sb.close()


FORGE = """\
import os
def solution():
    data = DATA
    for fd in range(3, 64):  # the result pipe: the one fd left open
        try:
            os.write(fd, data)
        except OSError:
            continue
        os._exit(0)
"""


def _frame(kind: str, text: str, tname: str = "list", status: str = "ok") -> bytes:
    return (f"{len(status)} {len(text)} {len(tname)} 0 0\n{status}{kind}{text}{tname}"
            ).encode("utf-8", "surrogatepass")


@pytest.mark.parametrize(
    "text,tname",
    [("[" * 5 + "]" * 5, "list"), ("[1, 3]", "Fraction"), ("[NaN]", "list"), ("{}", "list")],
)
def test_forged_frame_from_the_child_is_malformed(box, text, tname):
    """A program writing its own list frame to the result pipe: the ekt process refuses
    what a real child would never send, and the worker goes on."""
    ex = run_then_next(box, FORGE.replace("DATA", repr(_frame("l", text, tname))))
    assert (ex.status, ex.value, ex.error) == ("killed", None, "malformed result message"), ex


def test_forged_valid_frame_is_taken(box):
    ex = run_then_next(box, FORGE.replace("DATA", repr(_frame("l", '[1, "a"]', "tuple"))))
    assert (ex.status, ex.value, ex.type) == ("ok", [1, "a"], "tuple"), ex


# -- the ekt process's validation, frame by frame -----------------------------------------

DEEP_TEXT = "[" * 4000 + "]" * 4000  # within the length bound, 4000 levels


@pytest.mark.parametrize(
    "kind,text,tname",
    [
        ("L", "[1]", "list"),  # no such kind
        ("x", "[1]", "list"),
        ("q", "[1]", "list"),  # a list's text under another kind
        ("s" + "l", "[1]", "list"),
        ("l", "[1, 3]", "Fraction"),  # a list dressed as another type
        ("l", "[1]", "int"),
        ("l", "[1]", ""),
        ("l", DEEP_TEXT, "list"),  # deep nesting
        ("l", "[" * 10**5 + "]" * 10**5, "list"),
        ("l", "[[[[[1]]]]]", "list"),
        ("l", "[[[[],[[]]]]]", "list"),  # depth 5 without five brackets in a row
        ("l", "[" + "1," * 4000 + "1]", "list"),  # over MAX_LIST_CHARS
        ("l", '["' + "a" * (MAX_LIST_CHARS - 3) + '"]', "list"),
        ("l", "1", "list"),  # not a list
        ("l", '"[1]"', "list"),
        ("l", "null", "list"),
        ("l", '{"a": 1}', "list"),
        ("l", '[{"a": 1}]', "list"),
        ("l", "[NaN]", "list"),  # not finite
        ("l", "[Infinity]", "list"),
        ("l", "[-Infinity]", "list"),
        ("l", "[1e999]", "list"),
        ("l", "[" + ",".join(["0"] * 257) + "]", "list"),  # too many items
        ("l", "[[" + ",".join(["0"] * 200) + "],[" + ",".join(["0"] * 200) + "]]", "list"),
        ("l", f"[{2**3322}]", "list"),  # an int past MAX_INT_BITS
        ("l", "[" + "9" * 5000 + "]", "list"),
        ("l", "[1,]", "list"),  # not JSON
        ("l", "[1", "list"),
        ("l", "[1]]", "list"),
        ("l", '["a]', "list"),
        ("l", '["a\\x"]', "list"),
        ("l", "", "list"),
        ("l", "[tru]", "list"),
        ("l", '"' + '\\"' * 3999, "list"),
        ("l", '"a' * 4000, "list"),
    ],
)
def test_parse_result_refuses_malformed_lists(kind, text, tname):
    assert parse_result(_frame(kind, text, tname), 100) is None
    frame = b"\x01" + bytes(8) + _frame(kind, text, tname)
    out = parse_raw_result(frame, 100)
    assert (out["status"], out["value"], out["error"]) == (
        "killed", None, "malformed result message")


@pytest.mark.parametrize(
    "text,value",
    [
        ("[1,[2,\"a\"]]", [1, [2, "a"]]),
        ("[]", []),
        (" [ 1 , -0.0 , true , false , null ] ", [1, -0.0, True, False, None]),
        ('["[[[[[[[[", "]]]]"]', ["[[[[[[[[", "]]]]"]),  # brackets in strings are text
        ("[[[[1]]]]", [[[[1]]]]),
        ('["\\ud83d\\ude00", "\\ud800", "\ud800"]', ["\U0001f600", "\ufffd", "\ufffd"]),
        ('["' + "b" * 1500 + '"]', ["b" * 1000]),  # cut to MAX_STR_CHARS
        ('["' + "a" * (MAX_LIST_CHARS - 4) + '"]', ["a" * 1000]),  # exactly MAX_LIST_CHARS
        ("[" + ",".join(["0"] * 256) + "]", [0] * 256),
        (f"[{2**3322 - 1}]", [2**3322 - 1]),
    ],
)
def test_parse_result_takes_valid_lists(text, value):
    out = parse_result(_frame("l", text, "tuple"), 100)
    assert out is not None and out["value"] == value and out["type"] == "tuple"
    assert repr(out["value"]) == repr(value)


def test_child_encoding_round_trips():
    """What plain_value and result_bytes make, parse_result gives back unchanged."""
    for x in ([1, "é", None, [2.5, (True,)]], (), [Fraction(1, 3), Fraction(-8, 2)],
              ["\n\"\\"]):
        value, tname, note = plain_value(x)
        assert note == ""
        out = parse_result(result_bytes("ok", value, tname, "", ""), 100)
        assert out is not None and out["value"] == value and out["type"] == tname


# -- the rest of ekt: a list is no number -------------------------------------------------


def test_lists_are_never_numbers(tmp_path):
    for value, tname in (([6], "list"), ([6], "tuple"), ([3, 1], "list"), ([], "tuple"),
                         ([[6]], "list"), (["6"], "list")):
        assert as_number(value, tname) is None
        assert not grade_value(value, tname, 6)
        assert not grade_value(value, tname, 3)
        assert value_text(value, tname) is None
    assert majority_vote([([6], "list"), ([6], "list"), (5, "int")], 6) == (5, "int")
    assert majority_vote([([6], "list"), ([3, 1], "tuple")]) is None
    recs = [Execution("ok", [1, [2, "é"], None, -0.0], "list", "", 1.0, ""),
            Execution("ok", ["x"], "tuple")]
    path = tmp_path / "executions.jsonl"
    with JsonlWriter(path) as w:
        for r in recs:
            w.write(r)
    assert read_records(path, Execution) == recs
