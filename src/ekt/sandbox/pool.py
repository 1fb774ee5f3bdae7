"""The ekt side of the sandbox: ``SandboxConfig`` and the worker pool ``Sandbox``.

Untrusted programs never run in the ekt process: warm workers (``ekt.sandbox.child``)
fork one confined child per program. ``Sandbox.run`` streams programs in and yields one
:class:`~ekt.records.Execution` per program in input order, keeping every worker busy
and replacing workers that die or hang. The design, the protections (what holds as
root and as a non-root user), the isolation levels and the wire format are specified
in ``docs/sandbox.md``.
"""

from __future__ import annotations

import math
import os
import selectors
import sys
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from typing import Any

from ekt.errors import EktError
from ekt.records import Execution
from ekt.sandbox.child import DEFAULT_PRELOAD
from ekt.sandbox.config import (  # re-exported: ekt.sandbox.pool is the public home
    ISOLATION,
    LAYERS,
    SandboxConfig,
    default_deny_read,
    detect_protections,
    run_deny_read,
)
from ekt.sandbox.process import WorkerProcess, died, execution

_HANDSHAKE_TIMEOUT = 60.0  # seconds for a worker to import, build its filter and run a probe
_BACKSTOP = 10.0  # seconds past the deadline after which the ekt process kills a worker
# Programs queued per worker, in its request pipe (the worker reads one at a time, so
# what waits there is never in its memory): the next is there when one ends.
_DEPTH = 16
_QUEUE_BEHIND_S = 0.05  # ... but none is queued behind a program running longer than this,
# nor so many that, at the worker's recent time per program, the last would wait longer.
# (The estimate starts pessimistic: ekt.sandbox.process.FIRST_MS_ESTIMATE.)
_PIPE_BUDGET = 48 * 1024  # characters queued behind a worker's running program, at most
_NAP_S = 0.002  # the ekt process's nap between collections while workers have queued work
_DOWN_LIMIT_S = 60.0  # a run stops when no worker could start for this long
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


_SAID: set[str] = set()  # informational filesystem notes already warned about in this process


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
        self._workers: list[WorkerProcess | None] = [None] * self.n_workers
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
            w = WorkerProcess(s, {**self._wire, "cpu": self._cpus[s] if self._cpus else -1})
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

    def _handshake(self, w: WorkerProcess, hello: dict) -> None:
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
        lines = [f"sandbox: {n}" for n in fs.get("notes", []) if n not in _SAID]
        # a carve-out that holds is news once per process, not at every pool start
        _SAID.update(n for n in fs.get("notes", []) if "granted entry by entry" in n)
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

    def _restart(self, w: WorkerProcess, graceful: bool) -> None:
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
        yield from _Scheduler(self, programs).run()

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


class _Scheduler:
    """One call of :meth:`Sandbox.run`: which programs are where, and the results held back.

    Each turn of :meth:`run` takes these steps in order: start workers in empty slots,
    feed every worker, hand out the results that are next in input order, collect the
    workers' answers, and replace a worker that hung.
    """

    def __init__(self, box: Sandbox, programs: Iterable[str]):
        self.box = box
        self.cap = box.config.max_output_bytes
        self.recycle = box.config.recycle_after
        self.backstop = box.config.timeout + _BACKSTOP
        self.window = max(4096, 64 * box.n_workers)  # results held back for input order
        self.programs = iter(programs)
        self.exhausted = False  # the input stream has ended
        self.next_in = self.next_out = 0  # numbers of the next program read, and handed out
        self.results: dict[int, Execution] = {}  # results waiting for their turn
        self.retry: deque[tuple[int, str]] = deque()  # programs to send again, first
        self.texts: dict[int, str] = {}  # programs in flight, kept to re-send after a death
        # Programs that were unanswered in a worker that died or hung with several of
        # them: which one was running is unknown (results go back per batch), so each
        # runs again alone, and a second death then names the culprit.
        self.suspects: set[int] = set()
        self.sel = selectors.DefaultSelector()
        self.watched: dict[int, WorkerProcess] = {}  # response pipe -> its worker

    def run(self) -> Iterator[Execution]:
        """The scheduling loop; on exit no worker is left with programs in flight."""
        try:
            while True:
                self.start_empty_slots()
                self.feed()
                yield from self.hand_out()
                busy = [w for w in self.box._workers if w is not None and w.queue]
                if not busy:
                    if self.exhausted and not self.retry and not self.results:
                        return
                    if all(w is None for w in self.box._workers):
                        time.sleep(0.1)  # every slot waits to be started again
                    continue
                self.collect(busy)
                self.replace_hung(busy)
        finally:
            self.sel.close()
            self.drop_in_flight()

    def take(self) -> tuple[int, str] | None:
        """The next program to send: a re-send first, then the input stream (a non-str
        input gets its error result at once and is skipped)."""
        while True:
            if self.retry:
                return self.retry.popleft()
            if self.exhausted or self.next_in - self.next_out >= self.window:
                return None
            try:
                prog = next(self.programs)
            except StopIteration:
                self.exhausted = True
                return None
            i = self.next_in
            self.next_in += 1
            if type(prog) is str:
                return i, prog
            self.results[i] = Execution("error", None, "TypeError", "", 0.0, "program is not a str")

    # -- step 0: a slot left empty (a worker could not be started) is tried again -------

    def start_empty_slots(self) -> None:
        for s, w in enumerate(self.box._workers):
            if w is None:
                self.box._try_start(s)

    # -- step 1: keep every worker fed --------------------------------------------------

    def feed(self) -> None:
        """Breadth first: one program for each worker, then one more queued behind it (no
        round trip between programs) unless it runs long; one write per worker."""
        outgoing = self.assign(time.monotonic())
        for slot, items in outgoing.items():
            self.send(self.box._workers[slot], items)
        self.watch_all()

    def assign(self, now: float) -> dict[int, list[tuple[int, str]]]:
        """Programs for each worker's queue, by slot."""
        outgoing: dict[int, list[tuple[int, str]]] = {}
        for level in range(_DEPTH):
            for w in self.box._workers:
                if w is None or len(w.queue) != level or w.sent >= self.recycle:
                    continue
                if level and not self.may_queue_behind(w, now):
                    continue
                item = self.take()
                if item is None:
                    break
                if level and not self.fits_behind(w, item):
                    self.retry.appendleft(item)
                    continue
                if not w.queue:
                    w.head_since = now
                w.queue.append(item[0])
                w.sent += 1
                self.texts[item[0]] = item[1]
                outgoing.setdefault(w.slot, []).append(item)
        return outgoing

    def may_queue_behind(self, w: WorkerProcess, now: float) -> bool:
        """Whether another program may wait in ``w``'s pipe: not behind a program that has
        run long or is a suspect, nor so many that, at the worker's recent time per
        program, the last would wait long."""
        return not (
            now - w.head_since > _QUEUE_BEHIND_S
            or len(w.queue) * w.ms_avg > _QUEUE_BEHIND_S * 1000
            or w.queue[0] in self.suspects
        )

    def fits_behind(self, w: WorkerProcess, item: tuple[int, str]) -> bool:
        """Whether ``item`` may be queued behind ``w``'s running program. A suspect waits
        for an idle worker. Never more is queued than the pipe holds: the worker reads one
        program at a time, so a fuller pipe would block this process's write. (Up to
        _DEPTH programs of 1 KB cannot reach the budget: only a larger one needs the sum.)"""
        i, prog = item
        if i in self.suspects:
            return False
        return not (len(prog) > 1024
                    and len(prog) + sum(len(self.texts[j]) for j in w.queue) > _PIPE_BUDGET)

    def send(self, w: WorkerProcess | None, items: list[tuple[int, str]]) -> None:
        """One write of ``items`` to ``w``; if the worker died, they go back to be re-sent
        (its reader will notice the death: these programs were not the cause)."""
        assert w is not None
        try:
            w.send_many([prog.encode("utf-8", "surrogatepass") for _, prog in items])
        except OSError:
            for i, prog in reversed(items):
                w.queue.pop()
                w.sent -= 1
                self.retry.appendleft((i, prog))

    def watch_all(self) -> None:
        """Every worker's response pipe is watched (a replacement's too)."""
        for w in self.box._workers:
            if w is None or self.watched.get(w.resp_fd) is w:
                continue
            if w.resp_fd in self.watched:
                self.sel.unregister(w.resp_fd)
            self.sel.register(w.resp_fd, selectors.EVENT_READ, w)
            self.watched[w.resp_fd] = w

    def unwatch(self, fd: int) -> None:
        self.sel.unregister(fd)
        del self.watched[fd]

    # -- step 2: hand out what is ready, in order ---------------------------------------

    def hand_out(self) -> Iterator[Execution]:
        while self.next_out in self.results:
            ex = self.results.pop(self.next_out)
            self.next_out += 1
            yield ex

    # -- step 3: wait for results -------------------------------------------------------

    def collect(self, busy: list[WorkerProcess]) -> None:
        """Workers answer each program at once (they hold no result back); when every
        busy worker has work queued for longer than a short nap, the ekt process naps
        first and collects several answers per wake-up, leaving the CPUs to the workers."""
        if all(len(w.queue) * w.ms_avg > 2000 * _NAP_S for w in busy):
            time.sleep(_NAP_S)
        for key, _ in self.sel.select(timeout=1.0):
            w = key.data
            msgs = w.read()
            if msgs is None:  # the worker died (see lost)
                self.unwatch(key.fd)
                self.lost(w, died("sandbox worker died while running this program"))
                continue
            self.take_answers(w, msgs)
            if not w.queue and w.sent >= self.recycle:
                self.unwatch(key.fd)
                self.box._restart(w, graceful=True)

    def take_answers(self, w: WorkerProcess, msgs: list[dict]) -> None:
        """Results for the programs at the head of ``w``'s queue, in order."""
        now = time.monotonic()
        for msg in msgs:
            if "retire" in msg:  # it ran its last program; re-send the rest
                w.sent = self.recycle
                self.requeue(w)
                break
            if not w.queue:
                break
            i = w.queue.popleft()
            self.texts.pop(i, None)
            self.suspects.discard(i)
            self.results[i] = ex = execution(msg, self.cap)
            w.ms_avg += 0.2 * (min(ex.ms, 10_000.0) - w.ms_avg)
            w.done += 1
            w.head_since = now

    # -- step 4: a worker that misses its own deadline by far is replaced ---------------

    def replace_hung(self, busy: list[WorkerProcess]) -> None:
        now = time.monotonic()
        for w in busy:
            if w.queue and not w.closed and now - w.head_since > self.backstop:
                if w.resp_fd in self.watched:
                    self.unwatch(w.resp_fd)
                missed = Execution(
                    "timeout", None, "", "", self.backstop * 1000,
                    "sandbox worker missed its deadline and was replaced",
                )
                self.lost(w, missed)

    # -- losing a worker ----------------------------------------------------------------

    def requeue(self, w: WorkerProcess) -> None:
        """Programs queued behind the one at fault go to other workers."""
        for i in reversed(w.queue):
            self.retry.appendleft((i, self.texts.pop(i)))
        w.queue.clear()

    def lost(self, w: WorkerProcess, outcome: Execution) -> None:
        """Replace a worker that died or hung. With one program unanswered, that program
        was running: it gets ``outcome``. With several, any of them may have been running
        (results go back per batch): all run again, each alone."""
        if len(w.queue) == 1:
            i = w.queue.popleft()
            self.texts.pop(i, None)
            self.suspects.discard(i)
            self.results[i] = outcome
        else:
            self.suspects.update(w.queue)
        self.requeue(w)
        self.box._restart(w, graceful=False)

    def drop_in_flight(self) -> None:
        """A consumer that stopped early leaves programs in flight: drop those workers."""
        for w in list(self.box._workers):
            if w is not None and w.queue:
                w.queue.clear()
                w.kill()
                self.box._workers[w.slot] = None


__all__ = [
    "ISOLATION", "LAYERS", "STRICT_NEEDS", "Sandbox", "SandboxConfig", "default_deny_read",
    "detect_protections", "run_deny_read",
]
