"""Sandbox worker process: a warm interpreter that forks one confined child per program.

Started by :class:`ekt.sandbox.pool.Sandbox` as ``python -P -m ekt.sandbox.child``; the
design and the security spec are in ``docs/sandbox.md``. This module is the worker loop
(read one program exactly, fork, wait with its own clock, kill, reap, clean, answer) and
the child's path from fork to result. The confinement it builds once comes from
``ekt.sandbox.confine``, the message formats from ``ekt.sandbox.wire``.

On this kind of machine a fork costs mostly page faults: every page the child (or the
worker, while the child lives) writes is copied first. Hence the lean child path, the
small worker (no json, typing, random or threading modules) and ``LD_BIND_NOW``. The
worker holds one program at a time, never compiles it (the child does) and zeroes its
buffers after it: a child finds nothing of any other program in its memory.
"""

from __future__ import annotations

import ctypes
import math
import os
import resource
import select
import signal
import sys
import time

from ekt.sandbox.confine import (
    PR_SET_CHILD_SUBREAPER,
    PR_SET_NO_NEW_PRIVS,
    PR_SET_PDEATHSIG,
    SeccompProgram,
    build_landlock,
    build_seccomp,
    clear_sysv_ipc,
    drop_capabilities,
    fast_prctl,
    has_caps,
    inside,
    join_cgroup,
    landlock_abi,
    landlock_restrict,
    libc,
    plan_read_rules,
    private_namespaces,
    read_roots,
)
from ekt.sandbox.scratch import ScratchWatch, empty_dir
from ekt.sandbox.wire import (
    INT_BOUND,
    LEN,
    MAX_ERROR_CHARS,
    MS_FIELD,
    RAW_RESULT,
    dumps,
    init_numpy_types,
    parse_raw_result,
    parse_result,
    plain_value,
    read_frame,
    read_into,
    result_bytes,
    type_name,
    write_all,
    write_frames,
    write_msg,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs every worker 0.6 MB, which every fork copies
    from typing import Any

SETUP_FAILED = 121  # child exit code: confinement could not be applied, program not run
_FORK_RETRY_S = (0.01, 0.05, 0.2, 0.5, 1.0)  # pauses between fork attempts on EAGAIN
_WATCH_MS = 10  # scratch usage is checked this often while a child runs (no tmpfs only)
_ZEROS = bytes(1 << 16)

# -- the child ----------------------------------------------------------------------------


class _Tail:
    """sys.stdout/sys.stderr for the program: keeps only the last ``cap`` characters."""

    def __init__(self, cap: int):
        self.cap = max(0, cap)
        self.buf = ""

    def write(self, s: str) -> int:
        if type(s) is not str:
            raise TypeError(f"write() argument must be str, not {type_name(type(s))}")
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
            landlock_restrict(w.landlock_fd)
    os.dup2(0, 2)  # /dev/null; then close every other fd (the ruleset's included)
    os.closerange(3, wfd)
    os.closerange(wfd + 1, 1 << 20)
    if w.seccomp is not None:
        w.seccomp.install()


_POLL_MASK = select.POLLIN | select.POLLHUP | select.POLLERR
_SIGKILL = int(signal.SIGKILL)  # a plain int: an enum member would need converting

def _child(w: Worker, n: int, wfd: int, mod: Any) -> None:
    """Runs in the forked child; never returns. The program is the first ``n`` bytes of
    the worker's request buffer (UTF-8, surrogates passed), decoded and compiled here;
    ``mod``: the fresh ``__main__`` module it runs in, made by the worker."""
    try:
        # Die with the worker; then make sure the worker did not die before that.
        fast_prctl(PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
        if os.getppid() != w.pid:
            os._exit(SETUP_FAILED)
        _confine(w, wfd)
    except BaseException:  # noqa: BLE001
        os._exit(SETUP_FAILED)
    try:
        tail = w.tail  # already sys.stdout and sys.stderr (set in the worker, inherited)
        try:
            code = compile(str(memoryview(w.req)[:n], "utf-8", "surrogatepass"),
                           "<program>", "exec")
            sys.modules["__main__"] = mod
            ns = mod.__dict__
            exec(code, ns)
            fn = ns.get("solution")
            if fn is None:
                raise NameError("name 'solution' is not defined")
            result = fn()
            t = type(result)
            # An int or a finite float (most answers) is framed right here, as
            # result_bytes would: each further call would cost the child page copies.
            # The output tail goes as kept (at most twice the cap); the ekt process cuts it.
            if t is int and -INT_BOUND < result < INT_BOUND:
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
                data = result_bytes("ok", value, tname, note, tail.tail())
        except BaseException as e:  # noqa: BLE001 - whatever the program raises is its error
            try:
                text = str(e)[:MAX_ERROR_CHARS]
            except BaseException:  # noqa: BLE001
                text = ""
            name = type_name(type(e))
            data = result_bytes("error", None, name, text or name, tail.tail())
        n = os.write(wfd, data)
        if n < len(data):  # more than the pipe holds: the worker is reading it
            view = memoryview(data)[n:]
            while view:
                view = view[os.write(wfd, view) :]
    except BaseException:  # noqa: BLE001
        pass
    os._exit(0)


def _initial_protections(confined: bool) -> dict[str, bool]:
    """What a worker holds before building its layers (each layer then sets its own)."""
    return {
        "process_group": True,
        "wall_clock_deadline": True,
        "fd_isolation": True,
        "scratch_dir": True,
        "scratch_quota": False,
        "scratch_quota_watch": False,
        "tasks_cgroup": False,
        "tasks_limit": False,
        "threads_refused": False,
        "ipc_refused": False,
        "ipc_namespace": False,
        "user_namespace": False,
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


# -- the worker ---------------------------------------------------------------------------


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
        self.req = bytearray(1 << 16)  # the one program held (see hold, forget)
        self.res = bytearray(self.result_cap + 1)  # its child's result, read here
        self.ms = 0.0  # the last program's time
        self.watch: ScratchWatch | None = None  # the quota without a tmpfs
        self.retire = ""  # set when this worker must not run another program
        self.poller = select.poll()
        self.scratch = self._make_scratch()
        self.as_limit, self.cpu_limit = self._limits(int(cfg["memory_mb"]))
        self.deny = sorted({os.path.realpath(p) for p in cfg.get("deny_read", []) if p})
        self.confined = confined = self.isolation != "none"
        self.protections: dict[str, bool] = _initial_protections(confined)
        self.fs: dict[str, Any] = {"scratch": self.scratch, "deny_read": self.deny,
                                   "read_roots": [], "notes": []}
        self.landlock_fd = -1
        self.seccomp: SeccompProgram | None = None
        if confined:
            self._build_layers(cfg)
        os.chdir(self.scratch)  # children inherit it (after the tmpfs mount, so they see it)
        # Printed output goes to a capped in-memory tail, installed here once: the worker
        # itself never prints (its diagnostics go to fd 2), children inherit it empty.
        self.tail = _Tail(self.max_output)
        sys.stdout = sys.stderr = self.tail  # type: ignore[assignment]
        sys.stdin = None  # type: ignore[assignment]
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        if confined:
            self._confine_self(int(cfg["fsize_bytes"]))

    # -- start-up: the confinement ----------------------------------------------------

    def _make_scratch(self) -> str:
        """One scratch directory per worker, emptied after every program: the Landlock
        ruleset names it once, and no directory is created or removed per program."""
        scratch = os.path.join(self.scratch_root, "scratch")
        os.makedirs(scratch, 0o700, exist_ok=True)
        os.environ["TMPDIR"] = os.environ["HOME"] = scratch  # tempfile & co land there
        if "tempfile" in sys.modules:
            sys.modules["tempfile"].tempdir = scratch
        return scratch

    def _limits(self, memory_mb: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """The address-space and CPU-time limits (soft, hard) of every child."""
        with open("/proc/self/statm") as fh:
            vm = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        # The memory budget comes on top of what the warm interpreter already maps.
        as_bytes = vm + memory_mb * 1024 * 1024
        return (as_bytes, as_bytes), (self.cpu_seconds, self.cpu_seconds + 1)

    def _build_layers(self, cfg: dict) -> None:
        """The layers of a confined worker, in order: the pids cgroup (first: everything
        after counts), private namespaces, the Landlock filesystem rule, the seccomp
        filter. What each achieved is recorded in ``self.protections``."""
        off = set(cfg.get("disable", ()))  # layers switched off (SandboxConfig.disable)
        cgroup = str(cfg.get("cgroup", ""))
        tasks = bool(cgroup) and join_cgroup(cgroup)
        self.protections["tasks_cgroup"] = tasks
        self._namespaces(cfg, off)
        fs_rule = self._filesystem_rule(cfg, off)
        self._syscall_filter(off, tasks, fs_rule)

    def _namespaces(self, cfg: dict, off: set[str]) -> None:
        """Private IPC and user namespaces and the scratch tmpfs; without a tmpfs the
        worker watches the scratch usage instead."""
        ns = private_namespaces(
            self.scratch, int(cfg.get("scratch_mb", 0)), int(cfg.get("scratch_files", 0)),
            ipc="ipc_namespace" not in off, userns="user_namespace" not in off,
            tmpfs="tmpfs" not in off,
        )
        self.protections.update(ns)
        if not ns["scratch_quota"]:
            self.watch = ScratchWatch(self.scratch, int(cfg.get("scratch_mb", 0)) << 20,
                                      int(cfg.get("scratch_files", 0)))
        self.protections["scratch_quota_watch"] = self.watch is not None

    def _filesystem_rule(self, cfg: dict, off: set[str]) -> bool:
        """The Landlock ruleset (read roots less the denied paths, writes only in the
        scratch directory); whether it holds."""
        roots = read_roots(list(cfg.get("allow_read", [])), [self.scratch_root])
        rules, notes = plan_read_rules(roots, self.deny)
        self.fs.update(read_roots=roots, notes=notes, rules=len(rules))
        abi = 0 if "landlock" in off else landlock_abi()
        self.landlock_fd, ll = build_landlock(abi, rules, self.scratch)
        self.protections.update(ll)
        return ll["landlock"]

    def _syscall_filter(self, off: set[str], tasks: bool, fs_rule: bool) -> None:
        """The seccomp filter, and what it and the layers before it add up to."""
        if "seccomp" not in off:
            self.seccomp = build_seccomp(
                allow_tgkill=self.protections["landlock_signal_scope"],
                block_fs_writes=not fs_rule, allow_threads=tasks,
            )
        sc = self.seccomp is not None
        self.protections["seccomp"] = sc
        self.protections["ipc_refused"] = sc
        self.protections["threads_refused"] = sc and not tasks
        # Without the filter, RLIMIT_NPROC 0 stops a non-root child's tasks; root
        # (uid 0 is exempt from it) is then bounded only by the cgroup.
        self.protections["tasks_limit"] = tasks or sc or os.geteuid() != 0
        self.protections["fs_read_allowlist"] = fs_rule
        self.protections["scratch_writable"] = fs_rule
        self.protections["fs_writes_only_in_scratch"] = fs_rule or sc

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
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
        # A root worker drops every capability after mounting its scratch tmpfs: neither
        # it nor its children can raise a limit back or bypass file permissions.
        if (os.geteuid() == 0 or has_caps()) and not drop_capabilities():
            raise OSError(ctypes.get_errno(), "capset")
        self.protections["capabilities_dropped"] = not has_caps()

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
                    if any(inside(path, r) for r in self.fs["read_roots"]):
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

    def run_one(self, program: str) -> dict:
        """One program through a fresh child (the start-up probe): its result dict."""
        data = program.encode("utf-8", "surrogatepass")
        self.hold(len(data))[:] = data
        res = self.run_held(len(data))
        if type(res) is int:
            out = parse_raw_result(bytes(RAW_RESULT + MS_FIELD.pack(0.0)) + bytes(
                self.res[:res]), self.max_output)
            self.forget(len(data), res)
            return out
        self.forget(len(data), 0)
        return res

    def hold(self, n: int) -> memoryview:
        """The request buffer, at least ``n`` bytes, for the next program's text. The
        worker keeps one program's text at a time, only here, and zeroes it after the
        program (:meth:`forget`): a child finds no other program in its memory."""
        if len(self.req) < n:
            self.req[:] = bytes(len(self.req))
            self.req = bytearray(max(n, 2 * len(self.req)))
        return memoryview(self.req)[:n]

    def forget(self, n_req: int, n_res: int) -> None:
        """Zero what the last program left in the worker: its text and its result."""
        if n_req:
            self.req[:n_req] = _ZEROS[:n_req] if n_req <= len(_ZEROS) else bytes(n_req)
        if n_res:
            self.res[:n_res] = _ZEROS[:n_res] if n_res <= len(_ZEROS) else bytes(n_res)

    def _fork(self) -> int:
        """fork(), riding out EAGAIN (the pids limit or the machine's): -1 if it persists."""
        for pause in _FORK_RETRY_S:
            try:
                return os.fork()
            except BlockingIOError:
                time.sleep(pause)
        return -1

    def run_held(self, n: int) -> dict | int:
        """Run the program held in the request buffer (``n`` bytes) in a fresh child: a
        result dict when the worker decided the outcome, else (the common case) the
        length of the child's raw result, which lies in ``self.res`` for the ekt process
        to validate (``parse_raw_result``). The worker never decodes or compiles the
        program: the child does, so no code of it is left in the worker."""
        if self.tail.buf:  # a warning the worker printed must not reach a program
            self.tail.buf = ""
        t0 = time.monotonic()
        deadline = t0 + self.timeout
        pid, rfd, wait_ms = self._start_child(n, deadline)
        if pid < 0:
            return self._fork_failed(t0)
        got, timed_out, over_quota = self._wait_for_result(pid, rfd, wait_ms, deadline)
        ms = (time.monotonic() - t0) * 1000.0
        status = self._end_child(pid, rfd)
        if self.watch is not None and not over_quota:
            over_quota = self.watch.over()
        self._empty_scratch()
        self.ms = ms
        if got and not (over_quota or timed_out or got > self.result_cap):
            # The child's own message goes to the ekt process as it came, which validates
            # it (parse_raw_result): parsing and re-encoding here would write to pages
            # this worker must then fault back in after every fork.
            return got
        return self._decided(status, got, ms, timed_out, over_quota)

    def _start_child(self, n: int, deadline: float) -> tuple[int, int, int]:
        """Fork the child that runs the held program: its pid (-1 if fork failed), the
        read end of its result pipe (watched by the poller) and the first wait in ms.
        Everything the wait needs is made before the fork: what the worker writes while
        the child lives costs a page copy, so it goes to sleep at once (the child, on
        the same CPU, then runs) and does its bookkeeping after the child has ended."""
        mod = type(sys)("__main__")
        mod.__dict__["__builtins__"] = __builtins__
        wait_ms = max(1, math.ceil((deadline - time.monotonic()) * 1000))
        rfd, wfd = os.pipe()
        self.poller.register(rfd, _POLL_MASK)
        pid = self._fork()
        if pid == 0:
            os.close(rfd)
            _child(self, n, wfd, mod)
        os.close(wfd)
        if pid < 0:
            self.poller.unregister(rfd)
            os.close(rfd)
        return pid, rfd, wait_ms

    def _fork_failed(self, t0: float) -> dict:
        return {"status": "killed", "value": None, "type": "", "stdout_tail": "",
                "error": "could not start a child: fork failed with EAGAIN (too many "
                         "processes); program not run",
                "ms": round((time.monotonic() - t0) * 1000.0, 3)}

    def _wait_for_result(
        self, pid: int, rfd: int, wait_ms: int, deadline: float
    ) -> tuple[int, bool, str]:
        """Wait with our own clock for EOF on the result pipe (the child wrote its result
        and exited, or died, or closed the pipe), never for more than result_cap bytes:
        under seccomp a result counts only from a child that ended before its deadline.
        Returns the bytes read into ``self.res``, whether the deadline passed, and the
        scratch quota exceeded ('' if none)."""
        poller = self.poller
        ready = poller.poll(wait_ms if self.watch is None else min(wait_ms, _WATCH_MS))
        try:
            os.setpgid(pid, pid)  # the child did it first, unless it never got that far
        except OSError:
            pass
        got = 0
        res = memoryview(self.res)
        cap = self.result_cap
        while True:
            if not ready:
                left = deadline - time.monotonic()
                if left <= 0:
                    return got, True, ""
                if self.watch is not None:
                    over_quota = self.watch.over()
                    if over_quota:
                        return got, False, over_quota
                    ready = poller.poll(max(1, min(_WATCH_MS, math.ceil(left * 1000))))
                else:
                    ready = poller.poll(max(1, math.ceil(left * 1000)))
                continue
            ready = []
            k = os.readv(rfd, [res[got:]])
            if not k:
                break
            got += k
            if got > cap:
                break
            if self.seccomp is None and parse_result(bytes(res[:got]), 0) is not None:
                break  # without the filter a process the program made may hold the pipe
        return got, False, ""

    def _end_child(self, pid: int, rfd: int) -> int:
        """Kill the child's process group and reap the child: its wait status. Without
        the seccomp filter, also what the program may have created around it."""
        self.poller.unregister(rfd)
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        _, status = os.waitpid(pid, 0)
        os.close(rfd)
        if self.seccomp is None:  # with the filter no program can create a process
            self._reap_strays()  # nor any System V object
            clear_sysv_ipc()
        return status

    def _decided(
        self, status: int, got: int, ms: float, timed_out: bool, over_quota: str
    ) -> dict:
        """The result dict when the worker, not the child's message, decides the outcome."""
        if over_quota:
            out = {"status": "killed", "error": f"scratch quota exceeded ({over_quota})"}
        elif timed_out:
            out = {"status": "timeout", "error": f"wall-clock deadline of {self.timeout:g}s"}
        elif got > self.result_cap:
            out = {"status": "killed", "error": "result message too large"}
        elif os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            out = {"status": "killed",
                   "error": "closed its result pipe without a result and was killed"}
        else:
            out = {"status": "killed", "error": _describe_exit(status)}
        out.setdefault("value", None)
        out.setdefault("type", "")
        out.setdefault("stdout_tail", "")
        out["ms"] = round(ms, 3)
        if got:
            self.forget(0, min(got, len(self.res)))
        return out

    def _empty_scratch(self) -> None:
        """Remove what the program left in the scratch directory (usually nothing: one
        listdir). If something cannot be removed, the worker retires after this result."""
        try:
            if not os.listdir(self.scratch):
                return
        except OSError:
            pass
        if not empty_dir(self.scratch):
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
    init_numpy_types()


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

    hello = read_frame(rfd)
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
    write_msg(
        wfd,
        {"ready": not problem, "problem": problem, "protections": worker.protections,
         "fs": worker.fs, "pid": worker.pid},
    )
    if problem:
        return
    head = bytearray(4)
    while not worker.retire:
        # One program at a time, read exactly, run, answered at once: the worker never
        # holds a second program's text or a first program's result while it forks.
        if not read_into(rfd, memoryview(head)):
            return
        (size,) = LEN.unpack(head)
        if not read_into(rfd, worker.hold(size)):
            return
        res = worker.run_held(size)
        if type(res) is int:
            write_all(wfd, [LEN.pack(1 + MS_FIELD.size + res) + RAW_RESULT
                             + MS_FIELD.pack(worker.ms), memoryview(worker.res)[:res]])
            worker.forget(size, res)
        else:
            worker.forget(size, 0)
            write_frames(wfd, [dumps(res).encode()])
    # Requests still queued in the pipe are not run: the ekt process re-sends them.
    write_msg(wfd, {"retire": worker.retire})


if __name__ == "__main__":
    try:
        main()
    except BaseException:  # sys.stderr is the children's output tail: report on fd 2
        import traceback

        os.write(2, traceback.format_exc().encode("utf-8", "replace"))
        raise SystemExit(1) from None
