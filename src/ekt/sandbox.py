"""Run untrusted programs: warm workers fork one confined child per program.

The ekt process starts ``workers`` helper interpreters (``ekt._sandbox_worker``)
in their own sessions and talks to them over pipes with length-prefixed JSON.
Each worker imports what programs commonly use once, then forks a fresh child
per program. Before the program runs, the child

* moves into its own process group, so the whole group can be killed at once;
* closes every inherited file descriptor except its result pipe; stdin/stdout/
  stderr point at /dev/null and ``print`` goes to a capped in-memory tail;
* lowers its resource limits: CPU seconds, address space, file size, open
  files, processes, no core dumps;
* chdirs into a fresh scratch directory (removed afterwards);
* loads a seccomp filter (libseccomp through ``pyseccomp``) that refuses sockets,
  process creation other than threads, exec, signalling any process, ptrace,
  mount and namespace calls, privilege changes, and every way of writing to
  the filesystem (open for writing, create, unlink, rename, chmod...).

The worker waits on the child's result pipe with its own monotonic clock,
SIGKILLs the child's process group at the deadline, or as soon as the result
arrives, reaps it (workers are child subreapers, so orphans come back to
them), and reads at most 64 KiB of result. Results are plain JSON values
converted inside the child by exact type checks; grading happens later, in the
ekt process, so a program never sees the gold answer. A worker that dies is
replaced (its program is reported ``killed``); workers are recycled after
``recycle_after`` programs.

Isolation levels: ``strict`` requires the seccomp filter and refuses to start
without it; ``standard`` uses it when the kernel and library allow and says so
when they do not; ``none`` runs without limits or filter and exists only for
benchmarking.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import selectors
import struct
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from ekt.errors import EktError
from ekt.records import Execution

ISOLATION = ("strict", "standard", "none")


@dataclass
class SandboxConfig:
    workers: int | None = None  # default: one per core
    timeout: float = 5.0  # wall-clock seconds per program, enforced by the worker
    memory_mb: int = 1024  # address space a program may add to the warm interpreter's
    cpu_seconds: int | None = None  # default: ceil(timeout) + 1
    max_output_bytes: int = 4096  # printed output kept (the tail)
    fsize_bytes: int = 1 << 20
    isolation: str = "standard"
    recycle_after: int = 2000

    def validate(self) -> None:
        if self.isolation not in ISOLATION:
            raise EktError(
                f"--isolation must be one of {', '.join(ISOLATION)}, got {self.isolation!r}"
            )
        if not self.timeout > 0:
            raise EktError(f"--timeout must be > 0, got {self.timeout}")
        if self.workers is not None and self.workers < 1:
            raise EktError(f"--workers must be >= 1, got {self.workers}")
        if self.memory_mb < 16:
            raise EktError(f"--memory-mb must be >= 16, got {self.memory_mb}")


def _seccomp_available() -> bool:
    try:
        with open("/proc/self/status") as fh:
            if "Seccomp:" not in fh.read():
                return False
        import pyseccomp  # noqa: F401

        pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
        return True
    except Exception:  # noqa: BLE001 - missing library, old kernel, other arch
        return False


def _landlock_abi() -> int:
    """Landlock ABI version offered by the kernel (0: none)."""
    if sys.platform != "linux":
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        nr = {"x86_64": 444, "aarch64": 444}.get(os.uname().machine)
        if nr is None:
            return 0
        version = libc.syscall(nr, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
        return max(0, int(version))
    except Exception:  # noqa: BLE001
        return 0


def detect_protections() -> dict[str, bool]:
    """What this machine supports (not what a given Sandbox uses: see Sandbox.protections)."""
    linux = sys.platform.startswith("linux")
    return {
        "fork_per_program": hasattr(os, "fork"),
        "process_group_kill": linux,
        "rlimits": linux,
        "seccomp": linux and _seccomp_available(),
        "landlock": _landlock_abi() > 0,
    }


class _Worker:
    def __init__(self, cfg: dict):
        env = dict(
            os.environ, PYTHONDONTWRITEBYTECODE="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1"
        )
        src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ekt._sandbox_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
        self.done = 0
        self.busy: int | None = None  # index of the program in flight
        self.sent_at = 0.0
        self._send({"config": cfg})
        hello = self._recv()
        if not hello or not hello.get("ready"):
            self.kill()
            raise EktError("sandbox worker failed to start")
        self.seccomp = bool(hello.get("seccomp"))

    def _send(self, obj: dict) -> None:
        data = json.dumps(obj).encode()
        assert self.proc.stdin is not None
        self.proc.stdin.write(struct.pack("<I", len(data)) + data)
        self.proc.stdin.flush()

    def _recv(self) -> dict | None:
        assert self.proc.stdout is not None
        head = self.proc.stdout.read(4)
        if len(head) < 4:
            return None
        (size,) = struct.unpack("<I", head)
        if size > 1 << 20:
            return None
        body = self.proc.stdout.read(size)
        try:
            obj = json.loads(body)
        except ValueError:
            return None
        return obj if isinstance(obj, dict) else None

    def submit(self, index: int, program: str) -> None:
        self.busy = index
        self.sent_at = time.monotonic()
        self._send({"program": program})

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
        for fh in (self.proc.stdin, self.proc.stdout):
            try:
                if fh:
                    fh.close()
            except OSError:
                pass
        self.proc.wait()

    def stop(self) -> None:
        try:
            self._send({"stop": True})
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            pass
        self.kill()


def _to_execution(msg: dict) -> Execution:
    value = msg.get("value")
    if msg.get("type") in ("float", "Decimal") or str(msg.get("type", "")).startswith("numpy.f"):
        if isinstance(value, str):  # nan / inf travel as strings
            try:
                value = float(value)
            except ValueError:
                value = None
    return Execution(
        status=str(msg.get("status", "killed")),
        value=value,
        type=str(msg.get("type", ""))[:60],
        stdout_tail=str(msg.get("stdout_tail", ""))[-4096:],
        ms=float(msg.get("ms", 0.0)),
        error=str(msg.get("error", ""))[:300],
    )


class Sandbox:
    """A pool of warm sandbox workers; ``run`` streams Executions in input order."""

    def __init__(self, config: SandboxConfig | None = None, **overrides: Any):
        cfg = config or SandboxConfig()
        if overrides:
            cfg = SandboxConfig(**{**asdict(cfg), **overrides})
        cfg.validate()
        self.config = cfg
        self.n_workers = cfg.workers or os.cpu_count() or 1
        support = detect_protections()
        if cfg.isolation == "strict" and not support["seccomp"]:
            raise EktError(
                "--isolation strict needs a seccomp filter, which is unavailable here "
                "(install libseccomp2 and pyseccomp on Linux), or choose --isolation standard"
            )
        if cfg.isolation == "none":
            warnings.warn(
                "SANDBOX ISOLATION IS OFF (--isolation none): programs run without limits "
                "or syscall filter. Use this only to benchmark the sandbox itself.",
                stacklevel=2,
            )
        elif not support["seccomp"]:
            warnings.warn(
                "seccomp is unavailable: programs run with process-group kill, rlimits and a "
                "scratch directory but no syscall filter",
                stacklevel=2,
            )
        self._wire = {
            "timeout": cfg.timeout,
            "memory_mb": cfg.memory_mb,
            "cpu_seconds": cfg.cpu_seconds or math.ceil(cfg.timeout) + 1,
            "max_output_bytes": cfg.max_output_bytes,
            "fsize_bytes": cfg.fsize_bytes,
            "isolation": cfg.isolation,
        }
        self._workers: list[_Worker] = []
        self._protections = {
            "process_group_kill": cfg.isolation != "none" or True,
            "rlimits": cfg.isolation != "none",
            "seccomp": cfg.isolation != "none" and support["seccomp"],
            "scratch_dir": True,
            "landlock": False,
            "deadline_by_parent": True,
        }

    def protections(self) -> dict[str, bool]:
        return dict(self._protections)

    def describe(self) -> str:
        on = [k for k, v in self._protections.items() if v]
        return f"sandbox ({self.config.isolation}): " + ", ".join(on)

    # -- pool management ---------------------------------------------------------
    def _spawn(self) -> _Worker:
        w = _Worker(self._wire)
        if self.config.isolation != "none" and self._protections["seccomp"] and not w.seccomp:
            w.kill()
            raise EktError("sandbox worker could not build its seccomp filter")
        return w

    def _ensure_workers(self) -> None:
        while len(self._workers) < self.n_workers:
            self._workers.append(self._spawn())

    def _replace(self, w: _Worker, graceful: bool) -> _Worker:
        (w.stop if graceful else w.kill)()
        nw = self._spawn()
        self._workers[self._workers.index(w)] = nw
        return nw

    def run(self, programs: Iterable[str]) -> Iterator[Execution]:
        """One Execution per program, in input order, with all workers busy."""
        self._ensure_workers()
        it = iter(enumerate(programs))
        pending: dict[int, Execution] = {}
        next_out = 0
        exhausted = False
        sel = selectors.DefaultSelector()
        backstop = self.config.timeout + 10.0
        try:
            while True:
                for w in self._workers:  # keep every idle worker busy
                    if w.busy is None and not exhausted:
                        try:
                            i, prog = next(it)
                        except StopIteration:
                            exhausted = True
                            break
                        if not isinstance(prog, str):
                            pending[i] = Execution(
                                "error", None, "TypeError", "", 0.0, "program is not a string"
                            )
                            continue
                        try:
                            w.submit(i, prog)
                        except (BrokenPipeError, OSError):
                            pending[i] = Execution(
                                "killed", None, "", "", 0.0, "sandbox worker died"
                            )
                            w.busy = None
                            self._replace(w, graceful=False)
                while next_out in pending:
                    yield pending.pop(next_out)
                    next_out += 1
                busy = [w for w in self._workers if w.busy is not None]
                if not busy:
                    if exhausted and not pending:
                        return
                    continue
                for w in busy:
                    sel.register(w.proc.stdout, selectors.EVENT_READ, w)  # type: ignore[arg-type]
                events = sel.select(timeout=1.0)
                for w in busy:
                    sel.unregister(w.proc.stdout)  # type: ignore[arg-type]
                ready = {key.data for key, _ in events}
                for w in busy:
                    idx = w.busy
                    assert idx is not None
                    if w in ready:
                        msg = w._recv()
                        w.busy = None
                        if msg is None:  # the worker died (or spoke garbage)
                            pending[idx] = Execution(
                                "killed", None, "", "", 0.0, "sandbox worker died"
                            )
                            self._replace(w, graceful=False)
                            continue
                        pending[idx] = _to_execution(msg)
                        w.done += 1
                        if w.done >= self.config.recycle_after:
                            self._replace(w, graceful=True)
                    elif time.monotonic() - w.sent_at > backstop:
                        pending[idx] = Execution(
                            "timeout",
                            None,
                            "",
                            "",
                            backstop * 1000,
                            "worker missed its deadline; replaced",
                        )
                        w.busy = None
                        self._replace(w, graceful=False)
        finally:
            sel.close()
            if any(w.busy is not None for w in self._workers):
                # The consumer stopped early: the in-flight results are unusable.
                for w in [w for w in self._workers if w.busy is not None]:
                    w.busy = None
                    self._replace(w, graceful=False)

    def close(self) -> None:
        for w in self._workers:
            w.stop()
        self._workers = []

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
