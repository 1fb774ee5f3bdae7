"""Sandbox worker process: a warm interpreter that forks one confined child per program.

Started by :class:`ekt.sandbox.Sandbox` as ``python -m ekt._sandbox_child``. The worker
talks to the ekt process over its stdin/stdout with length-prefixed JSON messages
(4-byte little-endian length, then UTF-8 JSON; never pickle):

* first request ``{"config": {...}}`` -> reply ``{"ready": true, "protections": {...}}``
  (sent only after a probe program ran through the full confinement path);
* then ``{"program": "<source>"}`` -> one result message per request, in order:
  ``{"status", "value", "type", "stdout_tail", "ms", "error"}``;
* EOF on stdin (or ``{"stop": true}``) -> the worker exits.

Importing this module is cheap (no numpy): ``ekt.sandbox`` imports the probes from
here. The heavy pre-imports happen in :func:`main`, once per worker.

Per program the worker ``fork()``s. The child, before running one line of the
program: joins its own process group, asks for SIGKILL when the worker dies, points
fds 0-2 at /dev/null and closes every other inherited fd except its result pipe,
chdirs into a fresh scratch directory, lowers its rlimits, drops all capabilities,
sets no_new_privs, enters a Landlock domain (when the kernel has Landlock) and
loads the seccomp filter the worker compiled once (a raw BPF program installed
with one prctl, so loading costs microseconds). Any failure in that setup exits
the child with ``SETUP_FAILED`` before the program runs.

The worker waits for the result with its own monotonic clock (``poll`` on the
result pipe), SIGKILLs the child's process group at the deadline or as soon as the
result is in, reaps it, kills and reaps any stray it adopted as a child subreaper,
and removes the scratch directory. It reads at most ``result_cap`` bytes and
re-validates the child's JSON, so a program that forges or floods its result pipe
only ever produces a plain, bounded record.
"""

from __future__ import annotations

import ctypes
import ctypes.util
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
import time
from typing import Any

SETUP_FAILED = 121  # child exit code: confinement could not be applied, program not run
MAX_INT_BITS = 3322  # about 1000 decimal digits; larger ints are reported without a value
MAX_STR_CHARS = 1000  # returned strings are cut to this many characters
MAX_ERROR_CHARS = 300
MAX_TYPE_CHARS = 80

# prctl options and syscall numbers (Linux x86_64 / aarch64).
PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
SECCOMP_MODE_FILTER = 2
CLONE_THREAD = 0x00010000
_SYSCALLS = {
    "x86_64": {"capset": 126, "landlock_create_ruleset": 444, "landlock_restrict_self": 446},
    "aarch64": {"capset": 91, "landlock_create_ruleset": 444, "landlock_restrict_self": 446},
}
_NR = _SYSCALLS.get(os.uname().machine, {})

# Landlock access rights (include/uapi/linux/landlock.h).
LL_FS_EXECUTE = 1 << 0
LL_FS_WRITE_FILE = 1 << 1
LL_FS_REMOVE_DIR = 1 << 4
LL_FS_REMOVE_FILE = 1 << 5
LL_FS_MAKE_ALL = sum(1 << b for b in range(6, 13))  # char, dir, reg, sock, fifo, block, sym
LL_FS_REFER = 1 << 13  # ABI 2
LL_FS_TRUNCATE = 1 << 14  # ABI 3
LL_FS_IOCTL_DEV = 1 << 15  # ABI 5
LL_NET_ALL_TCP = (1 << 0) | (1 << 1)  # bind, connect; ABI 4
LL_SCOPE_ALL = (1 << 0) | (1 << 1)  # abstract unix sockets, signals; ABI 6

_libc = ctypes.CDLL(None, use_errno=True)


# -- probes (also used by ekt.sandbox.detect_protections) -------------------------------


def landlock_abi() -> int:
    """Landlock ABI version the kernel offers (0: none)."""
    nr = _NR.get("landlock_create_ruleset")
    if nr is None:
        return 0
    try:
        v = _libc.syscall(nr, None, ctypes.c_size_t(0), ctypes.c_uint32(1))  # VERSION flag
    except Exception:  # noqa: BLE001
        return 0
    return max(0, int(v))


def seccomp_supported() -> bool:
    """The kernel has seccomp filters and libseccomp (through pyseccomp) can be loaded."""
    try:
        with open("/proc/self/status") as fh:
            if "Seccomp:" not in fh.read():
                return False
        import pyseccomp

        pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
    except Exception:  # noqa: BLE001 - no library, no kernel support, other arch
        return False
    return True


# -- building the confinement once per worker -------------------------------------------

_DENY = (
    # network: no sockets at all (AF_UNIX included: no talking to local daemons)
    "socket socketpair connect bind listen accept accept4 "
    # process creation other than threads (clone is handled by flags below), exec
    "fork vfork execve execveat "
    # signalling or inspecting other processes
    "kill rt_sigqueueinfo rt_tgsigqueueinfo pidfd_open pidfd_getfd pidfd_send_signal "
    "ptrace process_vm_readv process_vm_writev kcmp "
    # escaping the process group, namespaces, mounts, privileges, limits
    "setsid setpgid unshare setns mount umount2 pivot_root chroot fsopen fsmount fsconfig "
    "move_mount open_tree mount_setattr setuid setgid setreuid setregid setresuid setresgid "
    "setgroups setfsuid setfsgid capset prctl setrlimit setpriority sched_setscheduler "
    "sched_setaffinity ioprio_set "
    # kernel-level interfaces a math program has no business with
    "bpf perf_event_open userfaultfd io_uring_setup io_uring_enter io_uring_register "
    "keyctl add_key request_key init_module finit_module delete_module kexec_load "
    "kexec_file_load reboot swapon swapoff acct quotactl settimeofday clock_settime "
    "clock_adjtime adjtimex sethostname setdomainname iopl ioperm syslog vhangup "
    "fanotify_init name_to_handle_at open_by_handle_at "
    # every way of changing the filesystem (open-for-writing is handled by flags below)
    "creat openat2 unlink unlinkat rmdir rename renameat renameat2 link linkat symlink "
    "symlinkat mkdir mkdirat mknod mknodat chmod fchmod fchmodat fchmodat2 chown fchown "
    "fchownat lchown truncate ftruncate fallocate utime utimes utimensat futimesat "
    "setxattr lsetxattr fsetxattr removexattr lremovexattr fremovexattr memfd_create "
    "memfd_secret"
).split()
_OPEN_WRITE_FLAGS = (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC, os.O_APPEND)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class SeccompProgram:
    """A compiled BPF filter kept in the worker; ``install`` costs two prctl calls."""

    def __init__(self, bpf: bytes):
        if not bpf or len(bpf) % 8:
            raise ValueError("bad BPF program")
        self._buf = ctypes.create_string_buffer(bpf, len(bpf))
        self._prog = _SockFprog(len(bpf) // 8, ctypes.addressof(self._buf))

    def install(self) -> None:
        if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
        if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(self._prog), 0, 0):
            raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")


def build_seccomp(allow_tgkill: bool) -> SeccompProgram | None:
    """Compile the filter with libseccomp once; None when unavailable.

    Denied calls fail with EPERM (so Python raises PermissionError) instead of
    killing the child: the program's error is then reported, not a crash.
    """
    try:
        import pyseccomp as sc
    except Exception:  # noqa: BLE001
        return None
    try:
        deny = sc.ERRNO(errno.EPERM)
        f = sc.SyscallFilter(defaction=sc.ALLOW)
        names = list(_DENY)
        if not allow_tgkill:  # without Landlock signal scoping, no signals at all
            names += ["tkill", "tgkill"]
        for name in names:
            try:
                f.add_rule(deny, name)
            except Exception:  # noqa: BLE001 - syscall unknown to this libseccomp/arch
                pass
        # Threads yes, processes no. clone3 passes its flags in memory the filter cannot
        # read, so it answers ENOSYS and glibc falls back to clone, whose flags it can.
        f.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
        f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
        # Files can be opened for reading only.
        for flag in _OPEN_WRITE_FLAGS:
            f.add_rule(deny, "openat", sc.Arg(2, sc.MASKED_EQ, flag, flag))
            try:
                f.add_rule(deny, "open", sc.Arg(1, sc.MASKED_EQ, flag, flag))
            except Exception:  # noqa: BLE001 - no open(2) on aarch64
                pass
        # Reading limits is fine, changing them is not (prlimit64 with a new limit).
        f.add_rule(deny, "prlimit64", sc.Arg(2, sc.NE, 0))
        fd = os.memfd_create("ekt-seccomp", os.MFD_CLOEXEC)
        try:
            with os.fdopen(fd, "w+b", closefd=False) as fh:
                f.export_bpf(fh)
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
        return SeccompProgram(b"".join(chunks))
    except Exception:  # noqa: BLE001
        return None


def build_landlock(abi: int) -> tuple[int, dict[str, bool]]:
    """A Landlock ruleset fd denying all writes (and TCP, and outbound signals where the
    ABI allows), or -1. The child enters it with one landlock_restrict_self call."""
    off = {"landlock": False, "landlock_net": False, "landlock_signal_scope": False}
    if abi < 1:
        return -1, off
    fs = LL_FS_EXECUTE | LL_FS_WRITE_FILE | LL_FS_REMOVE_DIR | LL_FS_REMOVE_FILE | LL_FS_MAKE_ALL
    if abi >= 2:
        fs |= LL_FS_REFER
    if abi >= 3:
        fs |= LL_FS_TRUNCATE
    if abi >= 5:
        fs |= LL_FS_IOCTL_DEV
    net = LL_NET_ALL_TCP if abi >= 4 else 0
    scoped = LL_SCOPE_ALL if abi >= 6 else 0
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    attr = ctypes.create_string_buffer(struct.pack("<QQQ", fs, net, scoped)[:size], size)
    fd = _libc.syscall(_NR["landlock_create_ruleset"], attr, ctypes.c_size_t(size), 0)
    if fd < 0:
        return -1, off
    return int(fd), {"landlock": True, "landlock_net": bool(net), "landlock_signal_scope": bool(
        scoped
    )}


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


_CAP_HDR = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
_CAP_NONE = (ctypes.c_uint32 * 6)()


def _drop_capabilities() -> bool:
    nr = _NR.get("capset")
    if nr is None:
        return False
    return _libc.syscall(nr, ctypes.byref(_CAP_HDR), ctypes.byref(_CAP_NONE)) == 0


def _landlock_restrict(ruleset_fd: int) -> None:
    if _libc.syscall(_NR["landlock_restrict_self"], ruleset_fd, 0) != 0:
        raise OSError(ctypes.get_errno(), "landlock_restrict_self")


# -- what a program returns ---------------------------------------------------------------

_NUMPY_TYPES: dict[type, str] = {}
_NUMPY_BOOL: type | None = None
_TYPE_NAME = type.__dict__["__name__"]  # the real name, bypassing metaclass tricks


def _type_name(t: type) -> str:
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
    types are reported by class name with value None.
    """
    import decimal
    import fractions

    t = type(x)
    if t is bool:
        return x, "bool", ""
    if t is int:
        if x.bit_length() > MAX_INT_BITS:
            return None, "int", f"int too large ({x.bit_length()} bits)"
        return x, "int", ""
    if t is float:
        return _float_value(x), "float", ""
    if t is fractions.Fraction:
        num, den = x.numerator, x.denominator
        if type(num) is not int or type(den) is not int:
            return None, "Fraction", "malformed Fraction"
        if max(num.bit_length(), den.bit_length()) > MAX_INT_BITS:
            return None, "Fraction", "Fraction too large"
        return [num, den], "Fraction", ""
    if t is decimal.Decimal:
        try:
            return _float_value(float(x)), "Decimal", ""
        except (ValueError, OverflowError, decimal.DecimalException):
            return None, "Decimal", "Decimal not convertible to float"
    if t is str:
        return x[:MAX_STR_CHARS], "str", ""
    if x is None:
        return None, "NoneType", ""
    if t is _NUMPY_BOOL:
        return bool(x), "numpy.bool", ""
    name = _NUMPY_TYPES.get(t)
    if name is not None:
        if name[6] in "iu":  # numpy.int*, numpy.uint*
            v = int(x)
            if v.bit_length() > MAX_INT_BITS:
                return None, name, "int too large"
            return v, name, ""
        return _float_value(float(x)), name, ""
    return None, _type_name(t), "unsupported return type"


def _init_numpy_types() -> None:
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


# -- the child ----------------------------------------------------------------------------


class _Tail:
    """sys.stdout/sys.stderr for the program: keeps only the last ``cap`` characters."""

    def __init__(self, cap: int):
        self.cap = max(0, cap)
        self.buf = ""

    def write(self, s: str) -> int:
        if type(s) is not str:
            raise TypeError(f"write() argument must be str, not {_type_name(type(s))}")
        n = len(s)
        if n >= self.cap:
            self.buf = s[n - self.cap :] if self.cap else ""
        else:
            self.buf += s
            if len(self.buf) > 2 * self.cap:
                self.buf = self.buf[-self.cap :]
        return n

    def tail(self) -> str:
        return self.buf[-self.cap :] if self.cap else ""

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _limit(res: int, soft: int, hard: int | None = None) -> None:
    hard = soft if hard is None else hard
    resource.setrlimit(res, (soft, hard))


def _confine(w: Worker, wfd: int, scratch: str) -> None:
    """Everything between fork and the program's first line. Raises on any failure."""
    os.setpgid(0, 0)
    for fd in (0, 1, 2):
        os.dup2(w.devnull, fd)
    keep = sorted({0, 1, 2, wfd, w.landlock_fd} - {-1})
    for lo, hi in zip(keep, keep[1:] + [1 << 20]):
        if hi > lo + 1:
            os.closerange(lo + 1, hi)
    os.chdir(scratch)
    if w.isolation == "none":
        return
    _limit(resource.RLIMIT_CPU, w.cpu_seconds, w.cpu_seconds + 1)
    _limit(resource.RLIMIT_AS, w.as_bytes)
    _limit(resource.RLIMIT_FSIZE, w.fsize_bytes)
    _limit(resource.RLIMIT_NOFILE, 64)
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_MEMLOCK, 0)
    _limit(resource.RLIMIT_MSGQUEUE, 0)
    if w.seccomp is None:  # root ignores it; for other users it also stops threads
        _limit(resource.RLIMIT_NPROC, 0)
    if w.drop_caps and not _drop_capabilities():
        raise OSError("capset failed")
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError("PR_SET_NO_NEW_PRIVS failed")
    if w.landlock_fd >= 0:
        _landlock_restrict(w.landlock_fd)
        os.close(w.landlock_fd)
    if w.seccomp is not None:
        w.seccomp.install()


def _child(w: Worker, program: str, wfd: int, scratch: str) -> None:
    """Runs in the forked child; never returns."""
    try:
        # Die with the worker; then make sure the worker did not die before that.
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != w.pid:
            os._exit(SETUP_FAILED)
        _confine(w, wfd, scratch)
    except BaseException:  # noqa: BLE001
        os._exit(SETUP_FAILED)
    try:
        tail = _Tail(w.max_output)
        sys.stdout = sys.stderr = tail  # type: ignore[assignment]
        sys.stdin = None  # type: ignore[assignment]
        try:
            code = compile(program, "<program>", "exec")
            mod = type(sys)("__main__")
            sys.modules["__main__"] = mod
            ns = mod.__dict__
            ns["__builtins__"] = __builtins__
            del program
            exec(code, ns)
            fn = ns.get("solution")
            if fn is None:
                raise NameError("name 'solution' is not defined")
            result = fn()
            value, tname, note = plain_value(result)
            msg = {"status": "ok", "value": value, "type": tname, "error": note}
        except BaseException as e:  # noqa: BLE001 - whatever the program raises is its error
            try:
                text = str(e)[:MAX_ERROR_CHARS]
            except BaseException:  # noqa: BLE001
                text = ""
            name = _type_name(type(e))
            msg = {"status": "error", "value": None, "type": name, "error": text or name}
        msg["stdout_tail"] = tail.tail()
        data = json.dumps(msg).encode("utf-8", "replace")
        view = memoryview(data)
        while view:
            view = view[os.write(wfd, view) :]
    except BaseException:  # noqa: BLE001
        pass
    os._exit(0)


# -- the worker ---------------------------------------------------------------------------


def _check_result(raw: bytes, max_output: int) -> dict | None:
    """The child's message, re-validated into plain bounded fields; None if malformed."""
    try:
        msg = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if type(msg) is not dict or msg.get("status") not in ("ok", "error"):
        return None
    value = msg.get("value")
    tv = type(value)
    if tv is int:
        if value.bit_length() > MAX_INT_BITS:
            return None
    elif tv is str:
        value = value[:MAX_STR_CHARS]
    elif tv is list:
        if len(value) != 2 or any(type(v) is not int for v in value):
            return None
    elif tv not in (float, bool) and value is not None:
        return None
    fields = {}
    for key, cap in (("type", MAX_TYPE_CHARS), ("error", MAX_ERROR_CHARS), ("stdout_tail", 0)):
        v = msg.get(key, "")
        if type(v) is not str:
            return None
        fields[key] = v[-max_output:] if key == "stdout_tail" else v[:cap]
    if max_output <= 0:
        fields["stdout_tail"] = ""
    return {"status": msg["status"], "value": value, **fields}


class Worker:
    def __init__(self, cfg: dict):
        self.pid = os.getpid()
        self.isolation = cfg["isolation"]
        self.timeout = float(cfg["timeout"])
        self.cpu_seconds = int(cfg["cpu_seconds"])
        self.max_output = int(cfg["max_output_bytes"])
        self.fsize_bytes = int(cfg["fsize_bytes"])
        self.scratch_root = cfg["scratch_root"]
        self.result_cap = 65536 + 8 * self.max_output
        with open("/proc/self/statm") as fh:
            vm = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        # The memory budget comes on top of what the warm interpreter already maps.
        self.as_bytes = vm + int(cfg["memory_mb"]) * 1024 * 1024
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.counter = 0
        self.protections: dict[str, bool] = {
            "process_group": True,
            "wall_clock_deadline": True,
            "scratch_dir": True,
            "fd_isolation": True,
            "rlimits": self.isolation != "none",
            "no_new_privs": self.isolation != "none",
            "capabilities_dropped": False,
            "seccomp": False,
            "fs_write_blocked": False,
            "landlock": False,
            "landlock_net": False,
            "landlock_signal_scope": False,
        }
        self.landlock_fd = -1
        self.seccomp: SeccompProgram | None = None
        self.drop_caps = False
        if self.isolation != "none":
            self.landlock_fd, ll = build_landlock(landlock_abi())
            self.protections.update(ll)
            self.seccomp = build_seccomp(allow_tgkill=ll["landlock_signal_scope"])
            self.protections["seccomp"] = self.seccomp is not None
            self.protections["fs_write_blocked"] = self.seccomp is not None or ll["landlock"]
            self.drop_caps = os.geteuid() == 0 or _has_caps()
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    def probe(self) -> str:
        """Run a trivial program through the full path; '' when it works."""
        res = self.run_one("def solution():\n    return 41 + 1\n")
        if res.get("status") != "ok" or res.get("value") != 42:
            return f"probe program failed: {res.get('status')} {res.get('error', '')}".strip()
        if self.drop_caps:
            self.protections["capabilities_dropped"] = True
        return ""

    def run_one(self, program: str) -> dict:
        self.counter += 1
        scratch = os.path.join(self.scratch_root, str(self.counter))
        os.mkdir(scratch, 0o700)
        rfd, wfd = os.pipe()
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os.close(rfd)
            _child(self, program, wfd, scratch)
        os.close(wfd)
        try:
            os.setpgid(pid, pid)  # the child does it too; whichever runs first wins
        except OSError:
            pass
        deadline = t0 + self.timeout
        poller = select.poll()
        poller.register(rfd, select.POLLIN | select.POLLHUP | select.POLLERR)
        chunks: list[bytes] = []
        size = 0
        timed_out = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            if not poller.poll(max(1, math.ceil(left * 1000))):
                continue
            data = os.read(rfd, 65536)
            if not data:
                break
            if size <= self.result_cap:
                chunks.append(data)
            size += len(data)
        ms = (time.monotonic() - t0) * 1000.0
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        _, status = os.waitpid(pid, 0)
        os.close(rfd)
        self._reap_strays()
        try:
            os.rmdir(scratch)
        except OSError:
            shutil.rmtree(scratch, ignore_errors=True)
        out: dict[str, Any] | None = None
        if timed_out:
            out = {"status": "timeout", "error": f"wall-clock deadline of {self.timeout:g}s"}
        elif size > self.result_cap:
            out = {"status": "killed", "error": "result message too large"}
        elif chunks:
            out = _check_result(b"".join(chunks), self.max_output)
            if out is None:
                out = {"status": "killed", "error": "malformed result message"}
        if out is None:
            out = {"status": "killed", "error": _describe_exit(status)}
        out.setdefault("value", None)
        out.setdefault("type", "")
        out.setdefault("stdout_tail", "")
        out["ms"] = round(ms, 3)
        return out

    def _reap_strays(self) -> None:
        """Kill and reap processes that escaped the group and were re-parented to us.

        With the seccomp filter no program can create a process, so this only has
        work to do without it; reading /proc costs a few microseconds otherwise."""
        for _ in range(3):
            try:
                with open(f"/proc/{self.pid}/task/{self.pid}/children") as fh:
                    kids = [int(p) for p in fh.read().split()]
            except OSError:
                kids = []
            for k in kids:
                try:
                    os.kill(k, signal.SIGKILL)
                except OSError:
                    pass
            while True:
                try:
                    pid, _ = os.waitpid(-1, 0 if kids else os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
            if not kids:
                return


def _has_caps() -> bool:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16) != 0
    except (OSError, ValueError):
        pass
    return False


def _describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        if sig == signal.SIGXCPU:
            return f"killed by {name} (CPU time limit)"
        if sig == signal.SIGXFSZ:
            return f"killed by {name} (file size limit)"
        return f"killed by {name}"
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        if code == SETUP_FAILED:
            return "sandbox setup failed in the child; program not run"
        return f"exited with code {code} without returning"
    return f"ended without a result (status {status})"


def _read_exact(fd: int, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _read_msg(fd: int) -> dict | None:
    head = _read_exact(fd, 4)
    if head is None:
        return None
    (size,) = struct.unpack("<I", head)
    body = _read_exact(fd, size)
    if body is None:
        return None
    obj = json.loads(body)
    return obj if isinstance(obj, dict) else None


def _write_msg(fd: int, obj: dict) -> None:
    data = json.dumps(obj).encode()
    view = memoryview(struct.pack("<I", len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _preload() -> None:
    """Import once here what programs commonly use, so each forked child starts warm."""
    import collections  # noqa: F401
    import datetime  # noqa: F401
    import decimal  # noqa: F401
    import fractions  # noqa: F401
    import functools  # noqa: F401
    import itertools  # noqa: F401
    import operator  # noqa: F401
    import random  # noqa: F401
    import re  # noqa: F401
    import statistics  # noqa: F401
    import string  # noqa: F401

    try:  # about 0.1 s once per worker; saves that much in every program that uses it
        import numpy  # noqa: F401
    except Exception:  # noqa: BLE001
        pass
    _init_numpy_types()


def main() -> None:
    sys.dont_write_bytecode = True
    rfd, wfd = 0, 1
    # The protocol owns fds 0 and 1; anything the worker itself prints goes to stderr.
    sys.stdout = sys.stderr
    hello = _read_msg(rfd)
    if hello is None or "config" not in hello:
        return
    _preload()
    import gc

    gc.collect()
    gc.freeze()  # keep the collector from touching (and copying) the warm heap in children
    worker = Worker(hello["config"])
    problem = worker.probe()
    _write_msg(
        wfd,
        {"ready": not problem, "problem": problem, "protections": worker.protections,
         "pid": worker.pid},
    )
    if problem:
        return
    while True:
        req = _read_msg(rfd)
        if req is None or req.get("stop"):
            return
        program = req.get("program")
        if type(program) is not str:
            res = {"status": "error", "value": None, "type": "TypeError",
                   "error": "program is not a string", "stdout_tail": "", "ms": 0.0}
        else:
            res = worker.run_one(program)
        _write_msg(wfd, res)


if __name__ == "__main__":
    main()
