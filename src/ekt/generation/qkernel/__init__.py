"""Decode with a GGUF model's own quantised weights: the same product, a quarter of the bytes.

A preset (or any ``.gguf`` model) is sampled by transformers after dequantisation to
float32, so every decode step reads 4 bytes per weight (gemma3-270m: 1.07 GB a step,
671 MB of it the tied 262,144 x 640 output layer), where llama.cpp reads the blocks
as they ship. Every GGUF block format packed here (``FORMATS``) stores a weight as

    w = S * q + M        (q an integer of at most 8 bits, S and M per block of 16 or 32)

and the dequantised float32 weight is exactly that value (``S * q`` is exact in float32
and is rounded at most once by the ``+ M``). ``qmm.c`` multiplies with ``q`` (1 byte) and
the block's ``S`` and ``M`` in float32, so the logits are those of the float32 model
summed in another order: a difference of float rounding, not of weights.

``attach(model, gguf)`` decodes the file's blocks, matches each to the model's
``nn.Linear`` whose weight it reproduces **bit for bit** (rows permuted where the
GGUF converter permuted them, as for llama's q/k projections) and keeps the packed
copy; a tensor that does not reproduce, a format not listed, or a shape the kernel does
not take keeps the float32 product. ``QuantizedLinears.active()`` routes the matched
layers' small products (decode steps: at most ``MAX_ROWS`` rows) through the kernel for
the duration of a block; training and prefill never see it.

The kernel is compiled on first use with the system C compiler (``cc -O3 -march=native
-fopenmp``, about a second) into ``$EKT_CACHE_DIR/qkernel/``; without a compiler ekt says
so once and keeps the float32 product.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ekt.models import cache_dir

MAX_ROWS = 64
"""Products with at most this many input rows (a decode step's batch) use the kernel."""

_SOURCE = Path(__file__).with_name("qmm.c")
_lib: Any = None
_lib_error = ""
_lock = threading.Lock()


# ---- the C kernel ----------------------------------------------------------------------


def _cpu_key() -> str:
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return flags or platform.processor() or platform.machine()


def library() -> Any:
    """The compiled kernel (ctypes), or None when it cannot be built (``build_error()``)."""
    global _lib, _lib_error
    with _lock:
        if _lib is not None or _lib_error:
            return _lib
        try:
            _lib = _load()
        except Exception as e:  # no compiler, a failed build: the float32 product stays
            _lib_error = f"{type(e).__name__}: {e}"
        return _lib


def build_error() -> str:
    return _lib_error


def _load() -> Any:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler (cc) on PATH")
    source = _SOURCE.read_bytes()
    base = ["-O3", "-march=native", "-shared", "-fPIC", "-std=gnu11"]
    errors = []
    # threads through OpenMP (the runtime torch has loaded); a compiler without it builds a
    # one-thread kernel rather than none
    for flags in (base + ["-fopenmp"], base):
        key = hashlib.sha256(
            source + repr(flags).encode() + cc.encode() + _cpu_key().encode()
        ).hexdigest()[:16]
        out = cache_dir() / "qkernel" / key / "libekt_qmm.so"
        if not out.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
            try:
                done = subprocess.run(
                    [cc, *flags, "-o", str(tmp), str(_SOURCE)], capture_output=True, text=True
                )
            except OSError as e:
                raise RuntimeError(f"{cc}: {e}") from None
            if done.returncode != 0:
                tmp.unlink(missing_ok=True)
                errors.append(f"{cc} failed: {done.stderr.strip()[-300:]}")
                continue
            os.replace(tmp, out)
        lib = ctypes.CDLL(str(out))
        lib.ekt_qmm.restype = ctypes.c_int
        lib.ekt_qmm.argtypes = [
            ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long, ctypes.c_int,
        ]  # fmt: skip
        return lib
    raise RuntimeError("; ".join(errors))


# ---- GGUF blocks -> (q, S, M) ----------------------------------------------------------


def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)[:, 0]


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[nb, 16] bytes -> [nb, 32]: the low nibbles are elements 0..15, the high 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """[nb, 4] bytes (a little-endian uint32) -> [nb, 32] bits, element j = bit j."""
    return np.unpackbits(np.ascontiguousarray(qh), axis=1, bitorder="little")


def _per16(v: np.ndarray, per_block: int) -> np.ndarray:
    """A value per block [nb] repeated for each 16 elements of the block: [nb, per_block/16]."""
    return np.repeat(v[:, None], per_block // 16, axis=1)


def _bit_planes(qh: np.ndarray) -> np.ndarray:
    """Q3_K/Q5_K: 32 bytes -> 256 bits, bit i of byte j being element 32 i + j."""
    bits = np.unpackbits(np.ascontiguousarray(qh), axis=1, bitorder="little")  # index 8 j + i
    return bits.reshape(-1, 32, 8).transpose(0, 2, 1).reshape(-1, 256)


def _k_scales(sc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: 12 bytes -> 8 six-bit scales and 8 six-bit mins."""
    a, b, c = sc[:, 0:4], sc[:, 4:8], sc[:, 8:12]
    scale = np.concatenate([a & 63, (c & 15) | ((a >> 6) << 4)], axis=1)
    mins = np.concatenate([b & 63, (c >> 4) | ((b >> 6) << 4)], axis=1)
    return scale.astype(np.float32), mins.astype(np.float32)


def _k_scale_min(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: S and M per 16 elements from the super-block's d, dmin and 6-bit pairs
    (S = d * scale and dmin * min are exact in float32)."""
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = _k_scales(b[:, 4:16])
    return np.repeat(d[:, None] * sc, 2, axis=1), np.repeat(-(dmin[:, None] * mn), 2, axis=1)


def _q8_0(b: np.ndarray):
    d = _f16(b[:, 0:2])
    return b[:, 2:34].view(np.int8), _per16(d, 32), None


def _q4_0(b: np.ndarray):
    d = _f16(b[:, 0:2])
    return _nibbles(b[:, 2:18]).astype(np.int8) - 8, _per16(d, 32), None


def _q4_1(b: np.ndarray):
    d, m = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    return _nibbles(b[:, 4:20]).astype(np.int8), _per16(d, 32), _per16(m, 32)


def _q5_0(b: np.ndarray):
    d = _f16(b[:, 0:2])
    q = _nibbles(b[:, 6:22]) | (_high_bits(b[:, 2:6]) << 4)
    return q.astype(np.int8) - 16, _per16(d, 32), None


def _q5_1(b: np.ndarray):
    d, m = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    q = _nibbles(b[:, 8:24]) | (_high_bits(b[:, 4:8]) << 4)
    return q.astype(np.int8), _per16(d, 32), _per16(m, 32)


def _k_low(qs: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K: 128 bytes -> 256 low nibbles: each 32 bytes hold two sub-blocks of 32
    (the low nibbles the first, the high nibbles the second)."""
    qs = qs.reshape(qs.shape[0], 4, 32)
    return np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(qs.shape[0], 256)


def _q4_k(b: np.ndarray):
    return (_k_low(b[:, 16:144]).astype(np.int8), *_k_scale_min(b))


def _q5_k(b: np.ndarray):
    q = _k_low(b[:, 48:176]) | (_bit_planes(b[:, 16:48]) << 4)  # the high bit of each
    return (q.astype(np.int8), *_k_scale_min(b))


def _q6_k(b: np.ndarray):
    ql, qh = b[:, 0:128], b[:, 128:192]
    sc = b[:, 192:208].view(np.int8).astype(np.float32)
    d = _f16(b[:, 208:210])
    nb = b.shape[0]
    # Two halves of 128 elements; in each, 64 ql bytes (low nibbles: elements 0..63,
    # high nibbles: 64..127) and 32 qh bytes (2 bits each for elements i, i+32, i+64, i+96).
    ql = ql.reshape(nb, 2, 64)
    low = np.concatenate([ql & 0x0F, ql >> 4], axis=2)  # [nb, 2, 128]
    qh = qh.reshape(nb, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    high = (qh & 3).reshape(nb, 2, 128)
    q = (low | (high << 4)).astype(np.int8) - 32
    return q.reshape(nb, 256), d[:, None] * sc, None


def _crumbs(qs: np.ndarray) -> np.ndarray:
    """Q2_K/Q3_K: 64 bytes -> 256 two-bit values: in each half of 32 bytes, bits 2k..2k+1 of
    byte j are element 32 k + j of that half's 128."""
    nb = qs.shape[0]
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    return ((qs.reshape(nb, 2, 1, 32) >> shifts) & 3).reshape(nb, 256)


def _q2_k(b: np.ndarray):
    sc = b[:, 0:16]  # per 16 elements: the scale in the low nibble, the min in the high
    d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
    s = d[:, None] * (sc & 15).astype(np.float32)
    m = -(dmin[:, None] * (sc >> 4).astype(np.float32))
    return _crumbs(b[:, 16:80]).astype(np.int8), s, m


def _q3_k(b: np.ndarray):
    high = _bit_planes(b[:, 0:32])  # a set bit: the element has no -4 offset
    q = _crumbs(b[:, 32:96]).astype(np.int8) - 4 * (1 - high).astype(np.int8)
    raw = b[:, 96:108]  # 16 six-bit scales: low nibbles from bytes 0..7, high crumbs from 8..11
    low = np.concatenate([raw[:, 0:8] & 15, raw[:, 0:8] >> 4], axis=1)
    top = np.concatenate([(raw[:, 8:12] >> k) & 3 for k in (0, 2, 4, 6)], axis=1)
    sc = (low | (top << 4)).astype(np.int8) - 32
    return q, _f16(b[:, 108:110])[:, None] * sc.astype(np.float32), None


# IQ4_NL / IQ4_XS: a 4-bit index into this table of non-uniform levels (llama.cpp's values)
_IQ4_LEVELS = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113],
                       dtype=np.int8)  # fmt: skip


def _iq4_nl(b: np.ndarray):
    d = _f16(b[:, 0:2])
    return _IQ4_LEVELS[_nibbles(b[:, 2:18])], _per16(d, 32), None


def _iq4_xs(b: np.ndarray):
    nb = b.shape[0]
    d = _f16(b[:, 0:2])
    high = np.ascontiguousarray(b[:, 2:4]).view(np.uint16)[:, 0]  # 2 bits per sub-block of 32
    low = b[:, 4:8]  # 4 bits per sub-block, two per byte (low nibble first)
    lo = np.stack([low & 15, low >> 4], axis=2).reshape(nb, 8)
    hi = ((high[:, None] >> (2 * np.arange(8, dtype=np.uint16))[None]) & 3).astype(np.uint8)
    sc = (lo | (hi << 4)).astype(np.int8) - 32
    qs = b[:, 8:136].reshape(nb, 8, 16)  # per sub-block: 16 bytes, low nibbles then high
    idx = np.concatenate([qs & 15, qs >> 4], axis=2).reshape(nb, 256)
    s = d[:, None] * sc.astype(np.float32)
    return _IQ4_LEVELS[idx], np.repeat(s, 2, axis=1), None


FORMATS = {
    "Q8_0": (32, 34, _q8_0),
    "Q4_0": (32, 18, _q4_0),
    "Q4_1": (32, 20, _q4_1),
    "Q5_0": (32, 22, _q5_0),
    "Q5_1": (32, 24, _q5_1),
    "Q4_K": (256, 144, _q4_k),
    "Q5_K": (256, 176, _q5_k),
    "Q6_K": (256, 210, _q6_k),
    "Q2_K": (256, 84, _q2_k),
    "Q3_K": (256, 110, _q3_k),
    "IQ4_NL": (32, 18, _iq4_nl),
    "IQ4_XS": (256, 136, _iq4_xs),
}
"""GGUF type name -> (elements per block, bytes per block, decoder to (q, S per 16, M per 16))."""


def decode_blocks(kind: str, raw: np.ndarray, rows: int, cols: int):
    """A GGUF tensor's raw bytes as ``(q int8 [rows, cols], S [rows, cols/16], M or None)``."""
    per, size, fn = FORMATS[kind]
    if cols % per:
        raise ValueError(f"{kind}: {cols} columns is not a whole number of blocks")
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1, size)
    if blocks.shape[0] != rows * cols // per:
        raise ValueError(f"{kind}: {blocks.shape[0]} blocks for a {rows} x {cols} tensor")
    q, s, m = fn(blocks)
    q = np.ascontiguousarray(q, dtype=np.int8).reshape(rows, cols)
    s = np.ascontiguousarray(s, dtype=np.float32).reshape(rows, cols // 16)
    if m is not None:
        m = np.ascontiguousarray(m, dtype=np.float32).reshape(rows, cols // 16)
    return q, s, m


def dequantize(q: np.ndarray, s: np.ndarray, m: np.ndarray | None) -> np.ndarray:
    """The float32 weights ``S * q + M`` (``S * q`` exact, one rounding for ``+ M``)."""
    rows, cols = q.shape
    w = q.reshape(rows, cols // 16, 16).astype(np.float32) * s[:, :, None]
    if m is not None:
        w += m[:, :, None]
    return w.reshape(rows, cols)


# ---- the GGUF file's tensor table --------------------------------------------------------

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}  # fmt: skip


def gguf_tensors(path: str | Path) -> Iterator[tuple[str, list[int], str, np.ndarray]]:
    """``(name, dims, type name, raw bytes)`` of each tensor in a GGUF file (version 2 or 3).

    Reads the header itself: ``gguf.GGUFReader`` also decodes every metadata value (a
    262,144-token vocabulary takes it 18 s), where only the tensor table is needed here.
    """
    import mmap

    from gguf import GGMLQuantizationType

    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    at = 0

    def take(fmt: str) -> Any:
        nonlocal at
        v = struct.unpack_from("<" + fmt, buf, at)
        at += struct.calcsize("<" + fmt)
        return v[0] if len(v) == 1 else v

    def text() -> str:
        nonlocal at
        n = take("Q")
        at += n
        return bytes(buf[at - n : at]).decode("utf-8", "replace")

    def skip(kind: int) -> Any:
        nonlocal at
        if kind in _SCALARS:
            return take(_SCALARS[kind])
        if kind == 8:
            return text()
        if kind == 9:
            inner, n = take("I"), take("Q")
            if inner in _SCALARS:
                at += n * struct.calcsize(_SCALARS[inner])
            else:
                for _ in range(n):
                    skip(inner)
            return None
        raise ValueError(f"{path}: unknown GGUF metadata type {kind}")

    magic, version = take("4s"), take("I")
    if magic != b"GGUF" or version not in (2, 3):
        raise ValueError(f"{path}: not a GGUF file of version 2 or 3")
    n_tensors, n_kv = take("Q"), take("Q")
    align = 32
    for _ in range(n_kv):
        key, kind = text(), take("I")
        value = skip(kind)
        if key == "general.alignment" and isinstance(value, int):
            align = value
    table = []
    for _ in range(n_tensors):
        name = text()
        dims = [take("Q") for _ in range(take("I"))]
        table.append((name, dims, take("I"), take("Q")))
    start = (at + align - 1) // align * align
    data = np.frombuffer(buf, dtype=np.uint8)
    for name, dims, kind, offset in table:
        try:
            tname = GGMLQuantizationType(kind).name
        except ValueError:
            tname = f"type{kind}"
        if tname not in FORMATS or len(dims) != 2:
            yield name, dims, tname, data[:0]
            continue
        per, size, _ = FORMATS[tname]
        nbytes = dims[0] * dims[1] // per * size
        yield name, dims, tname, data[start + offset : start + offset + nbytes]


# ---- packed linears --------------------------------------------------------------------


@dataclass
class Packed:
    """One weight [N, K] in the kernel's panel layout (see qmm.c)."""

    n: int
    k: int
    q: Any  # torch int8 [N/16, K, 16]
    s: Any  # torch float32 [N/16, K/16, 16]
    m: Any  # torch float32 [N/16, K/16, 16] or None
    stamp: tuple[int, int] = (0, 0)  # (data_ptr, _version) of the weight it was checked against

    @classmethod
    def of(cls, q: np.ndarray, s: np.ndarray, m: np.ndarray | None) -> Packed:
        import torch

        n, k = q.shape

        def panels(a: np.ndarray) -> Any:
            return torch.from_numpy(
                np.ascontiguousarray(a.reshape(n // 16, 16, a.shape[1]).transpose(0, 2, 1))
            )

        return cls(n, k, panels(q), panels(s), None if m is None else panels(m))

    @staticmethod
    def fits(n: int, k: int) -> bool:
        return n % 16 == 0 and k % 16 == 0 and n >= 16 and k >= 16

    def matmul(self, x: Any, threads: int) -> Any:
        """``x @ W^T`` for a float32 CPU tensor ``x`` [..., K]."""
        import torch

        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.k).contiguous()
        out = torch.empty(x2.shape[0], self.n, dtype=torch.float32)
        rc = _lib.ekt_qmm(
            x2.data_ptr(), x2.shape[0], self.k, self.n, self.q.data_ptr(), self.s.data_ptr(),
            0 if self.m is None else self.m.data_ptr(), out.data_ptr(), self.n, threads,
        )  # fmt: skip
        if rc != 0:
            raise RuntimeError(f"ekt_qmm refused a {tuple(x2.shape)} x [{self.n}, {self.k}]")
        return out.reshape(*lead, self.n)


def _row_hash(w: np.ndarray) -> np.ndarray:
    """A 64-bit hash per row of a float32 matrix (its bit pattern, randomly weighted)."""
    bits = np.ascontiguousarray(w).view(np.uint32).astype(np.uint64)
    rng = np.random.default_rng(0x5EED)
    mult = rng.integers(1, 2**63, size=w.shape[1], dtype=np.uint64) | np.uint64(1)
    with np.errstate(over="ignore"):
        return (bits * mult[None]).sum(axis=1, dtype=np.uint64)


class QuantizedLinears:
    """The packed weights of a model's ``nn.Linear`` layers, and the switch that uses them."""

    def __init__(self, packed: dict[Any, Packed], skipped: dict[str, str]):
        self.packed = packed  # module -> Packed
        self.skipped = skipped  # GGUF tensor or layer name -> why it keeps float32

    def __len__(self) -> int:
        return len(self.packed)

    @property
    def nbytes(self) -> int:
        total = 0
        for p in self.packed.values():
            for t in (p.q, p.s, p.m):
                if t is not None:
                    total += t.numel() * t.element_size()
        return total

    @contextmanager
    def active(self) -> Iterator[None]:
        """Within the block, the packed layers' small float32 CPU products use the kernel."""
        import torch

        threads = torch.get_num_threads()
        saved = []
        stale = [mod for mod, p in self.packed.items() if _stamp(mod.weight) != p.stamp]
        for mod in stale:  # trained or replaced since it was packed: its blocks are out of date
            del self.packed[mod]
            self.skipped[f"layer {type(mod).__name__} {tuple(mod.weight.shape)}"] = (
                "its weight changed after packing"
            )
        if stale:
            print(f"ekt: {len(stale)} layers changed since they were packed: float32 for them",
                  file=sys.stderr)  # fmt: skip
        for mod, p in self.packed.items():
            saved.append((mod, mod.__dict__.get("forward")))
            mod.forward = _forward(mod, p, threads)
        try:
            yield
        finally:
            for mod, before in saved:
                if before is None:
                    del mod.forward
                else:
                    mod.forward = before


def _stamp(weight: Any) -> tuple[int, int]:
    return weight.data_ptr(), weight._version


def _forward(mod: Any, p: Packed, threads: int) -> Any:
    import torch

    # what the module ran before (a hook's wrapper, e.g. accelerate's, or its own forward)
    plain = mod.__dict__.get("forward") or type(mod).forward.__get__(mod)

    def forward(x: Any) -> Any:
        if (
            x.dtype != torch.float32
            or x.device.type != "cpu"
            or x.numel() // p.k > MAX_ROWS
            or (torch.is_grad_enabled() and x.requires_grad)
        ):
            return plain(x)
        out = p.matmul(x, threads)
        if mod.bias is not None:
            out = out + mod.bias
        return out

    return forward


def attach(model: Any, gguf: str | Path) -> QuantizedLinears:
    """Pack the GGUF blocks that reproduce ``model``'s float32 linear weights bit for bit.

    Returns an empty ``QuantizedLinears`` (and the reason in ``skipped``) when the kernel
    cannot be built or nothing matches; the model itself is never changed.
    """
    import torch

    if library() is None:
        return QuantizedLinears({}, {"*": f"kernel not built: {build_error()}"})
    # One entry per distinct weight tensor (tied layers share theirs), by shape and first row.
    weights: dict[int, tuple[np.ndarray, list[Any]]] = {}
    for _, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and mod.weight.dtype == torch.float32:
            w = mod.weight
            if w.device.type == "cpu" and Packed.fits(*w.shape):
                entry = weights.setdefault(w.data_ptr(), (w.detach().numpy(), []))
                entry[1].append(mod)
    by_row: dict[tuple[int, int, bytes], list[int]] = {}
    for key, (w, _) in weights.items():
        by_row.setdefault((*w.shape, w[0].tobytes()), []).append(key)
    packed: dict[Any, Packed] = {}
    skipped: dict[str, str] = {}
    left = set(weights)
    for name, dims, kind, raw in gguf_tensors(gguf):
        if len(dims) != 2:
            continue
        k, n = int(dims[0]), int(dims[1])
        if not any(weights[key][0].shape == (n, k) for key in left):
            continue
        if kind not in FORMATS:
            skipped[name] = f"format {kind} is not packed"
            continue
        q, s, m = decode_blocks(kind, raw, n, k)
        hit, perm = None, None
        first = dequantize(q[:1], s[:1], None if m is None else m[:1])[0].tobytes()
        for key in by_row.get((n, k, first), []):
            if key in left and _equal(q, s, m, weights[key][0]):
                hit = key
                break
        if hit is None:  # rows reordered by the converter (llama's q and k projections)
            same = [key for key in left if weights[key][0].shape == (n, k)]
            hit, perm = _permuted_match(q, s, m, same, weights)
        if hit is None:
            skipped[name] = "reproduces no layer of the model bit for bit"
            continue
        if perm is not None:
            q, s = q[perm], s[perm]
            m = None if m is None else m[perm]
        p = Packed.of(q, s, m)
        p.stamp = _stamp(weights[hit][1][0].weight)
        left.discard(hit)
        for mod in weights[hit][1]:
            packed[mod] = p
    names = {id(mod): name for name, mod in model.named_modules()}
    for key in left:
        for mod in weights[key][1]:
            skipped[names[id(mod)]] = "no GGUF tensor reproduces it"
    return QuantizedLinears(packed, skipped)


_CHUNK = 4096
"""Rows dequantised at a time while matching: memory stays small next to the weights."""


def _chunks(q: np.ndarray, s: np.ndarray, m: np.ndarray | None, order: Any = None):
    """(first row, float32 rows) of the blocks' weights, ``_CHUNK`` rows at a time, rows
    taken in ``order`` (default: as stored)."""
    for lo in range(0, q.shape[0], _CHUNK):
        idx = slice(lo, lo + _CHUNK) if order is None else order[lo : lo + _CHUNK]
        yield lo, dequantize(q[idx], s[idx], None if m is None else m[idx])


def _equal(q: np.ndarray, s: np.ndarray, m: np.ndarray | None, target: np.ndarray,
           order: Any = None) -> bool:  # fmt: skip
    """Whether the blocks' weights (rows in ``order``) are ``target``, bit for bit."""
    return all(
        np.array_equal(w.view(np.uint32), target[lo : lo + len(w)].view(np.uint32))
        for lo, w in _chunks(q, s, m, order)
    )


def _hashes(rows: Iterator[np.ndarray]) -> np.ndarray:
    return np.concatenate([_row_hash(w) for w in rows])


def _permuted_match(q: np.ndarray, s: np.ndarray, m: np.ndarray | None, keys: list[int],
                    weights: dict) -> tuple[Any, Any]:  # fmt: skip
    """The weight among ``keys`` that is the blocks' with its rows reordered, and the order."""
    if not keys:
        return None, None
    hw = _hashes(w for _, w in _chunks(q, s, m))
    index = {h: i for i, h in enumerate(hw.tolist())}
    if len(index) != len(hw):
        return None, None  # repeated rows: no unique order
    for key in keys:
        wm = weights[key][0]
        hm = _hashes(wm[lo : lo + _CHUNK] for lo in range(0, wm.shape[0], _CHUNK))
        try:
            perm = np.array([index[h] for h in hm.tolist()])
        except KeyError:
            continue
        if _equal(q, s, m, wm, perm):
            return key, perm
    return None, None


def for_spec(model: Any, spec: str, say: bool = True) -> QuantizedLinears | None:
    """``attach(model, <the spec's GGUF>)`` for a float32 CPU model whose weights ship as a
    GGUF (a preset, a .gguf file); None for anything else. ``say``: print ``note``."""
    import torch

    from ekt.models import shipped_gguf

    first = next(model.parameters(), None)
    if first is None or first.device.type != "cpu" or first.dtype != torch.float32:
        return None
    gguf = shipped_gguf(spec)
    if gguf is None:
        return None
    try:
        found = attach(model, gguf)
    except (ValueError, OSError, struct.error) as e:  # a file transformers read, but not we
        found = QuantizedLinears({}, {"*": f"could not read the blocks of {gguf}: {e}"})
    if say:
        note(found)
    return found if len(found) else None


def note(q: QuantizedLinears, out: Any = None) -> None:
    """One stderr line: how many layers decode quantised, or why none do."""
    out = out or sys.stderr
    if len(q):
        print(
            f"ekt: {len(q)} linear layers decode with the GGUF's quantised weights "
            f"({q.nbytes / 2**20:.0f} MiB packed)",
            file=out,
        )
    elif q.skipped:
        why = next(iter(q.skipped.values()))
        print(f"ekt: decoding with float32 weights ({why})", file=out)


__all__ = [
    "FORMATS",
    "MAX_ROWS",
    "Packed",
    "QuantizedLinears",
    "attach",
    "decode_blocks",
    "dequantize",
    "for_spec",
    "gguf_tensors",
    "library",
]
