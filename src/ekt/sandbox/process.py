"""The ekt process's handle on one sandbox worker process: starting it (riding out
EAGAIN), its pipes and framing, its queue of programs, stopping it and removing its
scratch root and pids cgroup. ``ekt.sandbox.pool.Sandbox`` drives a list of these.
See docs/sandbox.md.
"""

from __future__ import annotations

import itertools
import json
import marshal
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from typing import Any

from ekt.records import Execution
from ekt.sandbox.confine import make_pids_cgroup, remove_cgroup
from ekt.sandbox.scratch import remove_tree, scratch_prefix, sweep_dead_scratch
from ekt.sandbox.wire import RAW_RESULT, parse_raw_result, valid_text

_STATUSES = ("ok", "error", "timeout", "killed")
_SERIAL = itertools.count()
_SWEPT = False  # dead runs' scratch roots removed (the first worker of the process does it)
_START_RETRY_S = (0.05, 0.2, 0.5, 1.0, 2.0, 4.0)  # pauses between tries to start a worker
# The first estimate of a worker's time per program is pessimistic, so a new pool hands
# out its first programs a few at a time until it has seen how long they take.
FIRST_MS_ESTIMATE = 25.0


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


class WorkerProcess:
    """The ekt side of one worker process: its pipes, read buffer and queue of programs."""

    def __init__(self, slot: int, wire: dict):
        self.slot = slot
        global _SWEPT
        if not _SWEPT:  # once per process: the folders of killed runs
            _SWEPT = True
            sweep_dead_scratch()
        self.scratch_root = tempfile.mkdtemp(prefix=scratch_prefix(slot))
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
        self.ms_avg = FIRST_MS_ESTIMATE  # moving average of its programs' times (ms)
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


def execution(msg: dict, max_output: int) -> Execution:
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


def died(error: str) -> Execution:
    return Execution("killed", None, "", "", 0.0, error)
