"""A worker's scratch directory: emptying any tree a program leaves, without recursion,
the scratch quota where no tmpfs can be mounted, and the scratch roots' names. See
docs/sandbox.md.

Used by the worker (``ekt.sandbox.child``) after every program and by the ekt process
when it creates and removes a worker's scratch root.

A scratch root is named ``ekt-sandbox-<pid>-<start>-<slot>-<random>``: the ekt process's
pid and its start time (clock ticks since boot, from ``/proc``), so a later run can tell
a folder whose owner is gone (no such pid, or a pid reused by a process started at
another time) from one in use, and removes it (``sweep_dead_scratch``): a run killed
with SIGKILL, which cannot clean up, leaves nothing behind after the next run.
"""

from __future__ import annotations

import os
import re
import tempfile

SCRATCH_PREFIX = "ekt-sandbox-"
_OWNED = re.compile(r"ekt-sandbox-(\d+)-(\d+)-\d+-")


def start_time(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (``/proc/PID/stat`` field 22), or
    None when it does not exist (or there is no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: split after it
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def scratch_prefix(slot: int) -> str:
    """The ``mkdtemp`` prefix of this process's scratch root for worker ``slot``."""
    pid = os.getpid()
    return f"{SCRATCH_PREFIX}{pid}-{start_time(pid) or 0}-{slot}-"


def owner_alive(name: str) -> bool:
    """Whether the ekt process that made scratch root ``name`` still runs (True for a
    name that does not say: an older version's, or not ekt's)."""
    m = _OWNED.match(name)
    if m is None:
        return True
    pid, started = int(m.group(1)), int(m.group(2))
    now = start_time(pid)
    if now is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True
        return started == 0  # alive, but no /proc to say since when: keep it
    return started == 0 or now == started


def sweep_dead_scratch(tmpdir: str | None = None) -> list[str]:
    """Remove the scratch roots in ``tmpdir`` (default: the temp folder) whose ekt process
    is gone; returns the paths removed."""
    root = tmpdir or tempfile.gettempdir()
    removed = []
    try:
        entries = [e for e in os.scandir(root) if e.name.startswith(SCRATCH_PREFIX)]
    except OSError:
        return removed
    for e in entries:
        try:
            st = e.stat(follow_symlinks=False)
            mine = e.is_dir(follow_symlinks=False) and st.st_uid == os.getuid()
        except OSError:
            continue
        if mine and not owner_alive(e.name) and remove_tree(e.path):
            removed.append(e.path)
    return removed


class ScratchWatch:
    """The scratch quota where no tmpfs can be mounted: the worker walks the scratch
    directory every few ms while a child runs (iteratively, counting bytes and
    entries, stopping at the first excess) and kills the child over quota. It bounds
    usage to the quota plus what a program writes between two looks (RLIMIT_FSIZE caps
    each file); ``strict`` does not accept it as a quota."""

    def __init__(self, path: str, max_bytes: int, max_files: int):
        self.path = path
        self.max_bytes = max_bytes
        self.max_files = max_files

    def over(self) -> str:
        """'' within quota, else what was exceeded."""
        total = files = 0
        stack = [self.path]
        while stack:
            try:
                it = os.scandir(stack.pop())
            except FileNotFoundError:
                continue
            except OSError as e:  # too deep or without permissions: cannot be measured
                return f"a scratch tree the worker cannot measure ({e.strerror})"
            with it:
                for e in it:
                    files += 1
                    if files > self.max_files:
                        return f"more than {self.max_files} files"
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(e.path)
                        else:
                            total += e.stat(follow_symlinks=False).st_blocks * 512
                    except OSError:
                        continue
                    if total > self.max_bytes:
                        return f"more than {self.max_bytes >> 20} MB"
        return ""


# -- emptying a scratch directory ---------------------------------------------------------

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def empty_dir(path: str) -> bool:
    """Delete everything below ``path`` without recursion; True when it is empty after.

    Handles any tree a program can leave: any depth (one directory descriptor is held
    at a time, so neither the recursion limit nor RLIMIT_NOFILE applies), directories
    without permissions (made 0700 first: the worker has no capabilities to bypass
    them), FIFOs, sockets and symlinks (unlinked, never opened or followed). Going back
    up checks each parent's identity, so a tree renamed underneath stops the walk
    (False) instead of deleting outside it. A directory that cannot be emptied is left
    and the result is False."""
    try:
        os.chmod(path, 0o700)
    except OSError:
        pass
    try:
        cur = os.open(path, _DIR_FLAGS)
    except OSError:
        return False
    stack: list[tuple[str, int, int, int]] = []  # (name, parent dev, parent ino, own ino)
    stuck: set[tuple[int, int]] = set()  # directories that could not be emptied
    clean = True
    try:
        while True:
            sub = None
            progress = True
            while progress and sub is None:  # unlink what is here; stop at a full directory
                progress = False
                try:
                    with os.scandir(cur) as it:
                        entries = list(it)
                except OSError:
                    entries = []
                    clean = False
                dev = os.fstat(cur).st_dev
                for e in entries:
                    try:
                        is_dir = e.is_dir(follow_symlinks=False)
                        if not is_dir:
                            os.unlink(e.name, dir_fd=cur)
                            progress = True
                            continue
                        if (dev, e.inode()) in stuck:
                            continue
                        try:
                            os.rmdir(e.name, dir_fd=cur)
                            progress = True
                            continue
                        except OSError:
                            pass
                        sub = e
                        break
                    except OSError:
                        clean = False
            if sub is not None:
                try:
                    os.chmod(sub.name, 0o700, dir_fd=cur)
                except OSError:
                    pass
                st = os.fstat(cur)
                try:
                    nxt = os.open(sub.name, _DIR_FLAGS, dir_fd=cur)
                except OSError:
                    stuck.add((st.st_dev, sub.inode()))
                    clean = False
                    continue
                stack.append((sub.name, st.st_dev, st.st_ino, sub.inode()))
                os.close(cur)
                cur = nxt
                continue
            if not stack:
                break
            name, pdev, pino, ino = stack.pop()
            up = os.open("..", _DIR_FLAGS, dir_fd=cur)
            os.close(cur)
            cur = up
            st = os.fstat(cur)
            if (st.st_dev, st.st_ino) != (pdev, pino):
                return False  # the tree moved under us: never walk outside it
            try:
                os.rmdir(name, dir_fd=cur)
            except OSError:
                stuck.add((pdev, ino))
                clean = False
    finally:
        os.close(cur)
    return clean and not stuck


def remove_tree(path: str) -> bool:
    """:func:`empty_dir`, then the directory itself; True when it is gone."""
    if os.path.islink(path) or not os.path.isdir(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True
    empty_dir(path)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True
