"""Sandbox worker: a warm interpreter that forks one confined child per program.

Started by ``ekt.sandbox.Sandbox`` as ``python -m ekt._sandbox_worker``. It reads
length-prefixed JSON requests on stdin and answers with length-prefixed JSON on
stdout (never pickle). For each program it forks a child which, before running
a line of the program, puts itself in its own process group, drops every
inherited file descriptor but its result pipe, lowers its resource limits,
moves into a fresh scratch directory and loads a seccomp filter. The worker
waits on the result pipe with its own monotonic clock, kills the child's whole
process group at the deadline (or as soon as the child is done), reaps it, and
removes the scratch directory.
"""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import resource
import select
import shutil
import signal
import struct
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
sys.dont_write_bytecode = True

# Imported once here so each program starts warm.
import collections  # noqa: E402,F401
import datetime  # noqa: E402,F401
import decimal  # noqa: E402
import fractions  # noqa: E402
import functools  # noqa: E402,F401
import itertools  # noqa: E402,F401
import re  # noqa: E402,F401
import statistics  # noqa: E402,F401

try:  # optional: programs sometimes use numpy
    import numpy  # noqa: F401

    _NUMPY = True
except ImportError:  # pragma: no cover
    _NUMPY = False

RESULT_CAP = 64 * 1024
MAX_INT_BITS = 1000  # larger ints are reported without their value
MAX_STR = 200
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
CLONE_THREAD = 0x00010000

_libc = ctypes.CDLL(None, use_errno=True)


def _read_msg(fh: Any) -> dict | None:
    head = fh.read(4)
    if len(head) < 4:
        return None
    (size,) = struct.unpack("<I", head)
    return json.loads(fh.read(size))


def _write_msg(fh: Any, obj: dict) -> None:
    data = json.dumps(obj).encode()
    fh.write(struct.pack("<I", len(data)) + data)
    fh.flush()


# -- the child ---------------------------------------------------------------------


class _TailWriter:
    """sys.stdout/stderr for the program: keeps only the last ``cap`` characters."""

    def __init__(self, cap: int):
        self.cap = cap
        self.buf = ""

    def write(self, s: str) -> int:
        if type(s) is not str:
            raise TypeError("write() argument must be str")
        self.buf = (self.buf + s)[-self.cap :] if len(s) < self.cap else s[-self.cap :]
        return len(s)

    def flush(self) -> None:
        pass


def plain_value(x: Any) -> tuple[Any, str, str]:
    """(JSON-able value, type name, note) for a returned object, by exact type checks only."""
    t = type(x)
    if t is bool:
        return x, "bool", ""
    if t is int:
        if x.bit_length() > MAX_INT_BITS:
            return None, "int", f"int of {x.bit_length()} bits not reported"
        return x, "int", ""
    if t is float:
        if math.isnan(x) or math.isinf(x):
            return str(x), "float", ""
        return x, "float", ""
    if t is fractions.Fraction:
        num, den = x.numerator, x.denominator
        if max(num.bit_length(), den.bit_length()) > MAX_INT_BITS:
            return None, "Fraction", "fraction too large"
        return [num, den], "Fraction", ""
    if t is decimal.Decimal:
        try:
            f = float(x)
        except (ValueError, OverflowError):
            return None, "Decimal", "not convertible"
        return (str(f) if not math.isfinite(f) else f), "Decimal", ""
    if t is str:
        return x[:MAX_STR], "str", ""
    if x is None:
        return None, "NoneType", ""
    if _NUMPY:
        import numpy as np

        if isinstance(x, np.generic) and t.__module__ == "numpy":
            name = f"numpy.{t.__name__}"
            if isinstance(x, np.bool_):
                return bool(x), "bool", ""
            if isinstance(x, np.integer):
                return int(x), name, ""
            if isinstance(x, np.floating):
                f = float(x)
                return (str(f) if not math.isfinite(f) else f), name, ""
    name = t.__name__ if isinstance(getattr(t, "__name__", None), str) else "object"
    return None, name[:60], "unsupported return type"


def _limit(res: int, value: int) -> None:
    try:
        resource.setrlimit(res, (value, value))
    except (ValueError, OSError):
        soft, hard = resource.getrlimit(res)
        resource.setrlimit(res, (min(value, hard) if hard != -1 else value, hard))


def _child(program: str, cfg: dict, wfd: int, scratch: str, seccomp_filter: Any) -> None:
    """Runs in the forked child; never returns."""
    try:
        os.setpgid(0, 0)
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        keep = sorted({0, 1, 2, wfd})
        for lo, hi in zip(keep, keep[1:] + [65536]):
            os.closerange(lo + 1, hi)
        os.chdir(scratch)
        if cfg["isolation"] != "none":
            _limit(resource.RLIMIT_CPU, cfg["cpu_seconds"])
            # The budget is on top of what the warm interpreter already maps.
            _limit(resource.RLIMIT_AS, cfg["base_vm_bytes"] + cfg["memory_mb"] * 1024 * 1024)
            _limit(resource.RLIMIT_FSIZE, cfg["fsize_bytes"])
            _limit(resource.RLIMIT_NOFILE, 32)
            _limit(resource.RLIMIT_CORE, 0)
            _limit(resource.RLIMIT_NPROC, 0)
            if seccomp_filter is not None:
                seccomp_filter.load()
        tail = _TailWriter(cfg["max_output_bytes"])
        sys.stdout = sys.stderr = tail
        sys.stdin = None
        t0 = time.perf_counter()
        try:
            code = compile(program, "<program>", "exec")
            ns: dict = {"__name__": "__program__", "__builtins__": __builtins__}
            exec(code, ns)
            fn = ns.get("solution")
            if not callable(fn):
                raise NameError("the program defines no solution() function")
            result = fn()
            value, tname, note = plain_value(result)
            msg = {"status": "ok", "value": value, "type": tname, "error": note}
        except BaseException as e:  # noqa: BLE001 - everything a program raises is its error
            et = type(e)
            name = et.__name__ if isinstance(getattr(et, "__name__", None), str) else "Exception"
            try:
                text = str(e)[:300]
            except BaseException:  # noqa: BLE001
                text = ""
            msg = {"status": "error", "value": None, "type": name[:60], "error": text}
        msg["ms"] = (time.perf_counter() - t0) * 1000
        msg["stdout_tail"] = tail.buf
        data = json.dumps(msg).encode()[:RESULT_CAP]
        os.write(wfd, data)
    except BaseException:  # noqa: BLE001
        pass
    os._exit(0)


# -- the worker --------------------------------------------------------------------


def build_filter(isolation: str) -> Any:
    """A seccomp filter (or None when unavailable and not required)."""
    if isolation == "none":
        return None
    try:
        import pyseccomp as sc
    except Exception:  # noqa: BLE001
        return None
    deny = sc.ERRNO(errno.EPERM)
    f = sc.SyscallFilter(defaction=sc.ALLOW)
    for name in (
        "socket",
        "socketpair",
        "connect",
        "bind",
        "listen",
        "accept",
        "accept4",
        "fork",
        "vfork",
        "execve",
        "execveat",
        "kill",
        "tkill",
        "tgkill",
        "rt_sigqueueinfo",
        "rt_tgsigqueueinfo",
        "pidfd_send_signal",
        "pidfd_open",
        "process_vm_writev",
        "process_vm_readv",
        "ptrace",
        "mount",
        "umount2",
        "pivot_root",
        "chroot",
        "setns",
        "unshare",
        "setsid",
        "setpgid",
        "setpriority",
        "reboot",
        "swapon",
        "swapoff",
        "init_module",
        "finit_module",
        "delete_module",
        "kexec_load",
        "bpf",
        "perf_event_open",
        "unlink",
        "unlinkat",
        "rmdir",
        "rename",
        "renameat",
        "renameat2",
        "link",
        "linkat",
        "symlink",
        "symlinkat",
        "mkdir",
        "mkdirat",
        "chmod",
        "fchmod",
        "fchmodat",
        "chown",
        "fchown",
        "fchownat",
        "lchown",
        "truncate",
        "ftruncate",
        "mknod",
        "mknodat",
        "setuid",
        "setgid",
        "setreuid",
        "setregid",
        "setresuid",
        "setresgid",
        "setgroups",
        "prctl",
    ):
        try:
            f.add_rule(deny, name)
        except Exception:  # noqa: BLE001 - syscall unknown on this architecture
            pass
    # Processes only as threads: clone without CLONE_THREAD is refused; clone3 reports
    # ENOSYS so that libc falls back to clone, whose flags the filter can inspect.
    f.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    # Files may be read, not written: opening for writing or creating is refused.
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    for flag in (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC, os.O_APPEND):
        f.add_rule(deny, "openat", sc.Arg(2, sc.MASKED_EQ, flag, flag))
        f.add_rule(deny, "open", sc.Arg(1, sc.MASKED_EQ, flag, flag))
    del write_flags
    f.add_rule(deny, "openat2")
    f.add_rule(deny, "creat")
    return f


def _reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def run_one(program: str, cfg: dict, seccomp_filter: Any) -> dict:
    scratch = tempfile.mkdtemp(prefix="ekt-run-", dir=cfg.get("scratch_root"))
    rfd, wfd = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child
        os.close(rfd)
        _child(program, cfg, wfd, scratch, seccomp_filter)
    os.close(wfd)
    try:
        os.setpgid(pid, pid)  # also done in the child; whichever runs first wins
    except OSError:
        pass
    deadline = t0 + cfg["timeout"]
    chunks: list[bytes] = []
    size = 0
    timed_out = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([rfd], [], [], left)
        if not ready:
            continue
        data = os.read(rfd, 65536)
        if not data:
            break
        if size < RESULT_CAP:
            chunks.append(data[: RESULT_CAP - size])
            size += len(data)
    elapsed = (time.monotonic() - t0) * 1000
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    _, status = os.waitpid(pid, 0)
    _reap_all()
    os.close(rfd)
    shutil.rmtree(scratch, ignore_errors=True)

    raw = b"".join(chunks)
    if raw and not timed_out:
        try:
            msg = json.loads(raw)
            if isinstance(msg, dict) and msg.get("status") in ("ok", "error"):
                msg["ms"] = elapsed
                return msg
        except ValueError:
            pass
    if timed_out:
        return {
            "status": "timeout",
            "error": f"wall-clock deadline of {cfg['timeout']}s",
            "ms": elapsed,
        }
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            return {"status": "timeout", "error": "CPU time limit", "ms": elapsed}
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        return {"status": "killed", "error": f"killed by {name}", "ms": elapsed}
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
    return {"status": "killed", "error": f"exited with code {code} before returning", "ms": elapsed}


def main() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    # The protocol owns fds 0/1; anything the worker itself prints goes to stderr.
    sys.stdout = sys.stderr
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans of a program come back to us
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # die with the ekt process
    hello = _read_msg(stdin)
    if hello is None:
        return
    cfg = hello["config"]
    with open("/proc/self/statm") as fh:
        cfg["base_vm_bytes"] = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    seccomp_filter = build_filter(cfg["isolation"])
    _write_msg(stdout, {"ready": True, "seccomp": seccomp_filter is not None, "pid": os.getpid()})
    while True:
        req = _read_msg(stdin)
        if req is None or req.get("stop"):
            return
        _write_msg(stdout, run_one(req["program"], cfg, seccomp_filter))


if __name__ == "__main__":
    main()
