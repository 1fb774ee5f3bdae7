"""One writer per output: an advisory ``flock`` on a lock file beside the output.

``output_lock(path)`` holds ``.<name>.lock`` in the output's folder for as long as a
stage writes ``path`` (a file or a folder), and removes it when done. The kernel
releases the lock when the holder's file descriptor closes, so also when the process
dies however it dies: the lock file a killed run leaves on disk never blocks the next
one (only the lock on it counts; the next holder removes the file in its turn). A
second process asking for the same output fails at once with one line naming the
holder's pid and the path. Within one process the lock is re-entrant (a pipeline
stage nested in a command that holds the same output).

The descriptor is opened close-on-exec, so the sandbox's worker processes (spawned
with ``exec``) never inherit it and cannot keep a dead run's lock alive.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from ekt.errors import EktError

_held: dict[str, list[int]] = {}  # lock file (absolute) -> [fd, holders in this process]
_mutex = threading.Lock()


def lock_path(output: str | Path) -> Path:
    """The lock file of an output: ``.<name>.lock`` beside it (hidden; never a .jsonl). Links
    are followed, so two paths to one folder (a matrix run's shared stage) share one lock."""
    out = Path(output).resolve()
    return out.parent / f".{out.name}.lock"


def holder(lock: Path) -> str:
    """The pid written in a lock file ('unknown' while the holder is still writing it)."""
    try:
        text = lock.read_text(errors="replace").split()
    except OSError:
        return "unknown"
    return text[0] if text and text[0].isdigit() else "unknown"


def _acquire(lock: Path, output: str | Path) -> int:
    """An fd holding the flock of the file now at ``lock``. A holder removes the file before
    it lets go (no lock files are left behind), so a lock won on a file that is no longer at
    ``lock`` is worthless: try again on the one there now."""
    for _ in range(100):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:  # a read-only or full folder: say so of the output asked for
            raise EktError(f"{Path(output)}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise EktError(
                f"{Path(output)} is being written by another ekt process (pid "
                f"{holder(lock)}, lock {lock}); wait for it to finish or use another --out"
            ) from None
        try:
            here = os.stat(lock)
        except FileNotFoundError:
            here = None
        st = os.fstat(fd)
        if here is not None and (here.st_dev, here.st_ino) == (st.st_dev, st.st_ino):
            return fd
        os.close(fd)  # the holder removed it as we opened it: take the new one
    raise EktError(f"{lock}: could not take the lock (the file keeps being replaced)")


def _other_rank() -> bool:
    """A process of a distributed launch other than its rank 0 (the launcher sets RANK and
    WORLD_SIZE for every process it starts)."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return False
    return world > 1 and rank > 0


@contextlib.contextmanager
def output_lock(output: str | Path) -> Iterator[Path]:
    """Hold the one-writer lock of ``output`` (a file or folder) for the ``with`` block.

    Raises EktError at once, naming the other process's pid and the path, when another
    process holds it. The ranks of one distributed launch (torchrun, ``accelerate launch``)
    are one writer: rank 0 holds the lock for the job, the other ranks take none."""
    lock = lock_path(output)
    if _other_rank():
        yield lock
        return
    key = str(lock)
    with _mutex:
        if key in _held:
            _held[key][1] += 1
        else:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = _acquire(lock, output)
            with contextlib.suppress(OSError):  # a full disk: the lock holds all the same
                line = f"{os.getpid():<12}\n".encode()  # one size: the page is never freed
                os.pwrite(fd, line, 0)
                os.ftruncate(fd, len(line))
            _held[key] = [fd, 1]
    try:
        yield lock
    finally:
        with _mutex:
            entry = _held[key]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                with contextlib.suppress(OSError):  # removed while held: see _acquire
                    lock.unlink()
                os.close(entry[0])  # releases the flock


__all__ = ["output_lock", "lock_path", "holder"]
