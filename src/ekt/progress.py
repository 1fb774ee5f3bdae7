"""Progress that reads well wherever it goes: a redrawn bar on a terminal, a plain line every
few seconds in a log file (a cluster job, CI, ``> log.txt``), never ``\\r`` frames or escape
codes there.

``progress(total, desc, unit)`` returns an object with ``update(n)``, ``write(line)`` and
``close()``: tqdm's bar when its stream is a terminal, else :class:`LineProgress`, which prints
``verify: 120/500 prog (24%), 31.2 prog/s, about 12 s left`` at most every
``EKT_PROGRESS_SECONDS`` seconds (default 5) and once at the end. Only the standard library
is imported here (tqdm when a bar is drawn).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

DEFAULT_SECONDS = 5.0


def interval() -> float:
    """Seconds between two progress lines in a log file (``EKT_PROGRESS_SECONDS``)."""
    try:
        value = float(os.environ.get("EKT_PROGRESS_SECONDS", DEFAULT_SECONDS))
    except ValueError:
        return DEFAULT_SECONDS
    return value if value >= 0 else DEFAULT_SECONDS


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class LineProgress:
    """A progress report as whole lines, one every ``every`` seconds and one at ``close``."""

    def __init__(self, total: int | None, desc: str, unit: str, initial: int = 0,
                 stream: TextIO | None = None, every: float | None = None,
                 clock: Any = time.monotonic) -> None:  # fmt: skip
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.initial = initial
        self.stream = stream if stream is not None else sys.stderr
        self.every = interval() if every is None else every
        self.clock = clock
        self.t0 = self.last = clock()
        self.closed = False

    def line(self) -> str:
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        text = f"{self.desc}: {done} {self.unit}"
        if self.total:
            text += f" ({100 * self.n / self.total:.0f}%)"
        seconds = self.clock() - self.t0
        new = self.n - self.initial
        if seconds > 0 and new > 0:
            rate = new / seconds
            text += f", {rate:.1f} {self.unit}/s"
            if self.total and self.n < self.total:
                text += f", about {(self.total - self.n) / rate:.0f} s left"
        return text + f", {seconds:.0f} s"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self.write(self.line())

    def write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.n > self.initial:
                self.write(self.line())

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Off:
    """Progress switched off."""

    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def write(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


LABEL = "EKT_PROGRESS_LABEL"  # set: whole lines even on a terminal, each starting "[label] "


def progress(total: int | None, desc: str, unit: str, initial: int = 0,
             enabled: bool = True, stream: TextIO | None = None) -> Any:  # fmt: skip
    """A bar on a terminal, whole lines elsewhere (module docstring); ``enabled=False``: none.

    Processes that report side by side (``ekt run``'s parallel evaluations) set
    ``EKT_PROGRESS_LABEL``: their reports are labelled lines, never bars redrawn over each
    other."""
    if not enabled:
        return _Off()
    out = stream if stream is not None else sys.stderr
    label = os.environ.get(LABEL, "")
    if label:
        return LineProgress(total, f"[{label}] {desc}", unit, initial, out)
    if is_terminal(out):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=out)
    return LineProgress(total, desc, unit, initial, out)


__all__ = ["LABEL", "LineProgress", "progress", "interval", "is_terminal"]
