"""The ekt side of the sandbox: ``SandboxConfig`` and the worker pool ``Sandbox``.

Untrusted programs never run in the ekt process: warm workers (``ekt.sandbox.child``)
fork one confined child per program. ``Sandbox.run`` streams programs in and yields one
:class:`~ekt.records.Execution` per program in input order, keeping every worker busy
and replacing workers that die or hang. The design, the protections (what holds as
root and as a non-root user), the isolation levels and the wire format are specified
in ``docs/sandbox.md``.
"""

from __future__ import annotations

import itertools
import json
import marshal
import math
import os
import selectors
import signal
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from ekt.errors import EktError
from ekt.records import Execution
from ekt.sandbox.child import DEFAULT_PRELOAD
from ekt.sandbox.confine import make_pids_cgroup, remove_cgroup, remove_tree
from ekt.sandbox.wire import RAW_RESULT, parse_raw_result, valid_text

ISOLATION = ("strict", "standard", "none")
_STATUSES = ("ok", "error", "timeout", "killed")
_HANDSHAKE_TIMEOUT = 60.0  # seconds for a worker to import, build its filter and run a probe
_BACKSTOP = 10.0  # seconds past the deadline after which the ekt process kills a worker
# Programs queued per worker, in its request pipe (the worker reads one at a time, so
# what waits there is never in its memory): the next is there when one ends.
_DEPTH = 16
_QUEUE_BEHIND_S = 0.05  # ... but none is queued behind a program running longer than this,
# nor so many that, at the worker's recent time per program, the last would wait longer.
# The estimate starts pessimistic, so a new pool hands out its first programs a few at a
# time until it has seen how long they take: a worker holding a batch of slow programs
# cannot hand them to an idle one.
_FIRST_MS_ESTIMATE = 25.0
_NAP_S = 0.002  # the ekt process's nap between collections while workers have queued work
# Layers SandboxConfig.disable may switch off, to run (and test) the fallbacks.
LAYERS = ("landlock", "seccomp", "tmpfs", "user_namespace", "ipc_namespace", "cgroup")
_SERIAL = itertools.count()
_DOWN_LIMIT_S = 60.0  # a run stops when no worker could start for this long
_START_RETRY_S = (0.05, 0.2, 0.5, 1.0, 2.0, 4.0)  # pauses between tries to start a worker
_WHY_MISSING = {
    "scratch_quota": "no scratch quota can be enforced: the worker could mount no tmpfs, "
    "neither with CAP_SYS_ADMIN nor in an unprivileged user namespace (kernel setting "
    "user.max_user_namespaces or a security module forbids it); 'standard' watches the "
    "usage instead",
    "tasks_limit": "no pids cgroup and no seccomp filter bound a program's tasks",
}
_FALLBACK_FOR = {"scratch_quota_watch": "scratch_quota", "threads_refused": "tasks_cgroup"}
# What 'strict' insists on, as reported by every worker after its self-test.
STRICT_NEEDS = (
    "rlimits", "no_new_privs", "seccomp", "landlock", "fs_read_allowlist",
    "fs_writes_only_in_scratch", "deny_read_verified", "scratch_quota", "tasks_limit",
    "ipc_refused",
)


@dataclass
class SandboxConfig:
    workers: int | None = None  # default: os.cpu_count()
    timeout: float = 5.0  # wall-clock seconds per program, enforced by the worker
    memory_mb: int = 1024  # address space a program may add to the warm interpreter's
    cpu_seconds: int | None = None  # default: ceil(timeout) + 1
    max_output_bytes: int = 4096  # printed output kept (the last this many characters)
    isolation: str = "standard"  # strict | standard | none
    recycle_after: int = 5000  # a worker is replaced after this many programs
    fsize_bytes: int = 1 << 20  # RLIMIT_FSIZE: the largest file a program may write
    # The scratch quota: bytes (MB) and files (directories included) a program may leave
    # in its scratch directory. A tmpfs of this size where the worker can mount one (root,
    # or a user namespace), else the worker watches the usage (see docs/sandbox.md).
    scratch_mb: int = 64
    scratch_files: int = 4096
    # Tasks (processes and threads) a worker and its child may hold together, enforced
    # by a pids cgroup per worker where cgroups are writable; elsewhere threads are
    # refused outright by the seccomp filter.
    max_tasks: int = 64
    # Protection layers to switch off (any of LAYERS), to run the fallbacks (tests) or
    # to work around a machine where one misbehaves; 'strict' still insists on its list.
    disable: list[str] = field(default_factory=list)
    # Paths programs must never read. None: the task data ($EKT_DATA_DIR) and the HF
    # datasets cache; verify/evaluate add the --data-dir they load gold answers from.
    deny_read: list[str] | None = None
    allow_read: list[str] = field(default_factory=list)  # extra read-only paths
    # Modules each worker imports once (None: ekt.sandbox.child.DEFAULT_PRELOAD). Every
    # module makes each fork dearer; one a program imports itself costs it a few ms.
    preload: list[str] | None = None
    # Pin worker i (and so every child it forks) to the i-th CPU this process may use,
    # when the pool has exactly one worker per such CPU (the default size). A fork then
    # flushes the TLB of one CPU instead of interrupting the others, and the child runs
    # where its pages are cached: about a quarter less CPU per program on a 2-core VM
    # (benchmarks/sandbox_throughput.py). A smaller pool is not pinned: other pools
    # (Ray actors, other ekt processes) may share the machine. Off: the scheduler places.
    pin_workers: bool = True

    def validate(self) -> None:
        if self.isolation not in ISOLATION:
            raise EktError(
                f"sandbox isolation must be one of {', '.join(ISOLATION)}, "
                f"got {self.isolation!r}"
            )
        if not (isinstance(self.timeout, int | float) and self.timeout > 0):
            raise EktError(f"sandbox timeout must be > 0 seconds, got {self.timeout!r}")
        if self.workers is not None and self.workers < 1:
            raise EktError(f"sandbox workers must be >= 1, got {self.workers}")
        if self.memory_mb < 16:
            raise EktError(f"sandbox memory_mb must be >= 16, got {self.memory_mb}")
        if self.cpu_seconds is not None and self.cpu_seconds < 1:
            raise EktError(f"sandbox cpu_seconds must be >= 1, got {self.cpu_seconds}")
        if self.max_output_bytes < 0:
            raise EktError(f"sandbox max_output_bytes must be >= 0, got {self.max_output_bytes}")
        if self.recycle_after < 1:
            raise EktError(f"sandbox recycle_after must be >= 1, got {self.recycle_after}")
        if self.scratch_mb < 1:
            raise EktError(f"sandbox scratch_mb must be >= 1, got {self.scratch_mb}")
        if self.scratch_files < 16:
            raise EktError(f"sandbox scratch_files must be >= 16, got {self.scratch_files}")
        if self.max_tasks < 8:
            raise EktError(f"sandbox max_tasks must be >= 8, got {self.max_tasks}")
        bad = [x for x in self.disable if x not in LAYERS] if isinstance(
            self.disable, list | tuple) else [self.disable]
        if bad:
            raise EktError(
                f"sandbox disable takes a list of {', '.join(LAYERS)}; got {bad!r}"
            )
        for name in ("deny_read", "allow_read", "preload"):
            paths = getattr(self, name) or []
            if isinstance(paths, str) or not all(isinstance(p, str) for p in paths):
                raise EktError(f"sandbox {name} must be a list of paths, got {paths!r}")


def default_deny_read() -> list[str]:
    """Where gold answers live by default: $EKT_DATA_DIR and every Hugging Face cache
    (all of $HF_HOME: datasets keeps hub downloads under hub/, not only datasets/)."""
    env = os.environ
    home = os.path.expanduser("~")
    xdg = env.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    out = [env.get("EKT_DATA_DIR", ""), env.get("HF_HOME", ""),
           os.path.join(xdg, "huggingface"), os.path.join(home, ".cache", "huggingface")]
    out += [env.get(k, "") for k in ("HF_DATASETS_CACHE", "HF_HUB_CACHE",
                                     "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE")]
    return [p for p in dict.fromkeys(out) if p]


def run_deny_read(*paths: str | os.PathLike) -> list[str]:
    """What of a run programs must not read: the folder of each file a stage reads or
    writes (samples, other programs, results), or the file alone where that folder
    also holds the interpreter or a ``sys.path`` entry (denying it would deny Python)."""
    keep = [os.path.realpath(p) for p in
            (sys.prefix, sys.base_prefix, *[x for x in sys.path if x], os.path.expanduser("~"))]
    out: list[str] = []
    for p in paths:
        f = os.path.realpath(os.fspath(p))
        d = os.path.dirname(f)
        holds = d == "/" or any(k == d or k.startswith(d.rstrip("/") + "/") for k in keep)
        out.append(f if holds else d)
    return list(dict.fromkeys(out))


def detect_protections() -> dict[str, bool]:
    """What this machine supports (a Sandbox reports what it uses: Sandbox.protections)."""
    from ekt.sandbox import confine as child

    linux = sys.platform.startswith("linux")
    abi = child.landlock_abi() if linux else 0
    return {
        "fork_per_program": hasattr(os, "fork"),
        "process_group": linux,
        "rlimits": linux,
        "seccomp": linux and child.seccomp_supported(),
        "scratch_tmpfs": linux and child.tmpfs_supported(),  # root, or a user namespace
        "landlock": abi >= 1,  # the filesystem rule: read allow-list, writes in scratch only
        "landlock_net": abi >= 4,
        "landlock_signal_scope": abi >= 6,
    }


def _worker_env() -> dict[str, str]:
    """A minimal environment: programs see no tokens or credentials of the ekt process."""
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": src,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "LANG": "C.UTF-8",
        # Resolve every shared-library symbol once in the worker: lazily bound ones would
        # be resolved again (and their pages copied) in every forked child.
        "LD_BIND_NOW": "1",
        "TMPDIR": tempfile.gettempdir(),
    }
    return env


class _Worker:
    """The ekt side of one worker process: its pipes, read buffer and queue of programs."""

    def __init__(self, slot: int, wire: dict):
        self.slot = slot
        self.scratch_root = tempfile.mkdtemp(prefix=f"ekt-sandbox-{slot}-")
        self.cgroup = ""
        if wire["isolation"] != "none" and "cgroup" not in wire["disable"]:
            self.cgroup = make_pids_cgroup(
                f"ekt-sandbox-{os.getpid()}-{slot}-{next(_SERIAL)}", int(wire["max_tasks"])
            )
        r_req, self.req_fd = os.pipe()
        self.resp_fd, w_resp = os.pipe()
        try:
            for pause in (*_START_RETRY_S, None):
                try:
                    self.proc = subprocess.Popen(
                        [sys.executable, "-P", "-m", "ekt.sandbox.child"],
                        stdin=r_req,
                        stdout=w_resp,
                        stderr=None,
                        close_fds=True,
                        start_new_session=True,
                        env=_worker_env(),
                        cwd=self.scratch_root,
                    )
                    break
                except BlockingIOError:  # EAGAIN: too many processes for now
                    if pause is None:
                        raise
                    time.sleep(pause)
        except BaseException:
            os.close(self.req_fd)
            os.close(self.resp_fd)
            remove_tree(self.scratch_root)
            if self.cgroup:
                remove_cgroup(self.cgroup)
            raise
        finally:
            os.close(r_req)
            os.close(w_resp)
        os.set_blocking(self.resp_fd, False)
        self.buf = bytearray()
        self.ready = False
        self.protections: dict[str, bool] = {}
        self.fs: dict[str, Any] = {}
        self.problem = ""
        self.queue: deque[int] = deque()  # input indices sent and not yet answered
        self.head_since = 0.0  # when the program at the head of the queue started
        self.done = 0
        self.ms_avg = _FIRST_MS_ESTIMATE  # moving average of its programs' times (ms)
        self.sent = 0
        self.closed = False
        self.max_output = int(wire["max_output_bytes"])
        # The config is marshal-encoded (the worker then needs no json module); programs
        # follow as UTF-8 text, one length-prefixed message each.
        self.send(marshal.dumps({**wire, "scratch_root": self.scratch_root,
                                 "cgroup": self.cgroup}))

    def send(self, data: bytes) -> None:
        self.send_many([data])

    def send_many(self, messages: list[bytes]) -> None:
        """Length-prefixed messages in one write (blocking until all are in the pipe)."""
        view = memoryview(b"".join([struct.pack("<I", len(m)) + m for m in messages]))
        while view:
            view = view[os.write(self.req_fd, view) :]

    def read(self) -> list[dict] | None:
        """Messages available now; None on EOF (the worker is gone)."""
        eof = False
        while True:
            try:
                chunk = os.read(self.resp_fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError:
                eof = True
                break
            if not chunk:
                eof = True
                break
            self.buf += chunk
        out = []
        while len(self.buf) >= 4:
            (size,) = struct.unpack_from("<I", self.buf)
            if len(self.buf) < 4 + size:
                break
            body = bytes(self.buf[4 : 4 + size])
            del self.buf[: 4 + size]
            try:
                if body[:1] == RAW_RESULT:  # the child's result frame, validated here
                    obj = parse_raw_result(body, self.max_output)
                else:
                    obj = json.loads(body)
            except (ValueError, struct.error):
                obj = None
            out.append(obj if isinstance(obj, dict) else {"status": "killed", "error": "garbled"})
        if eof and not out:
            return None
        return out

    def close_requests(self) -> None:
        """EOF on the worker's stdin: it finishes its program and exits."""
        if self.req_fd >= 0:
            try:
                os.close(self.req_fd)
            except OSError:
                pass
            self.req_fd = -1

    def stop(self, grace: float = 2.0) -> None:
        """Ask the worker to exit, then make sure it is gone."""
        self.close_requests()
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def kill(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_requests()
        try:
            os.close(self.resp_fd)
        except OSError:
            pass
        self.resp_fd = -1
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its session: the worker itself
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        remove_tree(self.scratch_root)
        if self.cgroup:
            remove_cgroup(self.cgroup)


def _execution(msg: dict, max_output: int) -> Execution:
    status = msg.get("status")
    if status not in _STATUSES:
        return Execution("killed", None, "", "", 0.0, "sandbox worker sent a malformed result")
    value = msg.get("value")
    if not (value is None or type(value) in (int, float, str, bool, list)):
        value = None
    if type(value) is str:
        value = valid_text(value)
    ms = msg.get("ms", 0.0)
    return Execution(
        status=status,
        value=value,
        type=valid_text(str(msg.get("type", ""))[:80]),
        stdout_tail=valid_text(str(msg.get("stdout_tail", ""))[-max_output:])
        if max_output else "",
        ms=float(ms) if type(ms) in (int, float) else 0.0,
        error=valid_text(str(msg.get("error", ""))[:300]),
    )


def _died(error: str) -> Execution:
    return Execution("killed", None, "", "", 0.0, error)


class Sandbox:
    """A pool of warm workers; ``run`` streams Executions in input order.

    Use as a context manager (or call :meth:`close`): on exit every process the
    sandbox started is gone and its pipes are closed.
    """

    def __init__(self, config: SandboxConfig | None = None, **overrides: Any):
        cfg = config or SandboxConfig()
        if overrides:
            cfg = SandboxConfig(**{**asdict(cfg), **overrides})
        cfg.validate()
        if not hasattr(os, "fork") or not sys.platform.startswith("linux"):
            raise EktError("the sandbox needs Linux (fork, process groups, rlimits)")
        self.config = cfg
        self.n_workers = cfg.workers or os.cpu_count() or 1
        support = detect_protections()
        if cfg.isolation == "strict":
            lacking = [k for k in ("seccomp", "landlock") if not support[k]]
            if lacking:
                raise EktError(
                    "sandbox isolation 'strict' needs a seccomp syscall filter and Landlock (the "
                    "filesystem rule: no reads outside the interpreter and system libraries, "
                    "writes only in the scratch directory); unavailable here: "
                    + ", ".join(lacking) + ". Seccomp needs libseccomp2 and the pyseccomp "
                    "package, Landlock a Linux kernel >= 5.13 with it enabled. Or use "
                    "isolation 'standard'"
                )
        if cfg.isolation == "none":
            warnings.warn(
                "SANDBOX ISOLATION IS OFF (isolation='none'): untrusted programs run without "
                "resource limits, syscall filter or filesystem rule; they can read the task "
                "data and write anywhere. Use this only to benchmark.",
                RuntimeWarning,
                stacklevel=2,
            )
        deny = default_deny_read() if cfg.deny_read is None else list(cfg.deny_read)
        self.deny_read = sorted({os.path.realpath(os.path.expanduser(p)) for p in deny if p})
        self._wire = {
            "timeout": float(cfg.timeout),
            "memory_mb": int(cfg.memory_mb),
            "cpu_seconds": int(cfg.cpu_seconds or math.ceil(cfg.timeout) + 1),
            "max_output_bytes": int(cfg.max_output_bytes),
            "fsize_bytes": int(cfg.fsize_bytes),
            "isolation": cfg.isolation,
            "scratch_mb": int(cfg.scratch_mb),
            "deny_read": self.deny_read,
            "allow_read": [os.path.abspath(os.path.expanduser(p)) for p in cfg.allow_read],
            "preload": list(DEFAULT_PRELOAD if cfg.preload is None else cfg.preload),
            "scratch_files": int(cfg.scratch_files),
            "disable": list(cfg.disable),
            "max_tasks": int(cfg.max_tasks),
        }
        self._warned = False
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        pin = cfg.pin_workers and len(cpus) == self.n_workers
        self._cpus = cpus if pin else []
        self._workers: list[_Worker | None] = [None] * self.n_workers
        self._protections: dict[str, bool] = {}
        self.fs: dict[str, Any] = {}  # the filesystem rule as the first worker reported it
        self._closed = False
        self._retry_at: dict[int, float] = {}  # empty slots: when to try to start again
        self._down_since: dict[int, float] = {}
        self._last_start_error = ""
        self._started = False
        try:
            self._start([*range(self.n_workers)])
            self._started = True
        except BaseException:
            self.close()
            raise

    # -- pool management ----------------------------------------------------------------

    def _start(self, slots: list[int]) -> None:
        """Start workers in the given slots concurrently and wait for their handshakes."""
        fresh = []
        for s in slots:
            w = _Worker(s, {**self._wire, "cpu": self._cpus[s] if self._cpus else -1})
            self._workers[s] = w
            fresh.append(w)
        deadline = time.monotonic() + _HANDSHAKE_TIMEOUT
        with selectors.DefaultSelector() as sel:
            for w in fresh:
                sel.register(w.resp_fd, selectors.EVENT_READ, w)
            waiting = len(fresh)
            while waiting:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EktError("sandbox worker did not start in time")
                for key, _ in sel.select(timeout=left):
                    w = key.data
                    msgs = w.read()
                    if msgs is None:
                        raise EktError("sandbox worker exited during start-up (see stderr)")
                    if not msgs:
                        continue
                    sel.unregister(w.resp_fd)
                    waiting -= 1
                    self._handshake(w, msgs[0])

    def _handshake(self, w: _Worker, hello: dict) -> None:
        if not hello.get("ready"):
            raise EktError(f"sandbox worker failed its self-test: {hello.get('problem', '?')}")
        prot = hello.get("protections")
        fs = hello.get("fs")
        if not isinstance(prot, dict) or not isinstance(fs, dict):
            raise EktError("sandbox worker sent a malformed handshake")
        w.protections = {str(k): bool(v) for k, v in prot.items()}
        w.fs = fs
        w.ready = True
        if self.config.isolation == "strict":
            missing = [k for k in STRICT_NEEDS if not prot.get(k)]
            if missing:
                raise EktError(
                    "sandbox isolation 'strict' could not be met; missing: " + ", ".join(missing)
                    + "".join(f" ({_WHY_MISSING[k]})" for k in missing if k in _WHY_MISSING)
                )
        if self._started:  # a replacement must hold everything the pool promised
            weaker = [k for k, v in self._protections.items() if v and not prot.get(k)]
            if weaker:
                raise EktError("a replacement sandbox worker came up without "
                               + ", ".join(weaker) + " (will try again)")
            return
        if not self._protections:
            self._protections = dict(w.protections)
            self.fs = dict(fs)
        else:  # report only what every worker has
            for k, v in w.protections.items():
                self._protections[k] = self._protections.get(k, False) and v
        if not self._warned:
            self._warned = True
            self._warn_weaker(fs)

    def _warn_weaker(self, fs: dict) -> None:
        """Say loudly, once, what of the filesystem rule this machine cannot guarantee."""
        if self.config.isolation == "none":
            return
        p = self._protections
        lines = [f"sandbox: {n}" for n in fs.get("notes", [])]
        if not p.get("fs_read_allowlist"):
            lines.append(
                "sandbox: Landlock is unavailable, so programs can READ any file the ekt user "
                "can (including " + (", ".join(self.deny_read) or "the task data") + ")"
                + ("; writes are refused everywhere by seccomp, the scratch directory included"
                   if p.get("fs_writes_only_in_scratch") else "; and WRITE anywhere too")
            )
        if not p.get("seccomp"):
            lines.append(
                "sandbox: seccomp is unavailable: programs can create processes and open "
                "sockets (process-group kill, rlimits"
                + (", Landlock" if p.get("landlock") else "") + " remain)"
            )
        if not p.get("scratch_quota"):
            lines.append(
                "sandbox: no scratch tmpfs could be mounted (no CAP_SYS_ADMIN and no "
                "unprivileged user namespace): the worker watches the scratch usage instead, "
                "which bounds it only to the quota plus what a program writes in 10 ms"
            )
        if not p.get("tasks_limit"):
            lines.append("sandbox: nothing bounds the tasks a program creates (no pids cgroup, "
                         "no seccomp, running as root)")
        if lines:
            warnings.warn("\n".join(lines), RuntimeWarning, stacklevel=4)

    def _restart(self, w: _Worker, graceful: bool) -> None:
        if graceful:
            w.stop()
        else:
            w.kill()
        self._workers[w.slot] = None
        if not self._closed:
            self._try_start(w.slot)

    def _try_start(self, slot: int) -> None:
        """Start a worker in an empty slot during a run; if the machine cannot start one
        now (EAGAIN near a pid limit, a failed self-test), the slot stays empty and is
        tried again later, while the other workers go on. Only when no worker at all
        could be started for ``_DOWN_LIMIT_S`` does the run stop, with an EktError."""
        now = time.monotonic()
        if now < self._retry_at.get(slot, 0.0):
            return
        try:
            self._start([slot])
        except (OSError, EktError) as e:
            w = self._workers[slot]
            if w is not None:
                w.kill()
                self._workers[slot] = None
            self._retry_at[slot] = now + 0.5
            self._down_since.setdefault(slot, now)
            self._last_start_error = str(e)
            if all(x is None for x in self._workers) and now - min(
                self._down_since.values()
            ) > _DOWN_LIMIT_S:
                raise EktError(
                    f"no sandbox worker could be started for {_DOWN_LIMIT_S:g} s: {e}"
                ) from e
            return
        self._retry_at.pop(slot, None)
        self._down_since.pop(slot, None)

    def cgroups(self) -> list[str]:
        """The pids cgroup of each running worker ('' where it has none)."""
        return [w.cgroup if w is not None else "" for w in self._workers]

    def protections(self) -> dict[str, bool]:
        """Which protections the running workers apply to every program."""
        return dict(self._protections)

    def describe(self) -> str:
        """One paragraph: isolation level, what is active, and the filesystem rule."""
        p = self._protections
        on = [k for k, v in p.items() if v]
        # a fallback not needed, or the means to another protection, is not "missing"
        off = [k for k, v in p.items() if not v and k != "user_namespace"
               and not (k in _FALLBACK_FOR and p.get(_FALLBACK_FOR[k]))]
        text = (
            f"sandbox ({self.config.isolation}, {self.n_workers} workers"
            + (f" pinned to CPUs {','.join(map(str, self._cpus))}" if self._cpus else "")
            + "): active: "
            + ", ".join(on) + (f"; NOT active: {', '.join(off)}" if off else "")
        )
        if p.get("fs_read_allowlist"):
            text += (
                f"; filesystem: programs read only {len(self.fs.get('read_roots', []))} "
                f"roots ({', '.join(self.fs.get('read_roots', []))}), write only in their "
                f"scratch directory"
                + (f" ({self.config.scratch_mb} MB, {self.config.scratch_files} files tmpfs)"
                   if p.get("scratch_quota") else
                   f" (quota watched: {self.config.scratch_mb} MB, {self.config.scratch_files} "
                   f"files)" if p.get("scratch_quota_watch") else "")
                + ", and cannot read "
                + (", ".join(self.deny_read) if self.deny_read else "anything else")
                + (" (checked at start-up)" if p.get("deny_read_verified") else "")
            )
        elif p.get("fs_writes_only_in_scratch"):
            text += "; filesystem: no writes anywhere (scratch read-only), READS NOT RESTRICTED"
        else:
            text += "; filesystem: NOT RESTRICTED"
        return text

    # -- running ------------------------------------------------------------------------

    def run(self, programs: Iterable[str]) -> Iterator[Execution]:
        """One Execution per program, in input order, with all workers busy.

        Programs are pulled from ``programs`` lazily; at most a bounded window of
        results waits for an earlier, slower program, so memory stays flat.
        """
        if self._closed:
            raise EktError("the sandbox is closed")
        for s, w in enumerate(self._workers):
            if w is None or w.closed:
                self._workers[s] = None
                self._try_start(s)
        cap = self.config.max_output_bytes
        depth = _DEPTH
        window = max(4096, 64 * self.n_workers)  # results held back for input order
        it = iter(programs)
        results: dict[int, Execution] = {}
        retry: deque[tuple[int, str]] = deque()
        texts: dict[int, str] = {}  # programs in flight, kept to re-send after a worker died
        # Programs that were unanswered in a worker that died or hung with several of
        # them: which one was running is unknown (results go back per batch), so each
        # runs again alone, and a second death then names the culprit.
        suspects: set[int] = set()
        next_in = next_out = 0
        exhausted = False
        backstop = self.config.timeout + _BACKSTOP
        sel = selectors.DefaultSelector()
        registered: dict[int, _Worker] = {}
        recycle = self.config.recycle_after

        def take() -> tuple[int, str] | None:
            """The next program to send: a re-send first, then the input stream."""
            nonlocal next_in, exhausted
            while True:
                if retry:
                    return retry.popleft()
                if exhausted or next_in - next_out >= window:
                    return None
                try:
                    prog = next(it)
                except StopIteration:
                    exhausted = True
                    return None
                i = next_in
                next_in += 1
                if type(prog) is str:
                    return i, prog
                results[i] = Execution("error", None, "TypeError", "", 0.0, "program is not a str")

        try:
            while True:
                # 0. a slot left empty (a worker could not be started) is tried again
                for s, w in enumerate(self._workers):
                    if w is None:
                        self._try_start(s)
                # 1. keep every worker fed, breadth first: one program each, then one more
                #    queued behind it (no round trip between programs) unless it runs long
                now = time.monotonic()
                outgoing: dict[int, list[tuple[int, str]]] = {}
                for level in range(depth):
                    for w in self._workers:
                        if w is None or len(w.queue) != level or w.sent >= recycle:
                            continue
                        if level and (
                            now - w.head_since > _QUEUE_BEHIND_S
                            or level * w.ms_avg > _QUEUE_BEHIND_S * 1000
                            or w.queue[0] in suspects
                        ):
                            continue
                        item = take()
                        if item is None:
                            break
                        if level and item[0] in suspects:  # it waits for an idle worker
                            retry.appendleft(item)
                            continue
                        if not w.queue:
                            w.head_since = now
                        w.queue.append(item[0])
                        w.sent += 1
                        texts[item[0]] = item[1]
                        outgoing.setdefault(w.slot, []).append(item)
                for slot, items in outgoing.items():  # one write per worker
                    w = self._workers[slot]
                    assert w is not None
                    try:
                        w.send_many([prog.encode("utf-8", "surrogatepass") for _, prog in items])
                    except OSError:  # the worker died (its reader will notice): not these
                        for i, prog in reversed(items):
                            w.queue.pop()
                            w.sent -= 1
                            retry.appendleft((i, prog))
                for w in self._workers:
                    if w is None:
                        continue
                    if w.resp_fd not in registered or registered[w.resp_fd] is not w:
                        if w.resp_fd in registered:
                            sel.unregister(w.resp_fd)
                        sel.register(w.resp_fd, selectors.EVENT_READ, w)
                        registered[w.resp_fd] = w
                # 2. hand out what is ready, in order
                while next_out in results:
                    ex = results.pop(next_out)
                    next_out += 1
                    yield ex
                busy = [w for w in self._workers if w is not None and w.queue]
                if not busy:
                    if exhausted and not retry and not results:
                        return
                    if all(w is None for w in self._workers):
                        time.sleep(0.1)  # every slot waits to be started again
                    continue
                # 3. wait for results. Workers answer each program at once (they hold no
                #    result back); when every busy worker has work queued for longer
                #    than a short nap, the ekt process naps first and collects several
                #    answers per wake-up, leaving the CPUs to the workers.
                if all(len(w.queue) * w.ms_avg > 2000 * _NAP_S for w in busy):
                    time.sleep(_NAP_S)
                for key, _ in sel.select(timeout=1.0):
                    w = key.data
                    msgs = w.read()
                    if msgs is None:  # the worker died (see _worker_lost)
                        sel.unregister(key.fd)
                        del registered[key.fd]
                        self._worker_lost(
                            w, _died("sandbox worker died while running this program"),
                            results, retry, texts, suspects,
                        )
                        continue
                    now = time.monotonic()
                    for msg in msgs:
                        if "retire" in msg:  # it ran its last program; re-send the rest
                            w.sent = self.config.recycle_after
                            self._requeue(w, retry, texts)
                            break
                        if not w.queue:
                            break
                        i = w.queue.popleft()
                        texts.pop(i, None)
                        suspects.discard(i)
                        results[i] = ex = _execution(msg, cap)
                        w.ms_avg += 0.2 * (min(ex.ms, 10_000.0) - w.ms_avg)
                        w.done += 1
                        w.head_since = now
                    if not w.queue and w.sent >= self.config.recycle_after:
                        sel.unregister(key.fd)
                        del registered[key.fd]
                        self._restart(w, graceful=True)
                # 4. a worker that misses its own deadline by far is replaced
                now = time.monotonic()
                for w in list(busy):
                    if w.queue and not w.closed and now - w.head_since > backstop:
                        if w.resp_fd in registered:
                            sel.unregister(w.resp_fd)
                            del registered[w.resp_fd]
                        missed = Execution(
                            "timeout", None, "", "", backstop * 1000,
                            "sandbox worker missed its deadline and was replaced",
                        )
                        self._worker_lost(w, missed, results, retry, texts, suspects)
        finally:
            sel.close()
            # A consumer that stopped early leaves programs in flight: drop those workers.
            for w in list(self._workers):
                if w is not None and w.queue:
                    w.queue.clear()
                    w.kill()
                    self._workers[w.slot] = None

    def _requeue(
        self, w: _Worker, retry: deque[tuple[int, str]], texts: dict[int, str]
    ) -> None:
        """Programs queued behind the one at fault go to other workers."""
        for i in reversed(w.queue):
            retry.appendleft((i, texts.pop(i)))
        w.queue.clear()

    def _worker_lost(
        self,
        w: _Worker,
        outcome: Execution,
        results: dict[int, Execution],
        retry: deque[tuple[int, str]],
        texts: dict[int, str],
        suspects: set[int],
    ) -> None:
        """Replace a worker that died or hung. With one program unanswered, that program
        was running: it gets ``outcome``. With several, any of them may have been running
        (results go back per batch): all run again, each alone."""
        if len(w.queue) == 1:
            i = w.queue.popleft()
            texts.pop(i, None)
            suspects.discard(i)
            results[i] = outcome
        else:
            suspects.update(w.queue)
        self._requeue(w, retry, texts)
        self._restart(w, graceful=False)

    def close(self) -> None:
        """Stop every worker; afterwards no process started by the sandbox remains."""
        self._closed = True
        workers = [w for w in self._workers if w is not None]
        self._workers = [None] * len(self._workers)
        for w in workers:  # EOF to all first, so they wind down in parallel
            w.close_requests()
        for w in workers:
            w.stop()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            if not self._closed:
                self.close()
        except Exception:  # noqa: BLE001
            pass
