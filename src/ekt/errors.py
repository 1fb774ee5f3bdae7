"""One exception type for everything a user can fix: bad input, bad options, missing files.

The CLI prints its message on one line and exits non-zero without a traceback
(unless ``--debug``). Library callers can catch it like any other exception.
The file system's refusals (a full disk, a read-only or unwritable output
folder) are also the user's to fix: :func:`user_message` turns them into one
line too, while any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

# The file system refused: no space or quota, read-only, permissions, a path through a file.
IO_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EFBIG,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EEXIST,
        errno.ENAMETOOLONG,
    }
)
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "StorageFull")
RESUME_HINT = "rerun the same command to resume; finished work is kept"


class EktError(Exception):
    """A problem the user can fix; the message names the file/line or option."""


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def free_bytes(path: str | Path) -> int | None:
    """Bytes an unprivileged writer may still use on the file system holding ``path``."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


FULL_BELOW = 1 << 20  # a file system with less than this free counts as full


def user_message(exc: BaseException, out: str | Path | None = None) -> str | None:
    """One line for an error the user can fix, or None for a bug (which keeps its traceback).

    EktError messages are returned as they are; an OSError from the file system
    (see ``IO_ERRNOS``) anywhere in the exception's chain becomes ``path: reason``.
    Libraries that hide the OSError behind their own exception when the disk fills
    are recognised by their message (safetensors) or, when ``out`` (the command's
    output path) is given, by the disk holding it being full right after the failure
    (torch's checkpoint writer says only ``iostream error`` or ``unexpected pos``).
    """
    if isinstance(exc, EktError):
        return str(exc)
    chain = _chain(exc)
    for e in chain:
        if isinstance(e, OSError) and e.errno in IO_ERRNOS:
            where = e.filename if e.filename is not None else "a file"
            if e.filename2 is not None:
                where = f"{where} -> {e.filename2}"
            why = e.strerror or errno.errorcode.get(e.errno or 0, "error")
            if e.errno in _FULL:
                return f"{where}: {why}; free some space, then {RESUME_HINT}"
            if e.errno in (errno.EEXIST, errno.ENOTDIR):
                return f"{where}: {why} (a file stands where a folder is needed)"
            return f"{where}: {why}"
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    if any(t in str(e) for e in chain for t in _FULL_TEXT):
        return (
            f"could not write a file ({type(exc).__name__}: {first}); "
            f"the disk is full: free some space, then {RESUME_HINT}"
        )
    if out is not None:
        free = free_bytes(out)
        if free is not None and free < FULL_BELOW:
            return (
                f"the disk holding {out} is full ({free} bytes free; {type(exc).__name__}: "
                f"{first}): free some space, then {RESUME_HINT}"
            )
    return None
