"""Sandbox worker process: a warm interpreter that forks one confined child per program.

Started by :class:`ekt.sandbox.pool.Sandbox` as ``python -P -m ekt.sandbox.child``. The
worker talks to the ekt process over its stdin/stdout with length-prefixed messages
(4-byte little-endian length, then the body; never pickle):

* first request: the config, ``marshal``-encoded (only the ekt process writes this
  pipe) -> reply ``{"ready": true, "protections": {...}, "fs": {...}}`` as JSON, sent
  only after a probe program ran through the full confinement path and checked the
  filesystem rule from inside it;
* then one program per request, UTF-8 text -> one result per request, in order: the
  child's own result frame forwarded as it came (``RAW_RESULT``, validated by the ekt
  process with ``parse_raw_result``), or, when the worker decided the outcome, JSON
  ``{"status", "value", "type", "error", "stdout_tail", "ms"}``;
* the worker takes up to ``BATCH`` programs that are already queued in its pipe at
  once, compiles them all, then runs them one by one, and writes their results in one
  go (sooner if a program ran long). The ekt process keeps two batches queued per
  worker and writes each refill in one go: one wake-up per batch instead of per program;
* EOF on stdin -> the worker exits. A worker that must stop early (its scratch
  directory could not be emptied) answers ``{"retire": why}`` and exits; the ekt
  process re-sends what it had queued there.

Start-up, once per worker: import the preloads; create the scratch directory and (as
root) mount a size-capped tmpfs on it in a private mount namespace; build the Landlock
ruleset (read-only allow-list, read-write scratch); compile the seccomp filter in a
short-lived helper process (pyseccomp imports ``threading``, whose fork handler would
tax every child); set the rlimits every child shares, no_new_privs, drop every
capability; point fds 0 and 1 at /dev/null and ``sys.stdout``/``sys.stderr`` at the
output tail; ``gc.freeze()`` and ``malloc_trim``. Nothing that every child would do
alike is left for the children.

The ekt process may pin each worker to a CPU of its own (``SandboxConfig.pin_workers``;
its children inherit it): then a fork write-protects and flushes the pages of one
CPU only, and the child runs where the worker's pages are cached.

Per program the worker ``fork()``s. The child, before running one line of the
program: asks for SIGKILL when the worker dies, joins its own process group, sets
its CPU time limit (the others are inherited), enters the Landlock domain, points fd 2 at
/dev/null and closes every other fd except its result pipe, and loads the seccomp
filter (one prctl). Any failure in that setup exits the child with ``SETUP_FAILED``
before the program runs. Then it compiles and runs the program, reduces what
``solution()`` returned to a plain value by exact type checks, and writes one framed
result (six length-prefixed UTF-8 fields).

On this kind of machine a fork costs mostly page faults: every page the child (or the
worker, while the child lives) writes is copied first. Hence the lean child path,
the small worker (no json, typing, random or threading modules) and ``LD_BIND_NOW``.

The worker waits for the result with its own monotonic clock (``poll`` on the
result pipe), SIGKILLs the child's process group at the deadline or as soon as the
whole result is in, reaps it, kills and reaps any stray it adopted as a child
subreaper (only possible without seccomp), and empties the scratch directory. It
reads at most ``result_cap`` bytes and re-validates the child's fields, so a program
that forges or floods its result pipe only ever produces a plain, bounded record.
"""

from __future__ import annotations

import _json
import ctypes
import errno
import math
import os
import resource
import select
import signal
import struct
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs every worker 0.6 MB, which every fork copies
    from typing import Any

SETUP_FAILED = 121  # child exit code: confinement could not be applied, program not run
MAX_INT_BITS = 3322  # about 1000 decimal digits; larger ints are reported without a value
_INT_BOUND = 1 << MAX_INT_BITS  # |x| < this: x.bit_length() <= MAX_INT_BITS
MAX_INT_DIGITS = len(str(-(1 << MAX_INT_BITS)))  # the longest text of an int within bounds
MAX_STR_CHARS = 1000  # returned strings are cut to this many characters
MAX_ERROR_CHARS = 300
COMPILE_IN_WORKER_CHARS = 64 * 1024  # programs up to this size compile before the fork
MAX_TYPE_CHARS = 80

# prctl options and syscall numbers (Linux x86_64 / aarch64).
PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
SECCOMP_MODE_FILTER = 2
CLONE_THREAD = 0x00010000
CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 1 << 14, 1 << 18
_LANDLOCK_NR = {"landlock_create_ruleset": 444, "landlock_add_rule": 445,
                "landlock_restrict_self": 446}
_SYSCALLS = {
    "x86_64": {"capset": 126, **_LANDLOCK_NR},
    "aarch64": {"capset": 91, **_LANDLOCK_NR},
}
_NR = _SYSCALLS.get(os.uname().machine, {})
# ioctls that change a file's inode flags or project attributes (chattr): refused always
FS_IOC_SETFLAGS, FS_IOC32_SETFLAGS, FS_IOC_FSSETXATTR = 0x40086602, 0x40046602, 0x401C5820

# Landlock access rights (include/uapi/linux/landlock.h); the ABI that introduced each.
LL_FS_EXECUTE = 1 << 0
LL_FS_WRITE_FILE = 1 << 1
LL_FS_READ_FILE = 1 << 2
LL_FS_READ_DIR = 1 << 3
LL_FS_REMOVE_DIR = 1 << 4
LL_FS_REMOVE_FILE = 1 << 5
LL_FS_MAKE_CHAR = 1 << 6
LL_FS_MAKE_DIR = 1 << 7
LL_FS_MAKE_REG = 1 << 8
LL_FS_MAKE_SOCK = 1 << 9
LL_FS_MAKE_FIFO = 1 << 10
LL_FS_MAKE_BLOCK = 1 << 11
LL_FS_MAKE_SYM = 1 << 12
LL_FS_REFER = 1 << 13  # ABI 2
LL_FS_TRUNCATE = 1 << 14  # ABI 3
LL_FS_IOCTL_DEV = 1 << 15  # ABI 5
LL_FS_FILE_ONLY = LL_FS_EXECUTE | LL_FS_WRITE_FILE | LL_FS_READ_FILE | LL_FS_TRUNCATE | (
    LL_FS_IOCTL_DEV
)  # the rights a rule on a single (non-directory) file may carry
LL_READ = LL_FS_READ_FILE | LL_FS_READ_DIR
LL_SCRATCH = (
    LL_READ | LL_FS_WRITE_FILE | LL_FS_REMOVE_DIR | LL_FS_REMOVE_FILE | LL_FS_MAKE_DIR
    | LL_FS_MAKE_REG | LL_FS_MAKE_SYM | LL_FS_MAKE_FIFO | LL_FS_REFER | LL_FS_TRUNCATE
)
LL_NET_ALL_TCP = (1 << 0) | (1 << 1)  # bind, connect; ABI 4
LL_SCOPE_ALL = (1 << 0) | (1 << 1)  # abstract unix sockets, signals; ABI 6
LANDLOCK_RULE_PATH_BENEATH = 1
MAX_LANDLOCK_RULES = 4096  # refuse to punch holes into a read root that needs more rules

# What the interpreter may read besides its own prefixes and sys.path: shared libraries
# and the few system files Python and glibc open lazily. Directories are read
# recursively; nothing here holds task data or credentials.
SYSTEM_READ_ROOTS = (
    "/usr", "/lib", "/lib64", "/lib32", "/libx32",
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
    "/etc/timezone", "/sys/devices/system/cpu",
    "/dev/zero", "/dev/urandom", "/dev/random",
)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
# The calls made in every child, bound once, with no errno bookkeeping: each
# Python-level step in a child copies pages shared with the worker. Through PyDLL,
# which keeps the GIL (releasing and re-taking it writes to interpreter state a fresh
# child would copy: about 55 us at its first call), and without argtypes (their
# converters are more pages to touch): arguments are small non-negative ints, which
# libffi widens to the register size, or prebuilt ctypes pointers.
_fast = ctypes.PyDLL(None)
_prctl = _fast.prctl
_syscall2 = _fast.syscall


# -- probes (also used by ekt.sandbox.pool.detect_protections) -------------------------------


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
    "fanotify_init name_to_handle_at open_by_handle_at memfd_create memfd_secret "
    # file metadata, which Landlock does not cover: a uid-0 program owns most system
    # files and could otherwise chmod/chown/touch them through a read-only descriptor
    "chmod fchmod fchmodat fchmodat2 chown fchown fchownat lchown utime utimes utimensat "
    "futimesat setxattr lsetxattr fsetxattr removexattr lremovexattr fremovexattr "
    # openat2 passes its flags in memory the filter cannot read; glibc never needs it
    "openat2"
).split()
# Without a Landlock filesystem rule, seccomp refuses every filesystem change instead
# (the scratch directory is then read-only too).
_DENY_FS_WRITES = (
    "creat unlink unlinkat rmdir rename renameat renameat2 link linkat symlink symlinkat "
    "mkdir mkdirat mknod mknodat truncate ftruncate fallocate"
).split()
_OPEN_WRITE_FLAGS = (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC, os.O_APPEND)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class SeccompProgram:
    """A compiled BPF filter kept in the worker; ``install`` costs one prctl call.

    The kernel checks and JIT-compiles the filter on every install (about 0.2 ms);
    that is the one per-child cost of the filter that cannot be shared."""

    def __init__(self, bpf: bytes, blocks_fs_writes: bool):
        if not bpf or len(bpf) % 8:
            raise ValueError("bad BPF program")
        self.blocks_fs_writes = blocks_fs_writes
        self._buf = ctypes.create_string_buffer(bpf, len(bpf))
        self._prog = _SockFprog(len(bpf) // 8, ctypes.addressof(self._buf))
        self._addr = ctypes.c_void_p(ctypes.addressof(self._prog))

    def install(self) -> None:
        """Load the filter (the caller has set no_new_privs)."""
        if _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, self._addr, 0, 0):
            raise OSError("PR_SET_SECCOMP failed")


def build_seccomp(allow_tgkill: bool, block_fs_writes: bool) -> SeccompProgram | None:
    """Compile the filter with libseccomp once; None when unavailable.

    Denied calls fail with EPERM (so Python raises PermissionError) instead of
    killing the child: the program's error is then reported, not a crash.
    ``block_fs_writes`` adds a refusal of every filesystem change, for when Landlock
    cannot confine writes to the scratch directory.

    pyseccomp is imported in a short-lived helper process, not here: it pulls in
    ``threading``, whose fork handler would cost every child about 0.25 ms.
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(rfd)
            bpf = _compile_seccomp(allow_tgkill, block_fs_writes)
            if bpf:
                view = memoryview(bpf)
                while view:
                    view = view[os.write(wfd, view) :]
                code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    chunks = []
    while chunk := os.read(rfd, 65536):
        chunks.append(chunk)
    os.close(rfd)
    _, status = os.waitpid(pid, 0)
    if status != 0 or not chunks:
        return None
    return SeccompProgram(b"".join(chunks), block_fs_writes)


def _compile_seccomp(allow_tgkill: bool, block_fs_writes: bool) -> bytes | None:
    try:
        import pyseccomp as sc
    except Exception:  # noqa: BLE001
        return None
    try:
        deny = sc.ERRNO(errno.EPERM)
        f = sc.SyscallFilter(defaction=sc.ALLOW)
        f.set_attr(sc.Attr.CTL_OPTIMIZE, 2)  # binary tree: short path for every syscall
        names = list(_DENY)
        if block_fs_writes:
            names += _DENY_FS_WRITES
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
        if block_fs_writes:  # files can be opened for reading only
            for flag in _OPEN_WRITE_FLAGS:
                f.add_rule(deny, "openat", sc.Arg(2, sc.MASKED_EQ, flag, flag))
                try:
                    f.add_rule(deny, "open", sc.Arg(1, sc.MASKED_EQ, flag, flag))
                except Exception:  # noqa: BLE001 - no open(2) on aarch64
                    pass
        for req in (FS_IOC_SETFLAGS, FS_IOC32_SETFLAGS, FS_IOC_FSSETXATTR):
            f.add_rule(deny, "ioctl", sc.Arg(1, sc.EQ, req))
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
        return b"".join(chunks)
    except Exception:  # noqa: BLE001
        return None


# -- the filesystem rule ------------------------------------------------------------------


def _inside(path: str, root: str) -> bool:
    """``path`` is ``root`` or lies beneath it (both absolute and resolved)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def read_roots(extra: list[str], exclude: list[str]) -> list[str]:
    """What a program may read: the interpreter's prefixes, every existing ``sys.path``
    entry, the system libraries (:data:`SYSTEM_READ_ROOTS`) and ``extra``; resolved,
    de-duplicated, nested roots folded into their parent. Paths under ``exclude`` (the
    worker's own directory) are left out."""
    cands = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    cands += [p for p in sys.path if p]
    cands += list(SYSTEM_READ_ROOTS) + list(extra)
    resolved = []
    for p in cands:
        if not os.path.isabs(p) or not os.path.exists(p):
            continue
        r = os.path.realpath(p)
        if any(_inside(r, x) or _inside(x, r) for x in exclude):
            continue
        resolved.append(r)
    out: list[str] = []
    for r in sorted(set(resolved), key=lambda s: (s.count("/"), s)):
        if not any(_inside(r, o) for o in out):
            out.append(r)
    return sorted(out)


def plan_read_rules(
    roots: list[str], deny: list[str]
) -> tuple[list[tuple[str, int]], list[str]]:
    """Landlock read rules ``[(path, access)]`` for ``roots`` that leave the contents of
    every path in ``deny`` unreadable, and notes saying each hole punched or root dropped.

    Landlock only grants, so a denied path inside a read root is carved out: the root's
    other entries are granted one by one, down to the denied path. Its ancestors keep
    the right to be listed (the import system lists directories), which Landlock grants
    to a whole subtree: the names of files inside a carved-out path can be listed,
    their contents cannot be read.
    """
    rules: list[tuple[str, int]] = []
    notes: list[str] = []

    def grant(path: str, denied: list[str], budget: list[int]) -> None:
        inner = [d for d in denied if _inside(d, path)]
        if not inner:
            rules.append((path, LL_READ if os.path.isdir(path) else LL_FS_READ_FILE))
            budget[0] -= 1
            return
        if path in inner:
            return
        rules.append((path, LL_FS_READ_DIR))
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            return
        for e in entries:
            if budget[0] <= 0:
                raise OverflowError
            if e.is_symlink():  # Landlock judges a link's target where it lies
                continue
            if e.is_dir(follow_symlinks=False) or e.is_file(follow_symlinks=False):
                grant(e.path, inner, budget)

    for root in roots:
        hit = [d for d in deny if _inside(root, d)]
        if hit:
            notes.append(f"read root {root} lies inside unreadable path {hit[0]}: not granted")
            continue
        inner = [d for d in deny if _inside(d, root)]
        mark = len(rules)
        try:
            grant(root, deny, [MAX_LANDLOCK_RULES])
        except OverflowError:
            del rules[mark:]
            notes.append(
                f"read root {root} holds unreadable path(s) {', '.join(inner)} and is too "
                f"large to carve them out: not granted"
            )
            continue
        if inner:
            notes.append(
                f"read root {root} holds unreadable path(s) {', '.join(inner)}: granted "
                f"entry by entry around them ({len(rules) - mark} rules; the names in "
                f"them can be listed, their contents not read)"
            )
    return rules, notes


def _ll_rights(abi: int) -> int:
    fs = (1 << 13) - 1  # execute .. make_sym (ABI 1)
    if abi >= 2:
        fs |= LL_FS_REFER
    if abi >= 3:
        fs |= LL_FS_TRUNCATE
    if abi >= 5:
        fs |= LL_FS_IOCTL_DEV
    return fs


def _ll_add(ruleset: int, path: str, access: int, nofollow: bool = False) -> None:
    flags = os.O_PATH | os.O_CLOEXEC | (os.O_NOFOLLOW if nofollow else 0)
    fd = os.open(path, flags)
    try:
        attr = struct.pack("<Qi", access, fd)  # struct landlock_path_beneath_attr (packed)
        if _libc.syscall(
            _NR["landlock_add_rule"], ruleset, LANDLOCK_RULE_PATH_BENEATH, attr, 0
        ) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}")
    finally:
        os.close(fd)


def build_landlock(
    abi: int, rules: list[tuple[str, int]], scratch: str
) -> tuple[int, dict[str, bool]]:
    """A Landlock ruleset fd, or -1 when the kernel has no Landlock.

    Handled: every filesystem right of this ABI, TCP bind/connect (ABI >= 4) and
    signals/abstract sockets outside the domain (ABI >= 6). Granted: reading (not
    executing) the paths in ``rules``; reading and writing (creating, deleting,
    renaming inside) ``scratch``; reading and writing /dev/null. Nothing else.
    The child enters the ruleset with one landlock_restrict_self call.
    """
    off = {"landlock": False, "landlock_net": False, "landlock_signal_scope": False}
    if abi < 1:
        return -1, off
    fs = _ll_rights(abi)
    net = LL_NET_ALL_TCP if abi >= 4 else 0
    scoped = LL_SCOPE_ALL if abi >= 6 else 0
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    attr = ctypes.create_string_buffer(struct.pack("<QQQ", fs, net, scoped)[:size], size)
    fd = int(_libc.syscall(_NR["landlock_create_ruleset"], attr, ctypes.c_size_t(size), 0))
    if fd < 0:
        return -1, off
    try:
        for path, access in rules:
            _ll_add(fd, path, access, nofollow=True)
        _ll_add(fd, scratch, LL_SCRATCH & fs)
        _ll_add(fd, os.devnull, (LL_FS_READ_FILE | LL_FS_WRITE_FILE | LL_FS_TRUNCATE) & fs)
    except OSError:
        os.close(fd)
        return -1, off
    return fd, {"landlock": True, "landlock_net": bool(net), "landlock_signal_scope": bool(
        scoped
    )}


def mount_scratch(path: str, size_mb: int) -> bool:
    """Give this worker a private mount namespace with a size-capped tmpfs on ``path``.

    Needs CAP_SYS_ADMIN (a root ekt); False when it cannot be done. The tmpfs goes
    away with the worker's namespace, so nothing outlives the worker."""
    if size_mb <= 0:
        return False
    try:
        mount = _libc.mount
        mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                          ctypes.c_char_p]
        if _libc.unshare(CLONE_NEWNS) != 0:
            return False
        if mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            return False
        opts = f"size={size_mb}m,nr_inodes=4096,mode=0700".encode()
        return mount(b"ekt-scratch", os.fsencode(path), b"tmpfs",
                     MS_NOSUID | MS_NODEV | MS_NOEXEC, opts) == 0
    except Exception:  # noqa: BLE001
        return False


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


_CAP_HDR = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
_CAP_NONE = (ctypes.c_uint32 * 6)()


def _drop_capabilities() -> bool:
    nr = _NR.get("capset")
    if nr is None:
        return False
    return _libc.syscall(nr, ctypes.byref(_CAP_HDR), ctypes.byref(_CAP_NONE)) == 0


_NR_RESTRICT = _NR.get("landlock_restrict_self", -1)


def _landlock_restrict(ruleset_fd: int) -> None:
    if _syscall2(_NR_RESTRICT, ruleset_fd, 0) != 0:
        raise OSError("landlock_restrict_self failed")


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
    t = type(x)
    if t is bool:
        return x, "bool", ""
    if t is int:
        if x.bit_length() > MAX_INT_BITS:
            return None, "int", f"int too large ({x.bit_length()} bits)"
        return x, "int", ""
    if t is float:
        return _float_value(x), "float", ""
    fractions = sys.modules.get("fractions")  # a Fraction means the module is loaded
    decimal = sys.modules.get("decimal")
    if fractions is not None and t is fractions.Fraction:
        num, den = x.numerator, x.denominator
        if type(num) is not int or type(den) is not int:
            return None, "Fraction", "malformed Fraction"
        if max(num.bit_length(), den.bit_length()) > MAX_INT_BITS:
            return None, "Fraction", "Fraction too large"
        return [num, den], "Fraction", ""
    if decimal is not None and t is decimal.Decimal:
        try:
            return _float_value(float(x)), "Decimal", ""
        except (ValueError, OverflowError, decimal.DecimalException):
            return None, "Decimal", "Decimal not convertible to float"
    if t is str:
        return x[:MAX_STR_CHARS], "str", ""
    if x is None:
        return None, "NoneType", ""
    if not _NUMPY_TYPES and "numpy" in sys.modules:  # imported by the program itself
        _init_numpy_types()
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


def _confine(w: Worker, wfd: int) -> None:
    """Everything between fork and the program's first line. Raises on any failure.

    What can be set once is set in the worker and inherited (no_new_privs, dropped
    capabilities, most rlimits, the working directory, fds 0 and 1 on /dev/null); a
    child costs the few calls below. Every Python-level step here copies memory pages
    shared with the worker, so the path is kept short."""
    os.setpgid(0, 0)
    if w.confined:
        resource.setrlimit(resource.RLIMIT_CPU, w.cpu_limit)  # counts from 0 in each child
        if w.seccomp is None:  # root ignores it; for other users it also stops threads
            resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
        if w.landlock_fd >= 0:
            _landlock_restrict(w.landlock_fd)
    os.dup2(0, 2)  # /dev/null; then close every other fd (the ruleset's included)
    os.closerange(3, wfd)
    os.closerange(wfd + 1, 1 << 20)
    if w.seccomp is not None:
        w.seccomp.install()


_q = _json.encode_basestring_ascii  # JSON string literal (ASCII, surrogates escaped)
_MAX_HEAD = 64  # the child's header line: five decimal lengths and a newline
_LEN = struct.Struct("<I")  # the length prefix of a message between ekt and a worker
_POLL_MASK = select.POLLIN | select.POLLHUP | select.POLLERR
_SIGKILL = int(signal.SIGKILL)  # a plain int: an enum member would need converting


def _result_bytes(status: str, value: Any, tname: str, error: str, tail: str) -> bytes:
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
    else:  # [numerator, denominator]
        kind, text = "q", f"{value[0]}/{value[1]}"
    return (
        f"{len(status)} {len(text)} {len(tname)} {len(error)} {len(tail)}\n"
        f"{status}{kind}{text}{tname}{error}{tail}"
    ).encode("utf-8", "surrogatepass")


def _child(w: Worker, program: Any, wfd: int, mod: Any) -> None:
    """Runs in the forked child; never returns. ``program``: its text, or its code object
    when the worker compiled it before forking (see ``Worker.prepare``); ``mod``: the
    fresh ``__main__`` module it runs in, made by the worker too."""
    try:
        # Die with the worker; then make sure the worker did not die before that.
        _prctl(PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
        if os.getppid() != w.pid:
            os._exit(SETUP_FAILED)
        _confine(w, wfd)
    except BaseException:  # noqa: BLE001
        os._exit(SETUP_FAILED)
    try:
        tail = w.tail  # already sys.stdout and sys.stderr (set in the worker, inherited)
        try:
            code = program if type(program) is not str else compile(program, "<program>", "exec")
            sys.modules["__main__"] = mod
            ns = mod.__dict__
            del program
            exec(code, ns)
            fn = ns.get("solution")
            if fn is None:
                raise NameError("name 'solution' is not defined")
            result = fn()
            t = type(result)
            # An int or a finite float (most answers) is framed right here, as
            # _result_bytes would: each further call would cost the child page copies.
            # The output tail goes as kept (at most twice the cap); the ekt process cuts it.
            if t is int and -_INT_BOUND < result < _INT_BOUND:
                text, out = str(result), tail.buf
                data = f"2 {len(text)} 3 0 {len(out)}\noki{text}int{out}".encode(
                    "utf-8", "surrogatepass"
                )
            elif t is float and result - result == 0.0:
                text, out = repr(result), tail.buf
                data = f"2 {len(text)} 5 0 {len(out)}\nokf{text}float{out}".encode(
                    "utf-8", "surrogatepass"
                )
            else:
                value, tname, note = plain_value(result)
                data = _result_bytes("ok", value, tname, note, tail.tail())
        except BaseException as e:  # noqa: BLE001 - whatever the program raises is its error
            try:
                text = str(e)[:MAX_ERROR_CHARS]
            except BaseException:  # noqa: BLE001
                text = ""
            name = _type_name(type(e))
            data = _result_bytes("error", None, name, text or name, tail.tail())
        n = os.write(wfd, data)
        if n < len(data):  # more than the pipe holds: the worker is reading it
            view = memoryview(data)[n:]
            while view:
                view = view[os.write(wfd, view) :]
    except BaseException:  # noqa: BLE001
        pass
    os._exit(0)


# -- the worker ---------------------------------------------------------------------------


def _parse_result(raw: bytes, max_output: int) -> dict | None:
    """The child's message, re-validated into plain bounded fields; None if malformed.

    The child is untrusted: only lengths, UTF-8 and ``int``/``float`` parsing of
    bounded text are applied to what it sent."""
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


RAW_RESULT = b"\x01"  # worker -> ekt frame: this byte, the time in ms, the child's message
_MS = struct.Struct("<d")


def parse_raw_result(frame: bytes, max_output: int) -> dict:
    """A ``RAW_RESULT`` frame -> a result dict; the child's bytes validated like any result."""
    (ms,) = _MS.unpack_from(frame, 1)
    out = _parse_result(frame[1 + _MS.size :], max_output)
    if out is None:
        out = {"status": "killed", "value": None, "type": "", "stdout_tail": "",
               "error": "malformed result message"}
    out["ms"] = round(ms, 3)
    return out


def _dumps(x: Any) -> str:
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
        return "{" + ",".join(f"{_q(str(k))}:{_dumps(v)}" for k, v in x.items()) + "}"
    if t is list or t is tuple:
        return "[" + ",".join(_dumps(v) for v in x) + "]"
    raise TypeError(f"cannot encode {t.__name__}")


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
        self.retire = ""  # set when this worker must not run another program
        self.poller = select.poll()
        # One scratch directory per worker, emptied after every program: the Landlock
        # ruleset names it once, and no directory is created or removed per program.
        self.scratch = os.path.join(self.scratch_root, "scratch")
        os.makedirs(self.scratch, 0o700, exist_ok=True)
        os.environ["TMPDIR"] = os.environ["HOME"] = self.scratch  # tempfile & co land there
        if "tempfile" in sys.modules:
            sys.modules["tempfile"].tempdir = self.scratch
        with open("/proc/self/statm") as fh:
            vm = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        # The memory budget comes on top of what the warm interpreter already maps.
        as_bytes = vm + int(cfg["memory_mb"]) * 1024 * 1024
        self.as_limit = (as_bytes, as_bytes)
        self.cpu_limit = (self.cpu_seconds, self.cpu_seconds + 1)
        self.deny = sorted({os.path.realpath(p) for p in cfg.get("deny_read", []) if p})
        self.confined = confined = self.isolation != "none"
        self.protections: dict[str, bool] = {
            "process_group": True,
            "wall_clock_deadline": True,
            "fd_isolation": True,
            "scratch_dir": True,
            "scratch_quota": False,
            "rlimits": confined,
            "no_new_privs": confined,
            "capabilities_dropped": False,
            "seccomp": False,
            "landlock": False,
            "landlock_net": False,
            "landlock_signal_scope": False,
            "fs_read_allowlist": False,
            "fs_writes_only_in_scratch": False,
            "scratch_writable": not confined,
            "deny_read_verified": False,
        }
        self.fs: dict[str, Any] = {"scratch": self.scratch, "deny_read": self.deny,
                                   "read_roots": [], "notes": []}
        self.landlock_fd = -1
        self.seccomp: SeccompProgram | None = None
        if confined:
            if os.geteuid() == 0:
                self.protections["scratch_quota"] = mount_scratch(
                    self.scratch, int(cfg.get("scratch_mb", 0))
                )
            off = set(cfg.get("_disable", ()))  # tests of the fallbacks switch layers off
            roots = read_roots(list(cfg.get("allow_read", [])), [self.scratch_root])
            rules, notes = plan_read_rules(roots, self.deny)
            self.fs.update(read_roots=roots, notes=notes, rules=len(rules))
            abi = 0 if "landlock" in off else landlock_abi()
            self.landlock_fd, ll = build_landlock(abi, rules, self.scratch)
            self.protections.update(ll)
            fs_rule = ll["landlock"]
            if "seccomp" not in off:
                self.seccomp = build_seccomp(
                    allow_tgkill=ll["landlock_signal_scope"], block_fs_writes=not fs_rule
                )
            self.protections["seccomp"] = self.seccomp is not None
            self.protections["fs_read_allowlist"] = fs_rule
            self.protections["scratch_writable"] = fs_rule
            self.protections["fs_writes_only_in_scratch"] = fs_rule or self.seccomp is not None
        os.chdir(self.scratch)  # children inherit it (after the tmpfs mount, so they see it)
        # Printed output goes to a capped in-memory tail, installed here once: the worker
        # itself never prints (its diagnostics go to fd 2), children inherit it empty.
        self.tail = _Tail(self.max_output)
        sys.stdout = sys.stderr = self.tail  # type: ignore[assignment]
        sys.stdin = None  # type: ignore[assignment]
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        if confined:
            self._confine_self(int(cfg["fsize_bytes"]))

    def _confine_self(self, fsize: int) -> None:
        """What every child would set identically is set once here and inherited: the
        worker needs none of it (it never execs, writes files or dumps core)."""
        for res, lim in (
            # the address-space budget too: the worker stays far below it, and a child
            # starts from the worker's size, for which the budget was computed
            (resource.RLIMIT_AS, self.as_limit[0]),
            (resource.RLIMIT_FSIZE, fsize),
            (resource.RLIMIT_NOFILE, 64),
            (resource.RLIMIT_CORE, 0),
            (resource.RLIMIT_MEMLOCK, 0),
            (resource.RLIMIT_MSGQUEUE, 0),
        ):
            resource.setrlimit(res, (lim, lim))
        if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
        # A root worker drops every capability after mounting its scratch tmpfs: neither
        # it nor its children can raise a limit back or bypass file permissions.
        if (os.geteuid() == 0 or _has_caps()) and not _drop_capabilities():
            raise OSError(ctypes.get_errno(), "capset")
        self.protections["capabilities_dropped"] = not _has_caps()

    # -- start-up self-test ---------------------------------------------------------

    def _probe_program(self) -> str:
        """A program checking, from inside the confinement, the filesystem rule claimed."""
        p = self.protections
        checks: list[str] = []
        if p["scratch_writable"]:
            checks.append(
                "    try:\n"
                "        with open('probe.txt', 'w') as f:\n"
                "            f.write('x')\n"
                "        os.mkdir('d'); os.rename('probe.txt', 'd/p'); os.remove('d/p')\n"
                "        os.rmdir('d')\n"
                "    except OSError as e:\n"
                "        bad.append('scratch not writable: %s' % e)\n"
            )
        if p["fs_writes_only_in_scratch"]:
            outside = os.path.join(self.scratch_root, "probe-outside")
            checks.append(
                "    try:\n"
                f"        open({outside!r}, 'w').close()\n"
                f"        bad.append('wrote outside the scratch directory')\n"
                "    except OSError:\n"
                "        pass\n"
            )
        if p["fs_read_allowlist"]:
            for path in self._deny_samples():
                if os.path.isdir(path):
                    if any(_inside(path, r) for r in self.fs["read_roots"]):
                        continue  # carved out of a read root: listable, files unreadable
                    op = "os.listdir"
                else:
                    op = "open"
                checks.append(
                    "    try:\n"
                    f"        {op}({path!r})\n"
                    f"        bad.append({'read ' + path!r})\n"
                    "    except OSError:\n"
                    "        pass\n"
                )
        return (
            "import os\n\ndef solution():\n    bad = []\n" + "".join(checks)
            + "    return '; '.join(bad) or 41 + 1\n"
        )

    def _deny_samples(self) -> list[str]:
        """Each denied path that exists and a few files in it: what the probe tries."""
        out = []
        for d in self.deny:
            if not os.path.exists(d):
                continue
            out.append(d)
            if os.path.isdir(d):
                try:
                    with os.scandir(d) as it:
                        files = [e.path for e in it if e.is_file()]
                except OSError:
                    files = []
                out += sorted(files)[:3]
        return out

    def probe(self) -> str:
        """Run the self-test program through the full path; '' when it works."""
        res = self.run_one(self._probe_program())
        if type(res) is bytes:
            res = parse_raw_result(res, self.max_output)
        if res.get("status") != "ok" or res.get("value") != 42:
            why = res.get("value") if res.get("status") == "ok" else res.get("error", "")
            return f"probe program failed: {res.get('status')} {why}".strip()
        self.protections["deny_read_verified"] = self.protections["fs_read_allowlist"]
        return ""

    # -- one program ------------------------------------------------------------------

    def run_one(self, program: str) -> dict | bytes:
        """One program through a fresh child: a result dict, or (the common case) the
        child's raw result frame for the ekt process to validate (``parse_raw_result``)."""
        prepared = self.prepare(program)
        return prepared if type(prepared) is dict else self.run_prepared(*prepared)

    def prepare(self, program: str) -> dict | tuple[Any, float, Any]:
        """Compile a program before the fork: ``(code, ms spent, fresh __main__ module)``,
        or its result when it does not compile (then it needs no child at all).

        Compiling runs none of the program's code. Doing it in the worker spares each
        child the page copies the compiler's allocations would cost it, and compiling a
        whole batch between two forks (see :func:`main`) takes the worker's own page
        faults for that work once per batch instead of once per program. Texts longer
        than ``COMPILE_IN_WORKER_CHARS`` (rare, and possibly built to make the compiler
        work hard) are returned as text and compile in the child, under its limits."""
        t0 = time.monotonic()
        try:
            code = (
                compile(program, "<program>", "exec")
                if len(program) <= COMPILE_IN_WORKER_CHARS
                else program
            )
        except BaseException as e:  # noqa: BLE001 - SyntaxError, RecursionError, ...
            name = _type_name(type(e))
            try:
                text = str(e)[:MAX_ERROR_CHARS]
            except BaseException:  # noqa: BLE001
                text = ""
            return {"status": "error", "value": None, "type": name, "error": text or name,
                    "stdout_tail": "", "ms": round((time.monotonic() - t0) * 1000.0, 3)}
        mod = type(sys)("__main__")
        mod.__dict__["__builtins__"] = __builtins__
        return code, (time.monotonic() - t0) * 1000.0, mod

    def run_prepared(self, code: Any, compile_ms: float, mod: Any) -> dict | bytes:
        """Run a program :meth:`prepare` made ready, in a fresh child."""
        if self.tail.buf:  # a warning the worker printed must not reach a program
            self.tail.buf = ""
        t0 = time.monotonic() - compile_ms / 1000.0
        deadline = t0 + self.timeout
        # Everything the wait needs is made before the fork: what the worker writes while
        # the child lives costs a page copy, so it goes to sleep at once (the child, on
        # the same CPU, then runs) and does its bookkeeping after the child has ended.
        wait_ms = max(1, math.ceil((deadline - time.monotonic()) * 1000))
        poller = self.poller
        rfd, wfd = os.pipe()
        poller.register(rfd, _POLL_MASK)
        pid = os.fork()
        if pid == 0:
            os.close(rfd)
            _child(self, code, wfd, mod)
        os.close(wfd)
        ready = poller.poll(wait_ms)
        try:
            os.setpgid(pid, pid)  # the child did it first, unless it never got that far
        except OSError:
            pass
        # Wait with our own clock for EOF on the result pipe (the child wrote its result
        # and exited, or died, or closed the pipe), never for more than result_cap bytes:
        # under seccomp a result counts only from a child that ended before its
        # deadline.
        buf = b""
        timed_out = False
        while True:
            if not ready:
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                ready = poller.poll(max(1, math.ceil(left * 1000)))
                continue
            ready = []
            data = os.read(rfd, 65536)
            if not data:
                break
            buf += data
            if len(buf) > self.result_cap:
                break
            if self.seccomp is None and _parse_result(buf, 0) is not None:
                break  # without the filter a process the program made may hold the pipe
        ms = (time.monotonic() - t0) * 1000.0
        poller.unregister(rfd)
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        _, status = os.waitpid(pid, 0)
        os.close(rfd)
        if self.seccomp is None:  # with the filter no program can create a process
            self._reap_strays()
        self._empty_scratch()
        out: dict[str, Any] | None = None
        if timed_out:
            out = {"status": "timeout", "error": f"wall-clock deadline of {self.timeout:g}s"}
        elif len(buf) > self.result_cap:
            out = {"status": "killed", "error": "result message too large"}
        elif buf:
            # The child's own message goes to the ekt process as it came, which validates
            # it (parse_raw_result): parsing and re-encoding here would write to pages
            # this worker must then fault back in after every fork.
            return RAW_RESULT + _MS.pack(ms) + buf
        if out is None:
            if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
                why = "closed its result pipe without a result and was killed"
            else:
                why = _describe_exit(status)
            out = {"status": "killed", "error": why}
        out.setdefault("value", None)
        out.setdefault("type", "")
        out.setdefault("stdout_tail", "")
        out["ms"] = round(ms, 3)
        return out

    def _empty_scratch(self) -> None:
        """Remove what the program left in the scratch directory (usually nothing: one
        listdir). If something cannot be removed, the worker retires after this result."""
        names = os.listdir(self.scratch)
        if not names:
            return
        for name in names:
            _remove(os.path.join(self.scratch, name))
        if os.listdir(self.scratch):
            self.retire = "scratch directory could not be emptied"

    def _reap_strays(self) -> None:
        """Kill and reap processes that escaped the group and were re-parented to us.

        Only needed without the seccomp filter (then programs can create processes)."""
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


def _remove(path: str) -> None:
    """Delete a file or a whole tree, making directories writable first (the worker is
    not confined; a program may have left a directory without permissions)."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
            with os.scandir(path) as it:
                for e in list(it):
                    _remove(e.path)
            os.rmdir(path)
        else:
            os.unlink(path)
    except OSError:
        pass


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
        return f"exited with code {code} without a result"
    return f"ended without a result (status {status})"


def _read_exact(fd: int, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _read_frame(fd: int) -> bytes | None:
    """One length-prefixed message from the ekt process; None on EOF."""
    head = _read_exact(fd, 4)
    if head is None:
        return None
    (size,) = _LEN.unpack(head)
    return _read_exact(fd, size)


def _write_msg(fd: int, obj: dict) -> None:
    _write_frames(fd, [_dumps(obj).encode()])


def _write_frames(fd: int, frames: list[bytes]) -> None:
    """Length-prefixed messages, all in one write (none for an empty list)."""
    view = memoryview(b"".join([_LEN.pack(len(f)) + f for f in frames]))
    while view:
        view = view[os.write(fd, view) :]


BATCH = 8  # programs a worker compiles together before running them one by one
FLUSH_AFTER_S = 0.02  # results are sent at the end of a batch, or once this much has passed


class _Requests:
    """Length-prefixed programs from the ekt process, read in large chunks."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buf = bytearray()
        self.eof = False
        self.poller = select.poll()
        self.poller.register(fd, _POLL_MASK)

    def _fill(self, block: bool) -> None:
        if not block and not self.poller.poll(0):
            return
        data = os.read(self.fd, 1 << 16)
        if data:
            self.buf += data
        else:
            self.eof = True

    def _frames(self, n: int, out: list[bytes]) -> None:
        buf = self.buf
        while len(out) < n and len(buf) >= 4:
            (size,) = _LEN.unpack_from(buf)
            if len(buf) < 4 + size:
                return
            out.append(bytes(buf[4 : 4 + size]))
            del buf[: 4 + size]

    def take(self, n: int) -> list[bytes] | None:
        """1 to ``n`` programs: waits for the first, takes the others only if already
        sent; None at EOF."""
        out: list[bytes] = []
        while True:
            self._frames(n, out)
            if out:
                break
            if self.eof:
                return None
            self._fill(block=True)
        while len(out) < n and not self.eof:
            before = len(self.buf)
            self._fill(block=False)
            if len(self.buf) == before:
                break
            self._frames(n, out)
        return out


# Imported once per worker so that children start warm. Not here: ``random`` (and
# ``statistics``, ``tempfile``, which import it) and ``threading``: their fork handlers
# run in every child (reseeding, lock re-initialisation) and cost 0.1-0.25 ms each;
# a program that imports them pays a few ms instead. numpy makes every fork about
# 40% dearer (a larger address space to copy and tear down); add it when programs use it.
DEFAULT_PRELOAD = (
    "collections", "datetime", "decimal", "fractions", "functools", "itertools", "math",
    "operator", "re", "string",
)


def _preload(modules: list[str]) -> None:
    """Import once here what programs commonly use, so each forked child starts warm."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - not installed: programs import it themselves
            pass
    _init_numpy_types()


def main() -> None:
    """Serve the ekt process: a marshal-encoded config first (the ekt process is the
    only writer of this pipe), then one program per message (UTF-8, surrogates passed)."""
    sys.dont_write_bytecode = True
    # The protocol moves off fds 0 and 1, which become /dev/null for the children to
    # inherit; the worker's own diagnostics go to fd 2.
    rfd, wfd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    import marshal

    hello = _read_frame(rfd)
    if hello is None:
        return
    cfg = marshal.loads(hello)
    cpu = int(cfg.get("cpu", -1))
    if cpu >= 0:  # children inherit it; they cannot change it (seccomp)
        try:
            os.sched_setaffinity(0, (cpu,))
        except OSError:
            pass
    _preload([str(m) for m in cfg.get("preload", DEFAULT_PRELOAD)])
    worker = Worker(cfg)
    problem = worker.probe()
    import gc

    gc.collect()
    gc.freeze()  # keep the collector from touching (and copying) the warm heap in children
    try:  # return the start-up garbage to the OS: fewer pages for every fork to copy
        ctypes.CDLL(None).malloc_trim(0)
    except AttributeError:
        pass
    _write_msg(
        wfd,
        {"ready": not problem, "problem": problem, "protections": worker.protections,
         "fs": worker.fs, "pid": worker.pid},
    )
    if problem:
        return
    requests = _Requests(rfd)
    while not worker.retire:
        # Take what the ekt process has queued (up to BATCH), compile it all, then run
        # it program by program; results go back together, or as soon as a program ran
        # long, so the ekt process hears of slow work without delay.
        batch = requests.take(BATCH)
        if batch is None:
            return
        prepared: list[Any] = []
        for req in batch:
            try:
                program = req.decode("utf-8", "surrogatepass")
            except UnicodeDecodeError:
                prepared.append({"status": "error", "value": None, "type": "UnicodeDecodeError",
                                 "error": "program is not UTF-8", "stdout_tail": "", "ms": 0.0})
            else:
                prepared.append(worker.prepare(program))
        del batch
        out: list[bytes] = []
        since = time.monotonic()
        for item in prepared:
            res = item if type(item) is dict else worker.run_prepared(*item)
            out.append(res if type(res) is bytes else _dumps(res).encode())
            if worker.retire:
                break
            if time.monotonic() - since > FLUSH_AFTER_S:
                _write_frames(wfd, out)
                out = []
                since = time.monotonic()
        del prepared
        _write_frames(wfd, out)
    # Requests still queued in the pipe are not run: the ekt process re-sends them.
    _write_msg(wfd, {"retire": worker.retire})


if __name__ == "__main__":
    try:
        main()
    except BaseException:  # sys.stderr is the children's output tail: report on fd 2
        import traceback

        os.write(2, traceback.format_exc().encode("utf-8", "replace"))
        raise SystemExit(1) from None
