"""Run untrusted programs: warm workers fork one confined child per program.

Design
------
The ekt process never runs a program. :class:`Sandbox` starts ``workers`` helper
interpreters (``python -m ekt._sandbox_child``, one per core by default), each in
its own session, with a minimal environment, and talks to each over a pair of pipes
with length-prefixed JSON (never pickle). A worker imports what programs commonly
use once (math, fractions, decimal, itertools, datetime, statistics, re,
collections, numpy when installed), compiles the seccomp filter and the Landlock
ruleset once, proves the whole confinement works on a probe program, and then
``fork()``s a fresh child per program (see ``ekt._sandbox_child`` for the child's
steps). :meth:`Sandbox.run` keeps every worker busy, streams the programs in and
yields one :class:`~ekt.records.Execution` per program in input order; memory stays
bounded however many programs stream through.

Outcomes: ``ok`` (``solution()`` returned; ``value``/``type`` are a plain value
decided by exact type checks, see below), ``error`` (the program raised: ``type`` is
the exception class, ``error`` its message; a syntax error, a missing
``solution``, ``sys.exit`` and a refused syscall all land here), ``timeout`` (the
worker's wall clock passed ``timeout``; the child's whole process group is
SIGKILLed), ``killed`` (the child died by a signal, e.g. SIGSEGV or the CPU limit,
or exited without a result, e.g. ``os._exit``; ``error`` says which).

Returned values: int (ints over ~1000 digits come back as value None, type "int",
error "int too large ..."), float (NaN and infinities as the strings "nan", "inf",
"-inf" so records stay standard JSON), Fraction as ``[num, den]``, Decimal as a float
(type "Decimal"), numpy scalars as int/float (type e.g. "numpy.int64"), bool, str
(first 1000 characters), None ("NoneType"). Anything else, subclasses included,
is value None with the class name as type; no method of the returned object is
ever called, so an object whose ``__eq__`` is always true grades as wrong.

Protections (``Sandbox.protections()`` says which are active)
-------------------------------------------------------------
* ``process_group`` / ``wall_clock_deadline``: each child leads its own process
  group; the worker SIGKILLs the group at the deadline and after every program,
  and reaps strays it adopted as a child subreaper. Children die with their worker
  (PR_SET_PDEATHSIG) and workers exit when the ekt process goes away (EOF).
* ``fd_isolation``: fds 0-2 are /dev/null, every other inherited fd but the result
  pipe is closed; ``print`` goes to a capped in-memory tail (``max_output_bytes``).
* ``scratch_dir``: the child runs in a fresh, empty directory removed afterwards.
* ``rlimits``: CPU seconds, address space (``memory_mb`` on top of what the warm
  worker already maps), file size, open files, no core dumps, no locked memory.
  RLIMIT_NPROC is set too but the kernel ignores it for root.
* ``capabilities_dropped`` and ``no_new_privs``: a root child drops all capabilities
  (it cannot raise its limits back) and can never gain privileges.
* ``seccomp`` (libseccomp via ``pyseccomp``): refused with EPERM: every socket
  (AF_UNIX too), fork/vfork and clone without CLONE_THREAD (threads still work),
  execve, kill and the other ways of signalling or inspecting processes, ptrace,
  setsid/setpgid, namespaces and mounts, privilege and limit changes, io_uring, bpf,
  and ``fs_write_blocked``: opening any file with O_WRONLY/O_RDWR/O_CREAT/O_TRUNC/
  O_APPEND plus unlink, rename, mkdir, chmod, truncate... Programs cannot write
  files at all, not even in their scratch directory; GSM8K programs never need to.
* ``landlock`` (when the kernel has it): the same no-writes rule enforced by the
  LSM, plus ``landlock_net`` (no TCP bind/connect, ABI >= 4) and
  ``landlock_signal_scope`` (no signals to processes outside the child's own domain,
  ABI >= 6; tgkill to itself is then allowed so ``abort()`` works).

Not covered: reads are not restricted (a program can read any file the ekt user can
read and return it as a string; without sockets it cannot send it anywhere), and
without seccomp a root program can still create processes (RLIMIT_NPROC does not
apply to root; the process-group kill and subreaper sweep clean them up).

Isolation levels: ``strict`` refuses to start unless the seccomp filter (which
also blocks filesystem writes) is active; ``standard`` uses every protection the
machine offers and warns about a missing seccomp; ``none`` skips rlimits, seccomp
and Landlock (process per program, deadline and scratch dir remain) and exists only
to benchmark the sandbox itself.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from ekt.errors import EktError
from ekt.records import Execution

ISOLATION = ("strict", "standard", "none")
_STATUSES = ("ok", "error", "timeout", "killed")
_HANDSHAKE_TIMEOUT = 60.0  # seconds for a worker to import, build its filter and run a probe
_BACKSTOP = 10.0  # seconds past the deadline after which the ekt process kills a worker


@dataclass
class SandboxConfig:
    workers: int | None = None  # default: os.cpu_count()
    timeout: float = 5.0  # wall-clock seconds per program, enforced by the worker
    memory_mb: int = 1024  # address space a program may add to the warm interpreter's
    cpu_seconds: int | None = None  # default: ceil(timeout) + 1
    max_output_bytes: int = 4096  # printed output kept (the last this many characters)
    isolation: str = "standard"  # strict | standard | none
    recycle_after: int = 500  # a worker is replaced after this many programs
    fsize_bytes: int = 1 << 20  # RLIMIT_FSIZE (writes are refused anyway under seccomp)

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


def detect_protections() -> dict[str, bool]:
    """What this machine supports (a Sandbox reports what it uses: Sandbox.protections)."""
    from ekt import _sandbox_child as child

    linux = sys.platform.startswith("linux")
    abi = child.landlock_abi() if linux else 0
    return {
        "fork_per_program": hasattr(os, "fork"),
        "process_group": linux,
        "rlimits": linux,
        "seccomp": linux and child.seccomp_supported(),
        "landlock": abi >= 1,
        "landlock_net": abi >= 4,
        "landlock_signal_scope": abi >= 6,
    }


def _worker_env() -> dict[str, str]:
    """A minimal environment: programs see no tokens or credentials of the ekt process."""
    src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": src,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "LANG": "C.UTF-8",
        "TMPDIR": tempfile.gettempdir(),
    }
    return env


class _Worker:
    """The ekt side of one worker process: its pipes, read buffer and queue of programs."""

    def __init__(self, slot: int, wire: dict):
        self.slot = slot
        self.scratch_root = tempfile.mkdtemp(prefix=f"ekt-sandbox-{slot}-")
        r_req, self.req_fd = os.pipe()
        self.resp_fd, w_resp = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ekt._sandbox_child"],
                stdin=r_req,
                stdout=w_resp,
                stderr=None,
                close_fds=True,
                start_new_session=True,
                env=_worker_env(),
                cwd=self.scratch_root,
            )
        except BaseException:
            os.close(self.req_fd)
            os.close(self.resp_fd)
            shutil.rmtree(self.scratch_root, ignore_errors=True)
            raise
        finally:
            os.close(r_req)
            os.close(w_resp)
        os.set_blocking(self.resp_fd, False)
        self.buf = bytearray()
        self.ready = False
        self.protections: dict[str, bool] = {}
        self.problem = ""
        self.queue: deque[int] = deque()  # input indices sent and not yet answered
        self.head_since = 0.0  # when the program at the head of the queue started
        self.done = 0
        self.sent = 0
        self.closed = False
        self.send({"config": {**wire, "scratch_root": self.scratch_root}})

    def send(self, obj: dict) -> None:
        data = json.dumps(obj).encode()
        view = memoryview(struct.pack("<I", len(data)) + data)
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
                obj = json.loads(body)
            except ValueError:
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
        shutil.rmtree(self.scratch_root, ignore_errors=True)


def _execution(msg: dict, max_output: int) -> Execution:
    status = msg.get("status")
    if status not in _STATUSES:
        return Execution("killed", None, "", "", 0.0, "sandbox worker sent a malformed result")
    value = msg.get("value")
    if not (value is None or type(value) in (int, float, str, bool, list)):
        value = None
    ms = msg.get("ms", 0.0)
    return Execution(
        status=status,
        value=value,
        type=str(msg.get("type", ""))[:80],
        stdout_tail=str(msg.get("stdout_tail", ""))[-max_output:] if max_output else "",
        ms=float(ms) if type(ms) in (int, float) else 0.0,
        error=str(msg.get("error", ""))[:300],
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
        if cfg.isolation == "strict" and not support["seccomp"]:
            raise EktError(
                "sandbox isolation 'strict' needs a seccomp syscall filter (it also blocks "
                "filesystem writes), which is unavailable here: install libseccomp2 and the "
                "pyseccomp package on Linux, or use isolation 'standard'"
            )
        if cfg.isolation == "none":
            warnings.warn(
                "SANDBOX ISOLATION IS OFF (isolation='none'): untrusted programs run without "
                "resource limits, syscall filter or Landlock. Use this only to benchmark.",
                RuntimeWarning,
                stacklevel=2,
            )
        elif not support["seccomp"]:
            warnings.warn(
                "seccomp is unavailable: programs run with process-group kill, rlimits, "
                "scratch dir" + (", Landlock" if support["landlock"] else "")
                + " but no syscall filter (they can create processes and open sockets)",
                RuntimeWarning,
                stacklevel=2,
            )
        self._wire = {
            "timeout": float(cfg.timeout),
            "memory_mb": int(cfg.memory_mb),
            "cpu_seconds": int(cfg.cpu_seconds or math.ceil(cfg.timeout) + 1),
            "max_output_bytes": int(cfg.max_output_bytes),
            "fsize_bytes": int(cfg.fsize_bytes),
            "isolation": cfg.isolation,
        }
        self._workers: list[_Worker | None] = [None] * self.n_workers
        self._protections: dict[str, bool] = {}
        self._closed = False
        try:
            self._start([*range(self.n_workers)])
        except BaseException:
            self.close()
            raise

    # -- pool management ----------------------------------------------------------------

    def _start(self, slots: list[int]) -> None:
        """Start workers in the given slots concurrently and wait for their handshakes."""
        fresh = []
        for s in slots:
            w = _Worker(s, self._wire)
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
        if not isinstance(prot, dict):
            raise EktError("sandbox worker sent a malformed handshake")
        w.protections = {str(k): bool(v) for k, v in prot.items()}
        w.ready = True
        if self.config.isolation == "strict":
            missing = [k for k in ("seccomp", "fs_write_blocked", "rlimits") if not prot.get(k)]
            if missing:
                raise EktError(
                    "sandbox isolation 'strict' could not be met; missing: " + ", ".join(missing)
                )
        if not self._protections:
            self._protections = dict(w.protections)
        else:  # report only what every worker has
            for k, v in w.protections.items():
                self._protections[k] = self._protections.get(k, False) and v

    def _restart(self, w: _Worker, graceful: bool) -> None:
        if graceful:
            w.stop()
        else:
            w.kill()
        self._workers[w.slot] = None
        if not self._closed:
            self._start([w.slot])

    def protections(self) -> dict[str, bool]:
        """Which protections the running workers apply to every program."""
        return dict(self._protections)

    def describe(self) -> str:
        on = [k for k, v in self._protections.items() if v]
        return f"sandbox ({self.config.isolation}, {self.n_workers} workers): " + ", ".join(on)

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
                self._start([s])
        cap = self.config.max_output_bytes
        depth = 1  # programs queued per worker
        window = max(4096, 64 * self.n_workers)  # results held back for input order
        it = iter(programs)
        results: dict[int, Execution] = {}
        retry: deque[tuple[int, str]] = deque()
        texts: dict[int, str] = {}  # programs in flight, kept to re-send after a worker died
        next_in = next_out = 0
        exhausted = False
        backstop = self.config.timeout + _BACKSTOP
        sel = selectors.DefaultSelector()
        registered: dict[int, _Worker] = {}
        try:
            while True:
                # 1. keep every worker fed
                for s in range(self.n_workers):
                    w = self._workers[s]
                    if w is None:
                        continue
                    while len(w.queue) < depth and w.sent < self.config.recycle_after:
                        if retry:
                            i, prog = retry.popleft()
                        else:
                            if exhausted or next_in - next_out >= window:
                                break
                            try:
                                prog = next(it)
                            except StopIteration:
                                exhausted = True
                                break
                            i = next_in
                            next_in += 1
                            if type(prog) is not str:
                                results[i] = Execution(
                                    "error", None, "TypeError", "", 0.0, "program is not a str"
                                )
                                continue
                        try:
                            w.send({"program": prog})
                        except OSError:  # the worker died; its reader will notice
                            retry.appendleft((i, prog))
                            break
                        if not w.queue:
                            w.head_since = time.monotonic()
                        w.queue.append(i)
                        w.sent += 1
                        texts[i] = prog
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
                    continue
                # 3. wait for results
                for key, _ in sel.select(timeout=1.0):
                    w = key.data
                    msgs = w.read()
                    if msgs is None:  # the worker died: blame its current program
                        sel.unregister(key.fd)
                        del registered[key.fd]
                        self._worker_died(w, results, retry, texts)
                        continue
                    now = time.monotonic()
                    for msg in msgs:
                        if not w.queue:
                            break
                        i = w.queue.popleft()
                        texts.pop(i, None)
                        results[i] = _execution(msg, cap)
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
                        i = w.queue.popleft()
                        texts.pop(i, None)
                        results[i] = Execution(
                            "timeout", None, "", "", backstop * 1000,
                            "sandbox worker missed its deadline and was replaced",
                        )
                        if w.resp_fd in registered:
                            sel.unregister(w.resp_fd)
                            del registered[w.resp_fd]
                        self._requeue(w, retry, texts)
                        self._restart(w, graceful=False)
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

    def _worker_died(
        self,
        w: _Worker,
        results: dict[int, Execution],
        retry: deque[tuple[int, str]],
        texts: dict[int, str],
    ) -> None:
        if w.queue:
            i = w.queue.popleft()
            texts.pop(i, None)
            results[i] = _died("sandbox worker died while running this program")
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
