"""Hostile programs against ekt's sandbox: each case asserts its exact outcome.

After every case (an autouse fixture checks it): nothing in the sentinel directory
changed, the loopback listener received no connection, the test process has the same
open file descriptors, and the only processes below it are idle sandbox workers (no
program's process survived). One sandbox serves the whole module; timeouts are short.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from ekt.data.grading import grade_value
from ekt.errors import EktError
from ekt.sandbox.pool import Sandbox, SandboxConfig, detect_protections

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

TIMEOUT = 2.0  # seconds per program
SUPPORT = detect_protections() if sys.platform.startswith("linux") else {}
ISOLATION = "strict" if all(SUPPORT.get(k) for k in ("seccomp", "landlock", "scratch_tmpfs")) \
    else "standard"
DATA_DIR = os.path.abspath(os.environ["EKT_DATA_DIR"]) if os.environ.get("EKT_DATA_DIR") else ""
REPO = Path(__file__).resolve().parents[1]


# -- the world the programs are let loose on ------------------------------------------------


def _snapshot(root: Path) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return out


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _descendants(root_pid: int) -> dict[int, str]:
    """pid -> command line of every process below ``root_pid``."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out: dict[int, str] = {}
    todo = list(children.get(root_pid, []))
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                out[pid] = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            out[pid] = "?"
        todo += children.get(pid, [])
    return out


def _fds() -> list[str]:
    return sorted(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sentinel")
    (d / "keep.txt").write_text("do not touch\n")
    (d / "sub").mkdir()
    (d / "sub" / "nested.txt").write_text("nested\n")
    return d


@pytest.fixture(scope="module")
def listener():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    s.setblocking(False)
    yield s
    s.close()


@pytest.fixture(scope="module")
def box(sentinel: Path):
    fds_before = _fds()
    # Processes an earlier test left for the session (multiprocessing's resource tracker,
    # started by any spawn-context pool) are not the sandbox's.
    others = _descendants(os.getpid())
    deny = [str(sentinel)] + ([DATA_DIR] if DATA_DIR else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sb = Sandbox(
            SandboxConfig(workers=2, timeout=TIMEOUT, isolation=ISOLATION, deny_read=deny)
        )
    yield sb
    sb.close()
    assert _descendants(os.getpid()) == others, "a process started by the sandbox outlived it"
    assert _fds() == fds_before, "the sandbox leaked file descriptors"


@pytest.fixture(autouse=True)
def world_unchanged(request, sentinel: Path, listener):
    if "box" not in request.fixturenames:
        yield
        return
    box = request.getfixturevalue("box")
    list(box.run(["def solution():\n    return 0\n"]))  # workers started, fds settled
    before, fds = _snapshot(sentinel), _fds()
    others = {p for p, c in _descendants(os.getpid()).items() if "ekt.sandbox.child" not in c}
    yield
    assert _snapshot(sentinel) == before, "a program changed the sentinel directory"
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing connected to the loopback listener
    assert _fds() == fds, "file descriptors leaked into the test process"
    procs = _descendants(os.getpid())
    strays = {p: c for p, c in procs.items() if "ekt.sandbox.child" not in c and p not in others}
    assert not strays, f"stray processes: {strays}"
    workers = {p for p, c in procs.items() if "ekt.sandbox.child" in c}
    for pid in workers:  # workers are idle: none has a child (a program) left
        assert not _descendants(pid), f"worker {pid} still has children"
    os.kill(os.getpid(), 0)  # and we are alive


def run1(box: Sandbox, program: str):
    return next(box.run([program]))


def need(box: Sandbox, *keys: str) -> None:
    missing = [k for k in keys if not box.protections().get(k)]
    if missing:
        pytest.skip(f"not on this machine: {', '.join(missing)}")


# -- the hostile programs -------------------------------------------------------------------
# (id, program, expected): expected holds the exact status and, where given, the exact
# type, value and a fragment of the error. {sentinel}, {port}, {testpid} and {data} are
# filled in; a case needing a protection names it under "needs".

CASES: list[tuple[str, str, dict]] = [
    (
        "infinite_loop",
        "def solution():\n    while True:\n        pass\n",
        {"status": "timeout", "type": "", "value": None, "error": "deadline"},
    ),
    (
        "catch_everything_ignore_signals",
        "import signal\n"
        "def solution():\n"
        "    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU,\n"
        "              signal.SIGALRM, signal.SIGUSR1):\n"
        "        signal.signal(s, signal.SIG_IGN)\n"
        "    while True:\n"
        "        try:\n"
        "            while True:\n"
        "                pass\n"
        "        except BaseException:\n"
        "            pass\n",
        {"status": "timeout", "error": "deadline"},
    ),
    (
        "sleep_past_deadline",
        "import time\ndef solution():\n    time.sleep(100)\n    return 1\n",
        {"status": "timeout", "error": "deadline"},
    ),
    (
        "os_fork",
        "import os\ndef solution():\n    os.fork()\n    return 1\n",
        {"status": "error", "type": "PermissionError", "needs": ["seccomp"]},
    ),
    (
        "fork_bomb_retrying",
        "import os\ndef solution():\n    while True:\n        try:\n            os.fork()\n"
        "        except OSError:\n            pass\n",
        {"status": "timeout", "needs": ["seccomp"]},
    ),
    (
        "subprocess",
        "import subprocess\ndef solution():\n"
        "    return subprocess.run(['sleep', '100']).returncode\n",
        {"status": "error", "type": "PermissionError", "needs": ["seccomp"]},
    ),
    (
        "subprocess_shell_fork_bomb",
        "import subprocess\ndef solution():\n"
        "    subprocess.Popen(':(){ :|:& };:', shell=True)\n    return 1\n",
        {"status": "error", "type": "PermissionError", "needs": ["seccomp"]},
    ),
    (
        "multiprocessing_process",
        "import multiprocessing\ndef solution():\n"
        "    p = multiprocessing.Process(target=print)\n    p.start()\n    p.join()\n"
        "    return 1\n",
        {"status": "error", "type": "PermissionError", "needs": ["seccomp"]},
    ),
    (
        "multiprocessing_pool",
        "import multiprocessing\ndef solution():\n"
        "    with multiprocessing.Pool(8) as pool:\n"
        "        return sum(pool.map(abs, range(100)))\n",
        {"status": "error", "type": "PermissionError", "needs": ["seccomp"]},
    ),
    (
        "thousands_of_threads",
        "import threading, time\ndef solution():\n    threads = []\n"
        "    for _ in range(5000):\n"
        "        t = threading.Thread(target=time.sleep, args=(100,))\n"
        "        t.start()\n        threads.append(t)\n    return len(threads)\n",
        {"status": "error", "type": "RuntimeError", "error": "can't start new thread"},
    ),
    (
        "memory_bomb_at_once",
        "def solution():\n    x = bytearray(8 * 1024 ** 3)\n    return len(x)\n",
        {"status": "error", "type": "MemoryError"},
    ),
    (
        "memory_bomb_list",
        "def solution():\n    x = [0] * 10 ** 10\n    return len(x)\n",
        {"status": "error", "type": "MemoryError"},
    ),
    (
        "gigabytes_of_print",
        "def solution():\n    line = 'x' * 10 ** 6\n"
        "    for _ in range(2000):\n        print(line)\n    return 7\n",
        {"status": "ok", "type": "int", "value": 7, "stdout": "x" * 4095 + "\n"},
    ),
    (
        "gigabytes_to_fd_1",
        "import os\ndef solution():\n    block = b'x' * 10 ** 8\n    for _ in range(20):\n"
        "        os.write(1, block)\n    return 8\n",
        {"status": "ok", "type": "int", "value": 8, "stdout": ""},
    ),
    (
        "print_forever",
        "def solution():\n    while True:\n        print('spam' * 1000)\n",
        {"status": "timeout"},
    ),
    (
        "print_100000_digit_int",
        "def solution():\n    print(10 ** 100000)\n    return 1\n",
        {"status": "error", "type": "ValueError", "error": "4300 digits"},
    ),
    (
        "print_100000_digit_int_limit_lifted",
        "import sys\ndef solution():\n    sys.set_int_max_str_digits(0)\n"
        "    print(10 ** 100000)\n    return 1\n",
        {"status": "ok", "value": 1, "stdout": "0" * 4095 + "\n"},
    ),
    (
        "return_100000_digit_int",
        "def solution():\n    return 10 ** 100000\n",
        {"status": "ok", "type": "int", "value": None, "error": "int too large"},
    ),
    (
        "os_system_rm_rf_sentinel",
        "import os\ndef solution():\n    return os.system('rm -rf {sentinel}')\n",
        {"status": "ok", "type": "int", "nonzero": True, "needs": ["seccomp"]},
    ),
    (
        "shutil_rmtree_sentinel",
        "import shutil\ndef solution():\n    shutil.rmtree('{sentinel}')\n    return 1\n",
        {"status": "error", "type": "PermissionError", "needs": ["fs_read_allowlist"]},
    ),
    (
        "overwrite_sentinel_file",
        "def solution():\n    open('{sentinel}/keep.txt', 'w').write('gone')\n    return 1\n",
        {"status": "error", "type": "PermissionError", "needs": ["fs_writes_only_in_scratch"]},
    ),
    (
        "create_file_next_to_sentinel",
        "def solution():\n    open('{sentinel}/new.txt', 'x').write('x')\n    return 1\n",
        {"status": "error", "type": "PermissionError", "needs": ["fs_writes_only_in_scratch"]},
    ),
    (
        "delete_and_rename_sentinel",
        "import os\ndef solution():\n    try:\n        os.rename('{sentinel}/keep.txt', 'stolen')\n"
        "    except OSError:\n        pass\n"
        "    os.remove('{sentinel}/sub/nested.txt')\n    return 1\n",
        {"status": "error", "type": "PermissionError", "needs": ["fs_writes_only_in_scratch"]},
    ),
    (
        "chmod_outside",
        "import os\ndef solution():\n    os.chmod('{sentinel}/keep.txt', 0o777)\n    return 1\n",
        {"status": "error", "type": "PermissionError", "needs": ["seccomp"]},
    ),
    (
        "write_to_tmp",
        "def solution():\n    open('/tmp/ekt-sandbox-escape.txt', 'w').write('x')\n    return 1\n",
        {"status": "error", "type": "PermissionError", "needs": ["fs_writes_only_in_scratch"]},
    ),
    (
        "read_sentinel",
        "def solution():\n    return open('{sentinel}/keep.txt').read()\n",
        {"status": "error", "type": "PermissionError", "needs": ["fs_read_allowlist"]},
    ),
    (
        "read_etc_passwd",
        "def solution():\n    return open('/etc/passwd').read()\n",
        {"status": "error", "type": "PermissionError", "needs": ["fs_read_allowlist"]},
    ),
    (
        "read_parent_environ",
        "import os\ndef solution():\n    return open('/proc/%d/environ' % os.getppid()).read()\n",
        {"status": "error", "type": "PermissionError", "needs": ["fs_read_allowlist"]},
    ),
    (
        "scratch_read_write_delete",
        "import os, tempfile\ndef solution():\n"
        "    with open('a.txt', 'w') as f:\n        f.write('12')\n"
        "    os.mkdir('d')\n    os.rename('a.txt', 'd/b.txt')\n"
        "    n = int(open('d/b.txt').read())\n"
        "    fd, path = tempfile.mkstemp()\n    os.write(fd, b'30')\n    os.close(fd)\n"
        "    n += int(open(path).read())\n    os.remove(path)\n    os.remove('d/b.txt')\n"
        "    os.rmdir('d')\n    return n + len(os.listdir('.'))\n",
        {"status": "ok", "type": "int", "value": 42, "needs": ["scratch_writable"]},
    ),
    (
        "file_beyond_size_limit",
        "def solution():\n    open('big.bin', 'wb').write(b'x' * (8 << 20))\n    return 1\n",
        {"status": "error", "type": "OSError", "error": "File too large",
         "needs": ["scratch_writable"]},
    ),
    (
        "network_connect_to_listener",
        "import socket\ndef solution():\n"
        "    socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'x')\n"
        "    return 1\n",
        {"status": "error", "type": "PermissionError", "needs": ["seccomp"]},
    ),
    (
        "udp_and_unix_sockets",
        "import socket\ndef solution():\n    try:\n"
        "        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "        udp.sendto(b'x', ('127.0.0.1', {port}))\n"
        "    except OSError:\n        pass\n    socket.socket(socket.AF_UNIX)\n    return 1\n",
        {"status": "error", "type": "PermissionError", "needs": ["seccomp"]},
    ),
    (
        "kill_parent",
        "import os, signal\ndef solution():\n"
        "    os.kill(os.getppid(), signal.SIGKILL)\n    return 1\n",
        {"status": "error", "type": "PermissionError", "needs": ["seccomp"]},
    ),
    (
        "kill_test_process",
        "import os, signal\ndef solution():\n"
        "    os.kill({testpid}, signal.SIGKILL)\n    return 1\n",
        {"status": "error", "type": "PermissionError", "needs": ["seccomp"]},
    ),
    (
        "killpg_own_group",
        "import os, signal\ndef solution():\n    os.killpg(0, signal.SIGKILL)\n    return 1\n",
        {"status": "error", "type": "PermissionError", "needs": ["seccomp"]},
    ),
    (
        "exec_a_shell",
        "import os\ndef solution():\n    os.execv('/bin/sh', ['sh', '-c', 'true'])\n",
        {"status": "error", "type": "PermissionError", "needs": ["seccomp"]},
    ),
    (
        "raise_own_limits",
        "import resource\ndef solution():\n"
        "    resource.setrlimit(resource.RLIMIT_CPU, (10**6, 10**6))\n    return 1\n",
        {"status": "error", "type": "ValueError", "needs": ["rlimits"]},
    ),
    (
        "sys_exit",
        "import sys\ndef solution():\n    sys.exit(3)\n",
        {"status": "error", "type": "SystemExit", "error": "3"},
    ),
    (
        "os_exit",
        "import os\ndef solution():\n    os._exit(0)\n",
        {"status": "killed", "error": "exited with code 0 without a result"},
    ),
    (
        "ctypes_segfault",
        "import ctypes\ndef solution():\n    return ctypes.string_at(0)\n",
        {"status": "killed", "error": "SIGSEGV"},
    ),
    (
        "deep_recursion",
        "def f(n):\n    return f(n + 1) + 1\ndef solution():\n    return f(0)\n",
        {"status": "error", "type": "RecursionError"},
    ),
    (
        "c_stack_overflow",
        "import sys\nclass A:\n    def __getattr__(self, name):\n"
        "        return getattr(self, name)\n"
        "def solution():\n    sys.setrecursionlimit(10 ** 8)\n    return A().x\n",
        {"status": "killed", "error": "SIGSEGV"},
    ),
    (
        "close_inherited_fds",
        "import os\ndef solution():\n    for fd in range(1024):\n        try:\n"
        "            os.close(fd)\n        except OSError:\n            pass\n    return 1\n",
        {"status": "killed", "error": "without a result"},
    ),
    (
        "write_garbage_to_inherited_fds",
        "import os\ndef solution():\n    for fd in range(64):\n        try:\n"
        "            os.write(fd, b'garbage' * 1000)\n        except OSError:\n            pass\n"
        "    return 1\n",
        {"status": "killed", "error": "malformed result"},
    ),
    (
        "eq_always_true",
        "class Answer:\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = object.__hash__\n"
        "def solution():\n    return Answer()\n",
        {"status": "ok", "type": "Answer", "value": None, "graded_wrong_for": 42},
    ),
    (
        "int_subclass_eq_always_true",
        "class Sneaky(int):\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = int.__hash__\n"
        "def solution():\n    return Sneaky(41)\n",
        {"status": "ok", "type": "Sneaky", "value": None, "graded_wrong_for": 42},
    ),
    (
        "nan",
        "def solution():\n    return float('nan')\n",
        {"status": "ok", "type": "float", "value": "nan", "graded_wrong_for": 0},
    ),
    (
        "inf",
        "def solution():\n    return float('inf')\n",
        {"status": "ok", "type": "float", "value": "inf", "graded_wrong_for": 1e308},
    ),
    (
        "bool",
        "def solution():\n    return True\n",
        {"status": "ok", "type": "bool", "value": True, "graded_wrong_for": 1},
    ),
    (
        "fraction_is_a_number",
        "from fractions import Fraction\ndef solution():\n    return Fraction(3, 4)\n",
        {"status": "ok", "type": "Fraction", "value": [3, 4], "graded_right_for": 0.75},
    ),
    (
        "megabyte_program",
        "# " + "x" * (1 << 20) + "\nDATA = [" + "1, " * 100000 + "]\n"
        "def solution():\n    return len(DATA)\n",
        {"status": "ok", "type": "int", "value": 100000},
    ),
    (
        "syntax_error",
        "def solution(:\n    return 1\n",
        {"status": "error", "type": "SyntaxError"},
    ),
    (
        "no_solution",
        "def solve():\n    return 1\n",
        {"status": "error", "type": "NameError", "error": "solution"},
    ),
    (
        "lazy_imports_after_confinement",
        "import sys\ndef solution():\n"
        "    fresh = [m for m in ('cmath', 'statistics', 'heapq', 'zoneinfo', 'csv')\n"
        "             if m not in sys.modules]\n"
        "    import cmath, statistics, heapq, zoneinfo, csv, fractions, decimal, datetime\n"
        "    return len(fresh) * 100 + int(statistics.mean([1, 2, 3]))"
        " + int(cmath.sqrt(-4).imag)\n",
        {"status": "ok", "type": "int", "value": 504},
    ),
]


@pytest.mark.parametrize("name,program,want", CASES, ids=[c[0] for c in CASES])
def test_hostile_program(box, sentinel, listener, name, program, want):
    need(box, *want.get("needs", []))
    if "{" in program and name != "megabyte_program":
        program = program.replace("{sentinel}", str(sentinel))
        program = program.replace("{port}", str(listener.getsockname()[1]))
        program = program.replace("{testpid}", str(os.getpid()))
    ex = run1(box, program)
    assert ex.status == want["status"], (ex.status, ex.type, ex.error)
    for key in ("type", "value"):
        if key in want:
            assert getattr(ex, key) == want[key], (key, ex)
    if "error" in want:
        assert want["error"] in ex.error, ex
    if "stdout" in want:
        assert ex.stdout_tail.endswith(want["stdout"]) and len(ex.stdout_tail) <= 4096
    if want.get("nonzero"):
        assert ex.value != 0
    if "graded_wrong_for" in want:
        assert not grade_value(ex.value, ex.type, want["graded_wrong_for"])
    if "graded_right_for" in want:
        assert grade_value(ex.value, ex.type, want["graded_right_for"])
    if ex.status == "timeout":
        assert ex.ms >= TIMEOUT * 1000 * 0.95


def test_cases_are_many():
    assert len(CASES) >= 30


def test_gsm8k_files_unreadable(box, data_dir):
    need(box, "fs_read_allowlist")
    for path in (data_dir / "test.jsonl", data_dir / "train.jsonl"):
        ex = run1(box, f"def solution():\n    return open({str(path)!r}).read(100)\n")
        assert (ex.status, ex.type) == ("error", "PermissionError"), ex
    ex = run1(box, f"import os\ndef solution():\n    return str(os.listdir({str(data_dir)!r}))\n")
    assert (ex.status, ex.type) == ("error", "PermissionError"), ex
    need(box, "fs_writes_only_in_scratch")
    before = (data_dir / "test.jsonl").stat()
    ex = run1(box, f"def solution():\n    open({str(data_dir / 'test.jsonl')!r}, 'a').write('x')\n")
    assert (ex.status, ex.type) == ("error", "PermissionError"), ex
    after = (data_dir / "test.jsonl").stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_scratch_is_emptied_between_programs(box):
    need(box, "scratch_writable")
    leave = (
        "import os\ndef solution():\n    os.mkdir('locked', 0o300)\n"
        "    open('locked/f', 'w').write('x')\n    open('top', 'w').write('x')\n    return 1\n"
    )
    look = "import os\ndef solution():\n    return str(sorted(os.listdir('.')))\n"
    results = list(box.run([leave, look, leave, look]))
    assert [(e.status, e.value) for e in results] == [("ok", 1), ("ok", "[]")] * 2


def test_scratch_quota(box):
    need(box, "scratch_writable", "scratch_quota")
    fill = (
        "def solution():\n    n = 0\n    try:\n        while True:\n"
        "            with open('f%d' % n, 'wb') as f:\n                f.write(b'x' * 1000000)\n"
        "            n += 1\n    except OSError as e:\n        return e.errno\n"
    )
    ex = run1(box, fill)
    assert (ex.status, ex.value) == ("ok", 28)  # ENOSPC
    assert run1(box, "import os\ndef solution():\n    return len(os.listdir('.'))\n").value == 0


def test_output_and_values(box):
    ex = run1(box, "def solution():\n    print('hello')\n    return 'x' * 5000\n")
    assert (ex.status, ex.type, ex.stdout_tail) == ("ok", "str", "hello\n")
    assert ex.value == "x" * 1000


@pytest.mark.parametrize(
    ("expr", "value", "type_", "error"),
    [
        ("0", 0, "int", ""),
        ("-7", -7, "int", ""),
        ("2 ** 3322 - 1", 2**3322 - 1, "int", ""),  # the largest int with a value
        ("-(2 ** 3322) + 1", -(2**3322) + 1, "int", ""),  # its text: a sign and 1001 digits
        ("2 ** 3322", None, "int", "int too large"),  # just past the bound
        ("-(2 ** 3322)", None, "int", "int too large"),
        ("1e300", 1e300, "float", ""),
        ("-0.0", -0.0, "float", ""),
        ("0.1 + 0.2", 0.1 + 0.2, "float", ""),
        ("float('inf')", "inf", "float", ""),
        ("-float('inf')", "-inf", "float", ""),
        ("True", True, "bool", ""),
        ("None", None, "NoneType", ""),
        ("'é\\ud800'", "é\ufffd", "str", ""),  # a lone surrogate becomes U+FFFD
    ],
)
def test_returned_values_round_trip(box, expr, value, type_, error):
    """Ints and finite floats are framed inline in the child, everything else through
    plain_value: both give the same records, bounds included."""
    ex = run1(box, f"def solution():\n    print('out')\n    return {expr}\n")
    assert (ex.status, ex.type, ex.stdout_tail) == ("ok", type_, "out\n"), ex
    assert ex.value == value and type(ex.value) is type(value), ex
    assert error in ex.error


@pytest.mark.parametrize("mode", ["one_per_cpu", "fewer_workers", "off"])
def test_workers_pinned_one_per_cpu(mode):
    """A pool of one worker per CPU pins each worker (and its children) to its own CPU;
    a smaller pool, or pin_workers=False, leaves placement to the scheduler."""
    cpus = sorted(os.sched_getaffinity(0))
    if mode == "fewer_workers" and len(cpus) < 2:
        pytest.skip("needs 2 CPUs")
    workers = len(cpus) - 1 if mode == "fewer_workers" else len(cpus)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sb = Sandbox(SandboxConfig(isolation=ISOLATION, workers=workers, timeout=TIMEOUT,
                                   pin_workers=mode != "off"))
    prog = ("import os, time\ndef solution():\n    time.sleep(0.01)\n"
            "    return ','.join(map(str, sorted(os.sched_getaffinity(0))))\n")
    with sb:
        seen = {e.value for e in sb.run([prog] * (8 * workers))}
        text = sb.describe()
    if mode == "one_per_cpu":
        assert seen == {str(c) for c in cpus}, seen  # each child on one CPU, all CPUs used
        assert f"pinned to CPUs {','.join(map(str, cpus))}" in text
    else:
        assert seen == {",".join(map(str, cpus))}, seen
        assert "pinned" not in text


def test_order_and_many_programs(box):
    progs = [f"def solution():\n    return {i} * 2\n" for i in range(200)]
    progs[50] = "def solution():\n    while True:\n        pass\n"
    res = list(box.run(progs))
    assert [e.value for i, e in enumerate(res) if i != 50] == [
        i * 2 for i in range(200) if i != 50
    ]
    assert res[50].status == "timeout"


def test_workers_recycled_and_replaced():
    """Workers are replaced after ``recycle_after`` programs, and when one is killed
    from outside with its only program, that program is reported and the rest still
    run, in order."""
    import signal
    import threading

    procs = set(_descendants(os.getpid()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sb = Sandbox(SandboxConfig(isolation=ISOLATION, workers=1, timeout=TIMEOUT,
                                   recycle_after=3))
    with sb:
        pids = set()
        for i in range(7):
            assert run1(sb, f"def solution():\n    return {i}\n").value == i
            pids |= set(_descendants(os.getpid())) - procs
        assert len(pids) >= 3
        (worker,) = set(_descendants(os.getpid())) - procs
        threading.Timer(0.5, os.kill, (worker, signal.SIGKILL)).start()
        res = list(sb.run(["import time\ndef solution():\n    time.sleep(1.5)\n    return 1\n"]))
        assert (res[0].status, res[0].error) == ("killed", "sandbox worker died while "
                                                 "running this program")
        assert run1(sb, "def solution():\n    return 2\n").value == 2
    assert set(_descendants(os.getpid())) == procs


def test_slow_programs_spread_over_workers():
    """Programs are queued in batches only as deep as the workers' recent speed allows:
    slow programs that the round-robin hand-out would stack on one worker (every other
    one) end up run by both, instead of waiting behind each other on the first."""
    cpus = len(os.sched_getaffinity(0))
    if cpus < 2:
        pytest.skip("needs 2 CPUs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sb = Sandbox(SandboxConfig(isolation=ISOLATION, workers=2, timeout=TIMEOUT))
    slow = "import os, time\ndef solution():\n    time.sleep(0.15)\n    return os.getppid()\n"
    fast = "import os\ndef solution():\n    return os.getppid()\n"
    with sb:
        res = list(sb.run([slow if i % 2 == 0 else fast for i in range(16)]))
    assert all(e.status == "ok" for e in res), res
    by_worker = [e.value for i, e in enumerate(res) if i % 2 == 0]
    counts = sorted(by_worker.count(w) for w in set(by_worker))
    assert len(counts) == 2 and counts[0] >= 2, counts  # both workers ran slow ones


def test_worker_death_in_a_batch_blames_only_the_culprit():
    """Results go back per batch, so when a worker dies with several programs
    unanswered, each runs again alone: the one it dies with again is reported, the
    programs batched with it (one had finished, unreported) get their own results."""
    import signal
    import threading

    procs = set(_descendants(os.getpid()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sb = Sandbox(SandboxConfig(isolation=ISOLATION, workers=1, timeout=TIMEOUT))
    stop = threading.Event()
    kills: list[int] = []

    def watcher() -> None:  # kills the worker of any child alive for 0.3 s (the sleeper)
        first_seen: dict[int, float] = {}
        while not stop.is_set():
            for pid in set(_descendants(os.getpid())) - procs:
                worker = _parent(pid)
                if worker is None or _parent(worker) != os.getpid():
                    continue  # not a child of a worker
                t = first_seen.setdefault(pid, time.monotonic())
                if time.monotonic() - t > 0.3 and worker not in kills:
                    kills.append(worker)
                    try:
                        os.kill(worker, signal.SIGKILL)
                    except OSError:
                        pass
            time.sleep(0.02)

    progs = ["def solution():\n    return 10\n",
             "import time\ndef solution():\n    time.sleep(1.5)\n    return 1\n",
             "def solution():\n    return 12\n", "def solution():\n    return 13\n"]
    with sb:
        th = threading.Thread(target=watcher, daemon=True)
        th.start()
        try:
            res = list(sb.run(progs))
        finally:
            stop.set()
            th.join()
        assert len(kills) == 2  # once with the batch, once with the sleeper alone
        assert [(e.status, e.value) for e in res] == [
            ("ok", 10), ("killed", None), ("ok", 12), ("ok", 13)
        ]
        assert res[1].error == "sandbox worker died while running this program"
    assert set(_descendants(os.getpid())) == procs


def test_protections_and_describe(box):
    p = box.protections()
    for key in ("process_group", "wall_clock_deadline", "fd_isolation", "scratch_dir"):
        assert p[key]
    if ISOLATION == "strict":
        for key in ("seccomp", "landlock", "fs_read_allowlist", "fs_writes_only_in_scratch",
                    "deny_read_verified", "rlimits", "no_new_privs"):
            assert p[key], key
        text = box.describe()
        assert "write only in their scratch directory" in text
        assert str(Path(DATA_DIR).resolve()) in text or not DATA_DIR


def test_strict_refuses_without_landlock(monkeypatch):
    import ekt.sandbox.pool as sb

    monkeypatch.setattr(
        sb, "detect_protections", lambda: {**SUPPORT, "landlock": False}
    )
    with pytest.raises(EktError, match="Landlock"):
        Sandbox(SandboxConfig(isolation="strict", workers=1))


def test_isolation_none_says_so_loudly():
    with pytest.warns(RuntimeWarning, match="ISOLATION IS OFF"):
        with Sandbox(SandboxConfig(isolation="none", workers=1, timeout=TIMEOUT)) as sb:
            assert run1(sb, "def solution():\n    return 5\n").value == 5
            assert not sb.protections()["seccomp"]


def test_deny_path_inside_read_root_is_carved_out():
    """A denied path inside what the interpreter may read (here a package in
    site-packages) stays unreadable; its siblings stay importable; a warning says so."""
    if not (SUPPORT.get("landlock") and SUPPORT.get("seccomp")):
        pytest.skip("needs Landlock")
    import json as json_mod

    denied = Path(json_mod.__file__).resolve().parent  # the stdlib's json package
    with pytest.warns(RuntimeWarning, match="granted entry by entry"):
        sb = Sandbox(SandboxConfig(isolation="strict", workers=1, timeout=10,
                                   deny_read=[str(denied)]))
    with sb:
        assert sb.protections()["deny_read_verified"]
        bad = run1(sb, f"def solution():\n    return open({str(denied / 'decoder.py')!r}).read()\n")
        assert (bad.status, bad.type) == ("error", "PermissionError")
        ok = run1(sb, "import sys\ndef solution():\n    assert 'csv' not in sys.modules\n"
                      "    import csv\n    return 3\n")
        assert (ok.status, ok.value) == ("ok", 3)


def test_fallback_without_landlock(sentinel):
    """No Landlock (older kernels): seccomp refuses every write, the scratch directory
    included; reads are NOT restricted, which the warning says; strict refuses."""
    if not SUPPORT.get("seccomp"):
        pytest.skip("needs seccomp")
    before, procs = _snapshot(sentinel), set(_descendants(os.getpid()))
    with pytest.warns(RuntimeWarning, match="Landlock is unavailable"):
        sb = Sandbox(SandboxConfig(isolation="standard", workers=1, timeout=TIMEOUT,
                                   deny_read=[str(sentinel)], disable=["landlock"]))
    with sb:
        p = sb.protections()
        assert (p["fs_read_allowlist"], p["scratch_writable"]) == (False, False)
        assert p["fs_writes_only_in_scratch"] and "READS NOT RESTRICTED" in sb.describe()
        res = list(sb.run([
            "def solution():\n    open('x', 'w')\n",
            f"def solution():\n    open({str(sentinel / 'keep.txt')!r}, 'a')\n",
            f"def solution():\n    return open({str(sentinel / 'keep.txt')!r}).read()\n",
            "import os\ndef solution():\n    os.fork()\n",
        ]))
    assert [(e.status, e.type) for e in res] == [
        ("error", "PermissionError"), ("error", "PermissionError"), ("ok", "str"),
        ("error", "PermissionError"),
    ]
    assert _snapshot(sentinel) == before
    with pytest.raises(EktError, match="could not be met"):
        Sandbox(SandboxConfig(isolation="strict", workers=1, disable=["landlock"]))
    assert set(_descendants(os.getpid())) == procs


def test_fallback_without_seccomp_reaps_escaped_processes():
    """Without the syscall filter a program can fork; a grandchild that leaves the
    process group (setsid) and sleeps is still killed: the worker is a subreaper."""
    if not SUPPORT.get("landlock"):
        pytest.skip("needs Landlock")
    fds, procs = _fds(), set(_descendants(os.getpid()))
    escape = (
        "import os, time\ndef solution():\n    if os.fork() == 0:\n        os.setsid()\n"
        "        if os.fork() == 0:\n            time.sleep(100)\n        os._exit(0)\n"
        "    time.sleep(0.2)\n    return 1\n"
    )
    with pytest.warns(RuntimeWarning, match="seccomp is unavailable"):
        sb = Sandbox(SandboxConfig(isolation="standard", workers=1, timeout=TIMEOUT,
                                   disable=["seccomp"]))
    with sb:
        assert not sb.protections()["seccomp"]
        res = list(sb.run([escape, escape]))
        assert [(e.status, e.value) for e in res] == [("ok", 1), ("ok", 1)]
        (worker,) = set(_descendants(os.getpid())) - procs
        assert _descendants(worker) == {}, "an escaped grandchild survived"
    assert set(_descendants(os.getpid())) == procs
    assert _fds() == fds


def test_sympy_imports_lazily():
    pytest.importorskip("sympy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sb = Sandbox(SandboxConfig(isolation=ISOLATION, workers=1, timeout=60))
    with sb:
        ex = run1(sb, "import sympy\ndef solution():\n    x = sympy.Symbol('x')\n"
                      "    return int(sympy.solve(2 * x - 84, x)[0])\n")
    assert (ex.status, ex.value) == ("ok", 42), ex


# -- the oracle corpus through `ekt verify` --------------------------------------------------


def _benchmark_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "sandbox_throughput", REPO / "benchmarks" / "sandbox_throughput.py"
    )
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_oracle_corpus_through_ekt_verify(data_dir, tmp_path):
    corpus = _benchmark_module().build_corpus(str(data_dir), 150)
    kinds = {k: sum(r["kind"] == k for r in corpus) for k in ("oracle", "wrong", "raises")}
    assert kinds == {"oracle": 150, "wrong": 150, "raises": 50}
    programs = tmp_path / "programs.jsonl"
    with programs.open("w") as fh:
        for i, r in enumerate(corpus):
            fh.write(json.dumps({"problem_id": r["problem_id"], "sample_idx": i,
                                 "program": r["program"], "kind": r["kind"]}) + "\n")
    out = tmp_path / "executions.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "ekt", "verify", "--programs", str(programs), "--out", str(out),
         "--data-dir", str(data_dir), "--isolation", ISOLATION, "--timeout", "10"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(corpus)
    by_kind: dict[str, list[dict]] = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r)
    assert all(r["correct"] for r in by_kind["oracle"]), [
        r for r in by_kind["oracle"] if not r["correct"]][:3]
    assert not any(r["correct"] for r in by_kind["wrong"])
    assert all(r["status"] == "error" and not r["correct"] for r in by_kind["raises"])
    assert "150 correct" in proc.stdout
