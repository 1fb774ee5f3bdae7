"""The ranks of one distributed launch are one writer: rank 0 holds the output's lock."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from ekt.errors import EktError
from ekt.locks import lock_path, output_lock

HOLD = """
import sys, time
from ekt.locks import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(30)
"""


def test_other_ranks_of_a_launch_take_no_lock(tmp_path, monkeypatch):
    out = tmp_path / "student"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "1")
        t0 = time.monotonic()
        with output_lock(out) as lock:  # rank 1: neither waits for nor takes the lock
            assert lock == lock_path(out)
        assert time.monotonic() - t0 < 1 and lock_path(out).exists()  # still the holder's
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(EktError, match=r"another ekt process \(pid \d+"):
            with output_lock(out):
                pass
    finally:
        holder.kill()
        holder.wait()
