"""The wire format between the ekt process, a sandbox worker and its child: length-
prefixed frames, the child's result text, and the reduction of a returned object to a
plain value. Everything the child sends is re-validated here (:func:`parse_raw_result`).
See docs/sandbox.md.
"""

from __future__ import annotations

import _json
import decimal
import fractions
import math
import os
import re
import struct
import sys
from itertools import accumulate

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs every worker 0.6 MB, which every fork copies
    from typing import Any

MAX_INT_BITS = 3322  # about 1000 decimal digits; larger ints are reported without a value
INT_BOUND = 1 << MAX_INT_BITS  # |x| < this: x.bit_length() <= MAX_INT_BITS
MAX_INT_DIGITS = len(str(-(1 << MAX_INT_BITS)))  # the longest text of an int within bounds
MAX_STR_CHARS = 1000  # returned strings are cut to this many characters
MAX_ERROR_CHARS = 300
MAX_TYPE_CHARS = 80
MAX_LIST_ITEMS = 256  # items of a returned list or tuple in all, nested lists' included
MAX_LIST_DEPTH = 4  # levels of lists: [[[[1]]]] is the deepest returned
MAX_LIST_CHARS = 8000  # characters of a returned list's JSON text

# -- what a program returns ---------------------------------------------------------------

_NUMPY_TYPES: dict[type, str] = {}
_NUMPY_BOOL: type | None = None
_TYPE_NAME = type.__dict__["__name__"]  # the real name, bypassing metaclass tricks
_TYPE_FLAGS = type.__dict__["__flags__"]
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: every class a program defines has it
# The genuine classes, taken before any program runs: a program may put other modules
# under these names in sys.modules.
_FRACTION = fractions.Fraction
_DECIMAL = decimal.Decimal
_DECIMAL_ERRORS = (ValueError, OverflowError, decimal.DecimalException)


def type_name(t: type) -> str:
    try:
        name = _TYPE_NAME.__get__(t, type)
    except Exception:  # noqa: BLE001
        return "object"
    return name[:MAX_TYPE_CHARS] if type(name) is str else "object"


def _float_value(f: float) -> float | str:
    if f != f:
        return "nan"
    if f in (math.inf, -math.inf):
        return "inf" if f > 0 else "-inf"
    return f


def plain_value(x: Any) -> tuple[Any, str, str]:
    """(JSON value, type name, note) for a returned object, decided by exact type only.

    Never calls a method the program could have defined: subclasses and unknown
    types are reported by class name with value None. Fraction and Decimal are the
    classes imported before any program ran; a numpy scalar is converted only when its
    class is a static C type (no class a program defines is), so a module a program
    swaps into ``sys.modules`` cannot get one of its methods called. An exact list or
    tuple of such values becomes a JSON list (:func:`_plain_list`).
    """
    t = type(x)
    if t is bool:
        return x, "bool", ""
    if t is int:
        if x.bit_length() > MAX_INT_BITS:
            return None, "int", f"int too large ({x.bit_length()} bits)"
        return x, "int", ""
    if t is float:
        return _float_value(x), "float", ""
    if t is _FRACTION:
        num, den = x.numerator, x.denominator
        if type(num) is not int or type(den) is not int:
            return None, "Fraction", "malformed Fraction"
        if max(num.bit_length(), den.bit_length()) > MAX_INT_BITS:
            return None, "Fraction", "Fraction too large"
        return [num, den], "Fraction", ""
    if t is _DECIMAL:
        try:
            return _float_value(float(x)), "Decimal", ""
        except _DECIMAL_ERRORS:
            return None, "Decimal", "Decimal not convertible to float"
    if t is str:
        return x[:MAX_STR_CHARS], "str", ""
    if x is None:
        return None, "NoneType", ""
    if t is list or t is tuple:
        return _plain_list(x, t)
    if not _NUMPY_TYPES and "numpy" in sys.modules:  # imported by the program itself
        init_numpy_types()
    try:
        static = not _TYPE_FLAGS.__get__(t, type) & _HEAPTYPE
    except Exception:  # noqa: BLE001
        static = False
    if static and t is _NUMPY_BOOL:
        return bool(x), "numpy.bool", ""
    name = _NUMPY_TYPES.get(t) if static else None
    if name is not None:
        if name[6] in "iu":  # numpy.int*, numpy.uint*
            v = int(x)
            if v.bit_length() > MAX_INT_BITS:
                return None, name, "int too large"
            return v, name, ""
        return _float_value(float(x)), name, ""
    return None, type_name(t), "unsupported return type"


def _plain_list(x: list | tuple, t: type) -> tuple[list | None, str, str]:
    """An exact list or tuple as a JSON list, or None and why not.

    Its items are plain values as :func:`plain_value` makes them, with two changes, as a
    JSON list keeps no item's type: a Fraction is its int when whole, else the text
    ``"num/den"`` (a pair would read as a nested list; ``symbolic.plain_number`` reads
    the text back exactly), and a float (Decimal, numpy float) must be finite. Nested
    exact lists and tuples become JSON lists, at most ``MAX_LIST_DEPTH`` levels in all.
    Walked without recursion; each list is copied by one C-level slice before it is
    read, so another thread of the program changing it meanwhile changes nothing here;
    ``len`` is read before the copy, so a huge list is refused without copying it.
    Bounded: ``MAX_LIST_ITEMS`` items in all, ``MAX_LIST_CHARS`` characters of JSON."""
    tname = "list" if t is list else "tuple"
    n = len(x)  # C-level for an exact list or tuple
    if n > MAX_LIST_ITEMS:
        return None, tname, f"{tname} too long ({n} items)"
    items = x[:]  # a list: a private copy; a tuple: itself (it cannot change)
    total = len(items)
    if total > MAX_LIST_ITEMS:
        return None, tname, f"{tname} too long ({total} items)"
    root: list = []
    stack = [(iter(items), root)]
    path = [id(x)]  # the lists being walked, outermost first: a list met again is a cycle
    while stack:
        it, out = stack[-1]
        for v in it:
            vt = type(v)
            if vt is list or vt is tuple:
                if id(v) in path:
                    return None, tname, f"{tname} contains itself"
                if len(stack) >= MAX_LIST_DEPTH:
                    return None, tname, (f"{tname} nested too deep "
                                         f"(more than {MAX_LIST_DEPTH} levels)")
                if total + len(v) > MAX_LIST_ITEMS:
                    return None, tname, f"{tname} too long ({total + len(v)} items)"
                sub = v[:]
                total += len(sub)
                if total > MAX_LIST_ITEMS:  # grown by another thread since len(v)
                    return None, tname, f"{tname} too long ({total} items)"
                inner: list = []
                out.append(inner)
                stack.append((iter(sub), inner))
                path.append(id(v))
                break
            if vt is int:
                if v.bit_length() > MAX_INT_BITS:
                    return None, tname, f"int too large ({v.bit_length()} bits) in {tname}"
            elif vt is str:
                v = v[:MAX_STR_CHARS]
            elif vt is float:
                if v - v != 0.0:
                    return None, tname, f"non-finite float in {tname}"
            elif not (vt is bool or v is None):
                v, name, note = plain_value(v)  # Fraction, Decimal, numpy scalars
                if note == "unsupported return type":
                    return None, tname, f"unsupported {tname} item ({name})"
                if note:
                    return None, tname, f"{note} in {tname}"
                if name == "Fraction":
                    v = v[0] if v[1] == 1 else f"{v[0]}/{v[1]}"
                    if type(v) is str and len(v) > MAX_STR_CHARS:
                        return None, tname, f"Fraction too large in {tname}"
                elif type(v) is str:  # "nan", "inf", "-inf"
                    return None, tname, f"non-finite float in {tname}"
            out.append(v)
        else:
            stack.pop()
            path.pop()
    size = len(list_text(root))
    if size > MAX_LIST_CHARS:
        return None, tname, f"{tname} too large ({size} characters as JSON)"
    return root, tname, ""


_qu = _json.encode_basestring  # JSON string literal, non-ASCII characters as they are


def list_text(value: list) -> str:
    """The JSON text of a plain list (ints, finite floats, str, bool, None, such lists),
    written without recursion."""
    out = ["["]
    stack = [iter(value)]
    first = True
    while stack:
        for v in stack[-1]:
            if not first:
                out.append(",")
            first = False
            t = type(v)
            if t is list:
                out.append("[")
                stack.append(iter(v))
                first = True
                break
            if t is str:
                out.append(_qu(v))
            elif t is bool:
                out.append("true" if v else "false")
            elif v is None:
                out.append("null")
            else:  # int, float
                out.append(str(v) if t is int else repr(v))
        else:
            out.append("]")
            stack.pop()
            first = False
    return "".join(out)


def init_numpy_types() -> None:
    global _NUMPY_BOOL
    np = sys.modules.get("numpy")
    if np is None:
        return
    for n in (
        "int8 int16 int32 int64 uint8 uint16 uint32 uint64 intc uintc longlong ulonglong "
        "float16 float32 float64 longdouble"
    ).split():
        t = getattr(np, n, None)
        if isinstance(t, type):
            _NUMPY_TYPES[t] = "numpy." + t.__name__
    _NUMPY_BOOL = getattr(np, "bool_", None)



_q = _json.encode_basestring_ascii  # JSON string literal (ASCII, surrogates escaped)
_MAX_HEAD = 64  # the child's header line: five decimal lengths and a newline
LEN = struct.Struct("<I")  # the length prefix of a message between ekt and a worker


def result_bytes(status: str, value: Any, tname: str, error: str, tail: str) -> bytes:
    """The child's result, one UTF-8 text (surrogates passed): a header line with the
    lengths in characters of status, value text, type, error and output tail, then
    status, the value's kind (one character), value text, type, error, tail.
    ``value`` comes from :func:`plain_value`. Built with one f-string and one encode:
    every object the child touches costs it a page copy."""
    t = type(value)
    if t is int:
        kind, text = "i", str(value)
    elif t is float:
        kind, text = "f", repr(value)
    elif value is None:
        kind, text = "n", ""
    elif t is bool:
        kind, text = "b", "1" if value else "0"
    elif t is str:
        kind, text = "s", value
    elif tname == "Fraction":  # [numerator, denominator]
        kind, text = "q", f"{value[0]}/{value[1]}"
    else:  # a list or tuple: its JSON text, at most MAX_LIST_CHARS (plain_value checked)
        kind, text = "l", list_text(value)
    return (
        f"{len(status)} {len(text)} {len(tname)} {len(error)} {len(tail)}\n"
        f"{status}{kind}{text}{tname}{error}{tail}"
    ).encode("utf-8", "surrogatepass")




def parse_result(raw: bytes, max_output: int) -> dict | None:
    """The child's message, re-validated into plain bounded fields; None if malformed.

    The child is untrusted: only lengths, UTF-8, ``int``/``float`` parsing of bounded
    text and, for a list, ``json`` on text whose size and nesting were checked first
    (:func:`parse_list`) are applied to what it sent."""
    end = raw.find(b"\n", 0, _MAX_HEAD)
    if end < 0:
        return None
    sizes = raw[:end].split(b" ")
    if len(sizes) != 5 or not all(x.isdigit() and len(x) <= 9 for x in sizes):
        return None
    try:
        body = raw[end + 1 :].decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None
    ns, nt, ny, ne, nl = (int(x) for x in sizes)
    if len(body) != ns + 1 + nt + ny + ne + nl:
        return None
    status, kind = body[:ns], body[ns : ns + 1]
    i = ns + 1
    text = body[i : i + nt]
    i += nt
    tname = body[i : i + ny]
    i += ny
    error = body[i : i + ne]
    tail = body[i + ne :]
    if status not in ("ok", "error"):
        return None
    value: Any = None
    try:
        if kind == "b" and text in ("0", "1"):
            value = text == "1"
        elif kind == "i" and len(text) <= MAX_INT_DIGITS:
            value = int(text)
            if value.bit_length() > MAX_INT_BITS:
                return None
        elif kind == "f" and len(text) <= 40:
            value = float(text)
            if not math.isfinite(value):
                return None
        elif kind == "s":
            value = text[:MAX_STR_CHARS]
        elif kind == "q" and text.count("/") == 1 and len(text) <= 2 * MAX_INT_DIGITS + 1:
            value = [int(x) for x in text.split("/")]
            if max(v.bit_length() for v in value) > MAX_INT_BITS:
                return None
        elif kind == "l":
            value = parse_list(text, tname)
            if value is None:
                return None
        elif kind != "n":
            return None
    except ValueError:
        return None
    return {
        "status": status,
        "value": value,
        "type": tname[:MAX_TYPE_CHARS],
        "error": error[:MAX_ERROR_CHARS],
        "stdout_tail": tail[-max_output:] if max_output > 0 else "",
    }


_JSON_STRING = r'"(?:[^"\\]|\\.)*+"'  # a JSON string literal, as JSON reads one
# A JSON text of lists, numbers, true, false, null and strings. Possessive: a text that
# does not fit fails in one pass, never by backtracking.
_LIST_TOKENS = r'(?:' + _JSON_STRING + r'|[\[\],0-9eE.+\-truefalsn \t\n\r]++)*+'
_DEPTH_STEP = {"[": 1, "]": -1}


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a plain value")


def parse_list(text: str, tname: str) -> list | None:
    """A list's JSON text from the child (kind ``l``), re-validated; None if malformed.

    Its length is checked before anything reads it, and its shape before ``json``
    decodes it: it must be string literals and brackets, commas, numbers, whitespace,
    true/false/null (one possessive regex: no backtracking), and outside the string
    literals its brackets may nest at most ``MAX_LIST_DEPTH`` deep (counted by
    ``accumulate``, no recursion), so ``json`` never meets deep nesting. The decoded list is
    then walked without recursion: every item an int within ``MAX_INT_BITS``, a finite
    float, a str (cut to ``MAX_STR_CHARS`` and made valid Unicode), a bool, None or a
    list, ``MAX_LIST_ITEMS`` in all."""
    if tname not in ("list", "tuple") or len(text) > MAX_LIST_CHARS:
        return None
    if not re.fullmatch(_LIST_TOKENS, text):
        return None
    brackets = re.sub(r"[^\[\]]", "", re.sub(_JSON_STRING, "", text))
    if max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0) > MAX_LIST_DEPTH:
        return None
    import json  # the ekt process has it; the worker needs it only without seccomp

    try:
        value = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return None
    if type(value) is not list:
        return None
    total = 0
    stack = [(value, 1)]
    while stack:
        items, depth = stack.pop()
        total += len(items)
        if total > MAX_LIST_ITEMS:
            return None
        for i, v in enumerate(items):
            t = type(v)
            if t is str:
                items[i] = valid_text(v[:MAX_STR_CHARS])
            elif t is int:
                if v.bit_length() > MAX_INT_BITS:
                    return None
            elif t is float:
                if not math.isfinite(v):
                    return None
            elif t is list:
                if depth >= MAX_LIST_DEPTH:
                    return None
                stack.append((v, depth + 1))
            elif not (t is bool or v is None):
                return None
    return value


RAW_RESULT = b"\x01"  # worker -> ekt frame: this byte, the time in ms, the child's message
MS_FIELD = struct.Struct("<d")


def parse_raw_result(frame: bytes, max_output: int) -> dict:
    """A ``RAW_RESULT`` frame -> a result dict; the child's bytes validated like any result."""
    (ms,) = MS_FIELD.unpack_from(frame, 1)
    out = parse_result(frame[1 + MS_FIELD.size :], max_output)
    if out is None:
        out = {"status": "killed", "value": None, "type": "", "stdout_tail": "",
               "error": "malformed result message"}
    out["ms"] = round(ms, 3)
    return out


def dumps(x: Any) -> str:
    """JSON for the worker's own messages to the ekt process (plain trusted values)."""
    t = type(x)
    if x is None:
        return "null"
    if t is bool:
        return "true" if x else "false"
    if t is int:
        return str(x)
    if t is float:
        return repr(x) if math.isfinite(x) else "null"
    if t is str:
        return _q(x)
    if t is dict:
        return "{" + ",".join(f"{_q(str(k))}:{dumps(v)}" for k, v in x.items()) + "}"
    if t is list or t is tuple:
        return "[" + ",".join(dumps(v) for v in x) + "]"
    raise TypeError(f"cannot encode {t.__name__}")



def read_exact(fd: int, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def read_frame(fd: int) -> bytes | None:
    """One length-prefixed message from the ekt process; None on EOF."""
    head = read_exact(fd, 4)
    if head is None:
        return None
    (size,) = LEN.unpack(head)
    return read_exact(fd, size)


def write_msg(fd: int, obj: dict) -> None:
    write_frames(fd, [dumps(obj).encode()])


def write_frames(fd: int, frames: list[bytes]) -> None:
    """Length-prefixed messages, all in one write (none for an empty list)."""
    view = memoryview(b"".join([LEN.pack(len(f)) + f for f in frames]))
    while view:
        view = view[os.write(fd, view) :]



def valid_text(s: str) -> str:
    """``s`` as valid Unicode: surrogate pairs (a JavaScript-style escape of one emoji)
    joined into their character, every lone surrogate replaced by U+FFFD. Whatever a
    program returns, prints or raises then encodes as UTF-8 in a record."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def read_into(fd: int, view: memoryview) -> bool:
    """Fill ``view`` from ``fd``; False at EOF. Reads exactly that much: what the ekt
    process queued behind it stays in the pipe, never in this process's memory."""
    got, n = 0, len(view)
    while got < n:
        k = os.readv(fd, [view[got:]])
        if not k:
            return False
        got += k
    return True


def write_all(fd: int, parts: list) -> None:
    total = sum(len(p) for p in parts)
    sent = os.writev(fd, parts)
    if sent < total:
        view = memoryview(b"".join(parts))[sent:]
        while view:
            view = view[os.write(fd, view) :]
