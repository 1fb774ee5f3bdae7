"""Help pages kept on disk, so that ``ekt --help`` and ``ekt COMMAND --help`` print without
importing the CLI (jsonargparse and the options' modules).

A page is rendered once by ``ekt.cli`` and stored under
``$EKT_CACHE_DIR/help/<command>-<key>.txt``; the key hashes every ekt source file's name, size
and modification time, the Python version, the installed jsonargparse (which lays the pages
out: its ``__init__.py``'s size and time, found without ``importlib.metadata``, whose scan
of every installed distribution costs a tenth of a second) and the terminal width, so an
edited, upgraded or resized setup renders its pages again. The key is computed once per
process. Only the standard library is imported here. Building a page uncached must also be
fast (``ekt.cli`` imports no stage to build a parser): the cache is the second line.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import sys
from pathlib import Path

HELP_FLAGS = ("-h", "--help", "--help-all")
ALL = "-all"  # the topic of ``ekt COMMAND --help-all``: COMMAND-all
_PACKAGES = ("jsonargparse",)


def help_topic(argv: list[str]) -> str | None:
    """``"ekt"`` for ``ekt --help``, the command for ``ekt COMMAND ... --help`` (``COMMAND-all``
    for ``--help-all``: every option), else None."""
    args = [a for a in argv if a != "--debug"]
    if not args:
        return None
    if args[0] in HELP_FLAGS:
        return "ekt"
    if args[0].startswith("-") or not any(a in HELP_FLAGS for a in args[1:]):
        return None
    if not args[0].isidentifier():
        return None
    return args[0] + ALL if "--help-all" in args[1:] else args[0]


@functools.lru_cache(maxsize=1)
def _key() -> str:
    from importlib.util import find_spec

    h = hashlib.sha256(sys.version.encode())
    root = Path(__file__).resolve().parent
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith((".py", ".yaml", ".j2")):
                st = os.stat(os.path.join(folder, name))
                h.update(f"{folder}/{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    for package in _PACKAGES:
        spec = find_spec(package)
        try:
            st = os.stat(spec.origin)  # type: ignore[union-attr,arg-type]
            h.update(f"{package}={spec.origin}:{st.st_size}:{st.st_mtime_ns}\n".encode())  # type: ignore[union-attr]
        except (AttributeError, TypeError, OSError):
            h.update(f"{package}=none\n".encode())
    h.update(f"columns={shutil.get_terminal_size().columns}".encode())
    return h.hexdigest()[:16]


def _path(topic: str) -> Path:
    base = os.environ.get("EKT_CACHE_DIR") or Path.home() / ".cache" / "ekt"
    return Path(base).expanduser() / "help" / f"{topic}-{_key()}.txt"


def cached(argv: list[str]) -> str | None:
    """The stored help page ``argv`` asks for, or None (not a help request, or not stored)."""
    topic = help_topic(argv)
    if topic is None:
        return None
    try:
        return _path(topic).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def store(topic: str, text: str) -> None:
    """Keep a rendered page (best effort: a read-only cache only costs speed)."""
    try:
        path = _path(topic)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass
