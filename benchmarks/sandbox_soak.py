"""Sandbox soak: a long stream of programs through one ``Sandbox``, watching for leaks.

The stream (``--programs``, default 100,000) mixes, per 1,000 programs:

* 400 ``correct``: small arithmetic programs returning a known number;
* 250 ``wrong``: the same kind returning another number, a string, None, NaN, a bool,
  or an object whose ``__eq__`` always says yes;
* 200 ``error``: programs that raise (division by zero, a missing name, a syntax
  error, no ``solution``, ``sys.exit``, recursion past the limit, ...);
* 149 ``hostile``: fork, subprocess, exec, signalling the parent or everyone, sockets,
  huge memory, a print flood, a file past the size limit, a descriptor flood, raising
  rlimits, closing the result pipe, ``os._exit``, threads left running, reading the
  task data or /etc/shadow, writing outside the scratch folder, ``setsid``, ...;
* 1 ``slow``: sleeps or spins past the (short) timeout, or recurses with the limit
  lifted until the C stack overflows.

Each result is checked against what its program must give: a correct program must
come back ``ok`` and grade correct (``ekt.data.grading``), a wrong one ``ok`` and grade
wrong, an erroring one ``error``, a slow one ``timeout``; a hostile one may end any
way but never as a correct answer, and the host must live on.

Every ``--every`` programs (default 10,000) a line reports the throughput of that
stretch and overall, the host process's RSS, its open file descriptors, its live
descendant processes and the status counts. At the end the sandbox is closed and
the benchmark counts what is left: descriptors beyond those open before the sandbox
started, descendant processes still alive (this process is made a child subreaper,
so anything a worker left behind is re-parented here and cannot hide under init),
and scratch folders left in a private temporary directory.

``rss_growth_mb`` is RSS at the end minus RSS after the first report (start-up and
allocator warm-up excluded); the RSS before the sandbox started is printed too.

The last line is machine-readable::

    programs=<n> rss_growth_mb=<x> leaked_fds=<n> stray_procs=<n>

Usage: ``nice -n 10 python benchmarks/sandbox_soak.py [--programs N] [--workers W]``
"""

from __future__ import annotations

import argparse
import ctypes
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator

PER_MILLE = [("correct", 400), ("wrong", 250), ("error", 200), ("hostile", 149), ("slow", 1)]
_SLOTS = [name for name, n in PER_MILLE for _ in range(n)]

HEADER = "def solution():\n"

HOSTILE = [
    ("fork", "    import os\n    os.fork()\n    return 1\n"),
    ("subprocess", "    import subprocess\n    subprocess.run(['sleep', '60'])\n    return 1\n"),
    (
        "kill-parent",
        "    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n    return 1\n",
    ),
    ("kill-all", "    import os, signal\n    os.kill(-1, signal.SIGKILL)\n    return 1\n"),
    ("socket", "    import socket\n    socket.create_connection(('127.0.0.1', 22), 1)\n"),
    ("memory", "    x = bytearray(8 << 30)\n    return len(x)\n"),
    ("memory-slow", "    x = []\n    while True:\n        x.append(' ' * (1 << 20))\n"),
    ("print-flood", "    for i in range(20000):\n        print('x' * 200)\n    return 7\n"),
    (
        "file-flood",
        "    with open('big.bin', 'wb') as f:\n"
        "        for _ in range(64):\n"
        "            f.write(b'0' * (1 << 20))\n"
        "    return 1\n",
    ),
    ("fd-flood", "    fs = [open('/dev/null') for _ in range(100000)]\n    return len(fs)\n"),
    (
        "rlimit-raise",
        "    import resource\n    resource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n    return 1\n",
    ),
    ("close-fds", "    import os\n    os.closerange(0, 1024)\n    return 1\n"),
    ("os-exit", "    import os\n    os._exit(0)\n"),
    (
        "thread-left",
        "    import threading, time\n"
        "    threading.Thread(target=time.sleep, args=(60,)).start()\n"
        "    return 1\n",
    ),
    (
        "daemon-thread",
        "    import threading\n"
        "    threading.Thread(target=lambda: [0 for _ in iter(int, 1)], daemon=True).start()\n"
        "    return 2\n",
    ),
    (
        "read-data",
        "    import os\n"
        "    d = os.environ.get('EKT_DATA_DIR', '/work/shared/data/gsm8k')\n"
        "    return open(os.path.join(d, 'train.jsonl')).read(100)\n",
    ),
    ("read-passwd", "    return open('/etc/shadow').read(50)\n"),
    ("write-outside", "    open('/tmp/ekt-soak-escape', 'w').write('x')\n    return 1\n"),
    ("setsid", "    import os\n    os.setsid()\n    return 1\n"),
    (
        "signal-ignore",
        "    import signal\n    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n    return 3\n",
    ),
    ("huge-int", "    return 10 ** 100000\n"),
    (
        "eq-always",
        "    class A:\n        def __eq__(self, o):\n            return True\n    return A()\n",
    ),
    ("exec-shell", "    import os\n    os.execv('/bin/sh', ['sh', '-c', 'sleep 60'])\n"),
]


def _program(i: int, timeout: float) -> tuple[str, str, float | None, str]:
    """(kind, text, gold, label) of the i-th program; the same i always gives the same one."""
    kind = _SLOTS[i % 1000]
    r = random.Random(i)
    a, b, c = r.randint(2, 999), r.randint(2, 99), r.randint(0, 9999)
    gold = float(a * b + c)
    body = f"    a = {a}\n    b = {b}\n    c = {c}\n    total = a * b + c\n"
    if kind == "correct":
        form = i % 4
        tail = [
            "    return total\n",
            "    return float(total)\n",
            "    from fractions import Fraction\n    return Fraction(total * 3, 3)\n",
            "    import numpy as np\n    return np.int64(total)\n",
        ][form]
        return kind, HEADER + body + tail, gold, f"correct-{form}"
    if kind == "wrong":
        form = i % 6
        tail = [
            "    return total + 1\n",
            "    return str(total)\n",
            "    return None\n",
            "    return float('nan')\n",
            "    return True\n",
            "    class A:\n        def __eq__(self, o):\n            return True\n    return A()\n",
        ][form]
        return kind, HEADER + body + tail, gold, f"wrong-{form}"
    if kind == "error":
        form = i % 7
        text = [
            HEADER + body + "    return total / 0\n",
            HEADER + body + "    return totl\n",
            HEADER + body + "    return total +\n",  # syntax error
            "def answer():\n    return 1\n",  # no solution()
            HEADER + "    import sys\n    sys.exit(3)\n",
            HEADER + "    def f(n):\n        return f(n + 1)\n    return f(0)\n",
            HEADER + "    raise ValueError('no')\n",
        ][form]
        return kind, text, gold, f"error-{form}"
    if kind == "slow":
        form = (i // 1000) % 3
        if form == 0:
            return kind, HEADER + f"    import time\n    time.sleep({timeout + 5})\n", gold, "sleep"
        if form == 1:
            return kind, HEADER + "    while True:\n        pass\n", gold, "spin"
        # recursion with the limit lifted: the C stack overflows (killed) or time runs out
        text = "    import sys\n    sys.setrecursionlimit(10**7)\n"
        text += "    def f(n):\n        return f(n + 1)\n    return f(0)\n"
        return kind, HEADER + text, gold, "deep-recursion"
    name, text = HOSTILE[(i // 1000 + i) % len(HOSTILE)]
    return kind, HEADER + text, gold, name


# -- host measurements ---------------------------------------------------------------------


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) - 1  # the listing's own descriptor


def _stat(pid: str) -> tuple[int, str] | None:
    try:
        text = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0]  # ppid, state


def descendants(root: int) -> list[tuple[int, str]]:
    """(pid, state) of every process below ``root``."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(entry)
            if st:
                children.setdefault(st[0], []).append((int(entry), st[1]))
    out, todo = [], [root]
    while todo:
        for pid, state in children.get(todo.pop(), []):
            out.append((pid, state))
            todo.append(pid)
    return out


def make_subreaper() -> bool:
    """Orphans below this process are re-parented here (PR_SET_CHILD_SUBREAPER)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def reap() -> int:
    n = 0
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return n
        if pid == 0:
            return n
        n += 1


# -- the soak ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--programs", type=int, default=100_000)
    ap.add_argument("--every", type=int, default=10_000, help="programs per report line")
    ap.add_argument("--workers", type=int, default=None, help="default: one per core")
    ap.add_argument("--timeout", type=float, default=1.0, help="seconds per program")
    ap.add_argument("--isolation", default="standard", choices=["strict", "standard", "none"])
    args = ap.parse_args(argv)
    if args.programs < 1 or args.every < 1:
        ap.error("--programs and --every must be >= 1")

    from ekt.data.grading import grade_value
    from ekt.sandbox.pool import Sandbox, SandboxConfig

    private_tmp = tempfile.mkdtemp(prefix="ekt-soak-")
    tempfile.tempdir = private_tmp  # the workers' scratch folders are made in here
    subreaper = make_subreaper()
    me = os.getpid()
    fds_before, rss_before = open_fds(), rss_mb()
    procs_before = {p for p, _ in descendants(me)}
    cfg = SandboxConfig(
        workers=args.workers, timeout=args.timeout, isolation=args.isolation, memory_mb=512
    )
    t_start = time.time()
    box = Sandbox(cfg)
    startup = time.time() - t_start
    print(
        f"sandbox: {box.n_workers} workers, timeout {args.timeout}s, isolation {args.isolation}; "
        f"started in {startup:.2f}s; protections: "
        + ", ".join(k for k, v in box.protections().items() if v),
        flush=True,
    )
    print(
        f"host before the sandbox: rss {rss_before:.1f} MB, {fds_before} fds; "
        f"subreaper {'on' if subreaper else 'OFF'}",
        flush=True,
    )

    def stream() -> Iterator[str]:
        for i in range(args.programs):
            yield _program(i, args.timeout)[1]

    statuses: Counter[str] = Counter()
    stretch: Counter[str] = Counter()
    mismatches: Counter[str] = Counter()
    examples: dict[str, str] = {}
    rss_first = None
    t0 = t_last = time.time()
    done = 0
    for i, ex in enumerate(box.run(stream())):
        kind, _, gold, label = _program(i, args.timeout)
        statuses[ex.status] += 1
        stretch[ex.status] += 1
        correct = ex.status == "ok" and grade_value(ex.value, ex.type, gold)
        expected = {
            "correct": ex.status == "ok" and correct,
            "wrong": ex.status == "ok" and not correct,
            "error": ex.status == "error",
            "slow": ex.status == "timeout" or (label == "deep-recursion" and ex.status == "killed"),
            "hostile": not correct,
        }[kind]
        if not expected:
            mismatches[label] += 1
            examples.setdefault(label, f"{ex.status} {ex.type} {ex.error[:80]!r}")
        done = i + 1
        if done % args.every == 0 or done == args.programs:
            now = time.time()
            rate = sum(stretch.values()) / max(now - t_last, 1e-9)
            live = [p for p, s in descendants(me) if s != "Z"]
            rss = rss_mb()
            if rss_first is None:
                rss_first = rss
            print(
                f"{done:>7} programs  {rate:7.1f}/s (overall {done / (now - t0):6.1f}/s)  "
                f"rss {rss:6.1f} MB  fds {open_fds():3d}  live procs {len(live):2d}  "
                + " ".join(f"{k} {v}" for k, v in sorted(stretch.items())),
                flush=True,
            )
            stretch.clear()
            t_last = now
    elapsed = time.time() - t0
    rss_end = rss_mb()
    box.close()
    time.sleep(1.0)  # anything a worker left behind has had time to exit or be re-parented
    reaped = reap()
    stray = [p for p, s in descendants(me) if s != "Z" and p not in procs_before]
    leaked_fds = open_fds() - fds_before
    left_dirs = os.listdir(private_tmp)
    escaped = os.path.exists("/tmp/ekt-soak-escape")
    shutil.rmtree(private_tmp, ignore_errors=True)

    print(f"statuses: {dict(sorted(statuses.items()))}; {elapsed:.0f}s, {done / elapsed:.1f}/s")
    if mismatches:
        print(f"unexpected outcomes: {dict(sorted(mismatches.items()))}")
        for label, what in sorted(examples.items()):
            print(f"  e.g. {label}: {what}")
    else:
        print("unexpected outcomes: none")
    print(
        f"host: rss {rss_before:.1f} MB before the sandbox, {rss_first:.1f} MB after the first "
        f"{min(args.every, done)} programs, {rss_end:.1f} MB at the end; zombies reaped {reaped}; "
        f"scratch folders left {len(left_dirs)}; file written outside scratch: {escaped}"
    )
    growth = rss_end - (rss_first if rss_first is not None else rss_before)
    print(
        f"programs={done} rss_growth_mb={growth:.1f} leaked_fds={leaked_fds} "
        f"stray_procs={len(stray)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
