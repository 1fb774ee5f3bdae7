"""Confinement built once per sandbox worker: seccomp, Landlock, rlimit helpers, the
scratch mount, capabilities, the pids cgroup. See docs/sandbox.md for the whole design.

Imported by the worker (``ekt.sandbox.child``); the ekt process uses only the probes
(:func:`landlock_abi`, :func:`seccomp_supported`) and :func:`remove_tree`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import sys

# prctl options and syscall numbers (Linux x86_64 / aarch64).
PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
SECCOMP_MODE_FILTER = 2
CLONE_THREAD = 0x00010000
CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
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

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
# The calls made in every child, bound once, with no errno bookkeeping: each
# Python-level step in a child copies pages shared with the worker. Through PyDLL,
# which keeps the GIL (releasing and re-taking it writes to interpreter state a fresh
# child would copy: about 55 us at its first call), and without argtypes (their
# converters are more pages to touch): arguments are small non-negative ints, which
# libffi widens to the register size, or prebuilt ctypes pointers.
_fast = ctypes.PyDLL(None)
fast_prctl = _fast.prctl
_syscall2 = _fast.syscall



# -- probes (also used by ekt.sandbox.pool.detect_protections) -------------------------------


def landlock_abi() -> int:
    """Landlock ABI version the kernel offers (0: none)."""
    nr = _NR.get("landlock_create_ruleset")
    if nr is None:
        return 0
    try:
        v = libc.syscall(nr, None, ctypes.c_size_t(0), ctypes.c_uint32(1))  # VERSION flag
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
    # reading extended attributes or watching files: names and times of denied paths
    "getxattr lgetxattr fgetxattr listxattr llistxattr flistxattr getxattrat listxattrat "
    "setxattrat removexattrat inotify_init inotify_init1 inotify_add_watch "
    # System V IPC and POSIX message queues: channels between programs that outlive them
    "shmget shmat shmdt shmctl msgget msgsnd msgrcv msgctl semget semop semtimedop semctl "
    "mq_open mq_unlink mq_timedsend mq_timedreceive mq_notify mq_getsetattr "
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
        if fast_prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, self._addr, 0, 0):
            raise OSError("PR_SET_SECCOMP failed")


def build_seccomp(
    allow_tgkill: bool, block_fs_writes: bool, allow_threads: bool = True
) -> SeccompProgram | None:
    """Compile the filter with libseccomp once; None when unavailable.

    Denied calls fail with EPERM (so Python raises PermissionError) instead of
    killing the child: the program's error is then reported, not a crash.
    ``block_fs_writes`` adds a refusal of every filesystem change, for when Landlock
    cannot confine writes to the scratch directory; without ``allow_threads`` (no pids
    cgroup bounds a child's tasks) threads are refused too.

    pyseccomp is imported in a short-lived helper process, not here: it pulls in
    ``threading``, whose fork handler would cost every child about 0.25 ms.
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(rfd)
            bpf = _compile_seccomp(allow_tgkill, block_fs_writes, allow_threads)
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


def _compile_seccomp(
    allow_tgkill: bool, block_fs_writes: bool, allow_threads: bool
) -> bytes | None:
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
        if allow_threads:
            f.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
        else:
            f.add_rule(deny, "clone")
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


def inside(path: str, root: str) -> bool:
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
        if any(inside(r, x) or inside(x, r) for x in exclude):
            continue
        resolved.append(r)
    out: list[str] = []
    for r in sorted(set(resolved), key=lambda s: (s.count("/"), s)):
        if not any(inside(r, o) for o in out):
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
        inner = [d for d in denied if inside(d, path)]
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
        hit = [d for d in deny if inside(root, d)]
        if hit:
            notes.append(f"read root {root} lies inside unreadable path {hit[0]}: not granted")
            continue
        inner = [d for d in deny if inside(d, root)]
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
        if libc.syscall(
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
    fd = int(libc.syscall(_NR["landlock_create_ruleset"], attr, ctypes.c_size_t(size), 0))
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


def _write_file(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def private_namespaces(
    path: str, size_mb: int, files: int, ipc: bool, userns: bool, tmpfs: bool
) -> dict[str, bool]:
    """Give this worker private namespaces and a size-capped tmpfs on ``path``.

    A private mount namespace carries the tmpfs (``size_mb`` MB, ``files`` inodes: the
    scratch quota in bytes and files); a private IPC namespace (``ipc``) holds whatever
    System V object a program could make, and goes away with the worker. With
    CAP_SYS_ADMIN (a root ekt) both come directly; without it (a non-root user, or root
    without that capability) a user namespace that maps only this process's own uid
    and gid (``userns``) grants them, where the kernel allows unprivileged user
    namespaces. Everything is gone when the worker exits. Says what was obtained."""
    out = {"scratch_quota": False, "ipc_namespace": False, "user_namespace": False}
    want = CLONE_NEWNS | (CLONE_NEWIPC if ipc else 0)
    if not tmpfs:
        want &= ~CLONE_NEWNS
    if not want:
        return out
    try:
        if libc.unshare(want) != 0:
            if not userns:
                return out
            uid, gid = os.getuid(), os.getgid()
            if libc.unshare(want | CLONE_NEWUSER) != 0:
                return out
            _write_file("/proc/self/setgroups", "deny")
            _write_file("/proc/self/uid_map", f"{uid} {uid} 1")
            _write_file("/proc/self/gid_map", f"{gid} {gid} 1")
            out["user_namespace"] = True
        out["ipc_namespace"] = bool(want & CLONE_NEWIPC)
        if not want & CLONE_NEWNS or size_mb <= 0:
            return out
        mount = libc.mount
        mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                          ctypes.c_char_p]
        if mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            return out
        opts = f"size={size_mb}m,nr_inodes={max(files, 2)},mode=0700".encode()
        out["scratch_quota"] = mount(b"ekt-scratch", os.fsencode(path), b"tmpfs",
                                     MS_NOSUID | MS_NODEV | MS_NOEXEC, opts) == 0
    except Exception:  # noqa: BLE001
        pass
    return out


# -- a pids cgroup per worker -------------------------------------------------------------

CGROUP_ROOT = "/sys/fs/cgroup"


def _own_cgroup(controller: str) -> tuple[str, bool] | None:
    """(directory of this process's cgroup that carries ``controller``, is v2)."""
    try:
        with open("/proc/self/cgroup") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        hid, ctrls, rel = line.split(":", 2)
        if controller in ctrls.split(","):
            return os.path.join(CGROUP_ROOT, controller, rel.lstrip("/")), False
    for line in lines:
        hid, ctrls, rel = line.split(":", 2)
        if hid == "0" and not ctrls:
            base = CGROUP_ROOT if os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")) \
                else os.path.join(CGROUP_ROOT, "unified")
            d = os.path.join(base, rel.lstrip("/"))
            try:
                with open(os.path.join(d, "cgroup.subtree_control")) as fh:
                    if controller in fh.read().split():
                        return d, True
            except OSError:
                return None
    return None


def make_pids_cgroup(name: str, max_tasks: int) -> str:
    """Create a pids cgroup ``name`` below this process's own (v2 where the pids
    controller is delegated there, else the v1 pids hierarchy) with ``pids.max`` set;
    its path, or '' where cgroups are not writable. The ekt process makes it and
    removes it (:func:`remove_cgroup`); the worker moves itself in (:func:`join_cgroup`)."""
    found = _own_cgroup("pids")
    if found is None:
        return ""
    _remove_stale_cgroups(found[0])
    d = os.path.join(found[0], name)
    try:
        os.mkdir(d, 0o755)
    except OSError:
        return ""
    try:
        _write_file(os.path.join(d, "pids.max"), str(max_tasks))
    except OSError:
        os.rmdir(d)
        return ""
    return d


def _remove_stale_cgroups(parent: str) -> None:
    """Empty cgroups an ekt process that was killed left behind (its pid is gone)."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for n in names:
        parts = n.split("-")
        if len(parts) != 5 or parts[:2] != ["ekt", "sandbox"] or not parts[2].isdigit():
            continue
        if os.path.exists(f"/proc/{parts[2]}"):
            continue
        try:
            os.rmdir(os.path.join(parent, n))
        except OSError:
            pass


def tmpfs_supported() -> bool:
    """Whether a worker here could mount its scratch tmpfs (CAP_SYS_ADMIN, or an
    unprivileged user namespace): tried in a short-lived forked process."""
    pid = os.fork()
    if pid == 0:
        ok = libc.unshare(CLONE_NEWNS) == 0 or libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) == 0
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    return status == 0


def join_cgroup(path: str) -> bool:
    try:
        _write_file(os.path.join(path, "cgroup.procs"), str(os.getpid()))
    except OSError:
        return False
    return True


def remove_cgroup(path: str) -> None:
    """rmdir once its processes are gone (the kernel releases them just after reaping)."""
    import time

    for _ in range(100):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)


# -- System V IPC left in a worker's namespace --------------------------------------------


def clear_sysv_ipc() -> None:
    """Remove every System V object in this (the worker's private) IPC namespace. Only
    needed without the seccomp filter, which refuses them in the first place."""
    for kind, fn in (("shm", "shmctl"), ("msg", "msgctl"), ("sem", "semctl")):
        try:
            with open(f"/proc/sysvipc/{kind}") as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            parts = row.split()
            if len(parts) > 1 and parts[1].isdigit():
                getattr(libc, fn)(int(parts[1]), 0, 0)  # IPC_RMID (semnum 0 for semctl)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


_CAP_HDR = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
_CAP_NONE = (ctypes.c_uint32 * 6)()


def drop_capabilities() -> bool:
    nr = _NR.get("capset")
    if nr is None:
        return False
    return libc.syscall(nr, ctypes.byref(_CAP_HDR), ctypes.byref(_CAP_NONE)) == 0


_NR_RESTRICT = _NR.get("landlock_restrict_self", -1)


def landlock_restrict(ruleset_fd: int) -> None:
    if _syscall2(_NR_RESTRICT, ruleset_fd, 0) != 0:
        raise OSError("landlock_restrict_self failed")



def has_caps() -> bool:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16) != 0
    except (OSError, ValueError):
        pass
    return False
