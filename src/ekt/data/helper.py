"""A helper process that judges model-written text outside the ekt process.

Symbolic answers (math-verify, through sympy) and procedural answers (a generator's own
checker) are judged by parsing text a model wrote. That never happens in the ekt process:
a :class:`HelperProcess` runs ``python -m MODULE`` with an address-space limit, sends it one
request line at a time and waits ``timeout`` seconds for one answer line; past that (or if
the helper died, say at its memory limit) the helper is killed, the answer is None (wrong)
and the next request starts a new helper. Answers are cached per request.

The helper module reads its limit from ``EKT_HELPER_MEMORY_MB`` (:func:`limit_memory`),
prints ``ready`` (and what it could not lock down, if anything) once it has imported what it
needs, then answers each stdin line with
one stdout line.
"""

from __future__ import annotations

import atexit
import os
import resource
import select
import subprocess
import sys
import threading

MEMORY_ENV = "EKT_HELPER_MEMORY_MB"
_CACHE_MAX = 100_000


def limit_memory(default_mb: int = 1024) -> None:
    """In the helper: cap its own address space (and drop core dumps) before any import."""
    mb = int(os.environ.get(MEMORY_ENV, str(default_mb)))
    resource.setrlimit(resource.RLIMIT_AS, (mb << 20, mb << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class HelperProcess:
    """One helper, asked one line at a time; thread-safe, restarted after a kill."""

    def __init__(
        self,
        module: str,
        timeout: float,
        memory_mb: int,
        startup: float = 30.0,
        env: dict[str, str] | None = None,
    ):
        self.module = module
        self.env = env or {}  # set in the helper's environment
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.startup = startup  # seconds the first answer may also take (the helper's imports)
        self.proc: subprocess.Popen | None = None
        self.cache: dict[str, str | None] = {}
        self.lock = threading.Lock()
        atexit.register(self.close)

    def _start(self) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "OPENAI"))}
        env.update(self.env)
        env[MEMORY_ENV] = str(self.memory_mb)
        return subprocess.Popen(
            [sys.executable, "-P", "-m", self.module],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def ask(self, request: str, timeout: float | None = None, cache: bool = True) -> str | None:
        """The helper's answer line to ``request`` (one line), or None when it had none
        within ``timeout`` seconds (default: the helper's)."""
        with self.lock:
            if request in self.cache:
                return self.cache[request]
            answer = self._ask(request, self.timeout if timeout is None else timeout)
            if not cache:
                return answer
            if len(self.cache) > _CACHE_MAX:
                self.cache.clear()
            self.cache[request] = answer  # a timeout too: a hostile text costs its time once
            return answer

    def _ask(self, request: str, timeout: float) -> str | None:
        if "\n" in request:
            raise ValueError("a helper request is one line")
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
            ready = self._readline(max(self.startup, self.timeout))
            if ready is None or not ready.startswith("ready"):
                self.close()
                return None
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((request + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            self.close()
            return None
        line = self._readline(timeout)
        if line is None:  # too slow, or the helper died (memory limit): no answer, a new helper
            self.close()
        return line

    def _readline(self, timeout: float) -> str | None:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return line.decode().strip() if line else None
