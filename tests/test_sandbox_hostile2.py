"""Hostile programs, second round: each class of issue 14 with its exact outcome.

Every test runs twice, on a sandbox with its scratch tmpfs and on one without it
(``disable=["tmpfs"]``: the worker then watches the scratch usage), and ``make test``
runs this whole file a second time as root without CAP_SYS_ADMIN (what a non-root
user gets: the tmpfs then comes from an unprivileged user namespace, or not at all):
see ``test_whole_file_again_without_cap_sys_admin`` at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from ekt.errors import EktError
from ekt.records import JsonlWriter, read_jsonl
from ekt.sandbox.pool import Sandbox, SandboxConfig, default_deny_read, detect_protections
from ekt.sandbox.scratch import remove_tree

pytestmark = [  # slow: reruns the sandbox suite without CAP_SYS_ADMIN (`make test` only)
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only"),
]

SUPPORT = detect_protections() if sys.platform.startswith("linux") else {}
FULL = all(SUPPORT.get(k) for k in ("seccomp", "landlock", "scratch_tmpfs"))
MODE = os.environ.get("EKT_SANDBOX_TEST_MODE", "")  # "nocap": re-run without CAP_SYS_ADMIN
REPO = Path(__file__).resolve().parents[1]
CAP_SYS_ADMIN = 1 << 21
MAX_TASKS = 32


def _cap_eff() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def _sysv() -> dict[str, list[str]]:
    out = {}
    for kind in ("shm", "msg", "sem"):
        try:
            out[kind] = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]
        except OSError:
            out[kind] = []
    return out


def _box(scratch: str, **kw) -> Sandbox:
    disable = list(kw.pop("disable", []))
    if scratch == "no_tmpfs":
        disable.append("tmpfs")
    isolation = kw.pop("isolation", "strict" if FULL and scratch == "tmpfs" else "standard")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Sandbox(SandboxConfig(isolation=isolation, disable=disable, **kw))


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sentinel2")
    (d / "keep.txt").write_text("do not touch\n")
    return d


@pytest.fixture(scope="module", params=["tmpfs", "no_tmpfs"])
def box(request, sentinel):
    if request.param == "tmpfs" and not SUPPORT.get("scratch_tmpfs"):
        pytest.skip("no tmpfs here: no CAP_SYS_ADMIN and no unprivileged user namespace")
    sysv = _sysv()
    sb = _box(request.param, workers=2, timeout=5.0, max_tasks=MAX_TASKS, scratch_mb=16,
              scratch_files=2048, deny_read=[str(sentinel)])
    sb.mode = request.param  # type: ignore[attr-defined]
    yield sb
    roots = [w.scratch_root for w in sb._workers if w is not None]
    sb.close()
    assert all(not os.path.exists(r) for r in roots), "a scratch directory outlived ekt"
    assert _sysv() == sysv, "a System V object outlived the sandbox"
    assert (sentinel / "keep.txt").read_text() == "do not touch\n"


def run1(sb: Sandbox, program: str):
    return next(sb.run([program]))


def test_mode_is_what_it_says(box):
    p = box.protections()
    if MODE == "nocap":
        assert not _cap_eff() & CAP_SYS_ADMIN
    if box.mode == "tmpfs":
        assert p["scratch_quota"] and not p["scratch_quota_watch"]
        if MODE == "nocap":  # no CAP_SYS_ADMIN: only a user namespace can give the tmpfs
            assert p["user_namespace"]
    else:
        assert p["scratch_quota_watch"] and not p["scratch_quota"]
    assert p["tasks_limit"] and p["ipc_refused"] == p["seccomp"]


# -- 1. text a program makes never breaks a record ----------------------------------------

SURROGATES = [
    ("def solution():\n    return '\\ud83d\\ude00 and \\ud83d'\n", "value",
     "\U0001f600 and \ufffd"),
    ("def solution():\n    print('\\udc80 x')\n    return 1\n", "stdout_tail", "\ufffd x\n"),
    ("def solution():\n    raise ValueError('bad \\ud800')\n", "error", "bad \ufffd"),
    ("class E(Exception):\n    def __str__(self):\n        return 'x\\udfff\\ud800'\n"
     "def solution():\n    raise E()\n", "error", "x\ufffd\ufffd"),
]


def test_surrogates_become_valid_text_and_records_write(box, tmp_path):
    res = list(box.run([p for p, _, _ in SURROGATES]))
    for ex, (_, field, want) in zip(res, SURROGATES, strict=True):
        assert getattr(ex, field) == want, ex
    out = tmp_path / "executions.jsonl"
    with JsonlWriter(out) as w:
        for ex in res:
            w.write(ex)
    rows = [obj for _, obj in read_jsonl(out)]
    assert [r[f] for r, (_, f, _) in zip(rows, SURROGATES, strict=True)] == [
        w for _, _, w in SURROGATES]


def test_writer_never_crashes_on_text_and_names_bad_records(tmp_path):
    out = tmp_path / "x.jsonl"
    with JsonlWriter(out) as w:
        w.write({"a": "\ud83d\ude00", "b": "lone \udc00"})
        with pytest.raises(EktError, match=r"x\.jsonl: cannot write a record as JSON"):
            w.write({"c": object()})
    assert [obj for _, obj in read_jsonl(out)] == [{"a": "\U0001f600", "b": "lone \ufffd"}]


# -- 2. no System V IPC or POSIX message queue ---------------------------------------------

IPC_PROBE = """
import ctypes, ctypes.util, errno
def solution():
    c = ctypes.CDLL(None, use_errno=True)
    rt = ctypes.CDLL(ctypes.util.find_library('rt') or None, use_errno=True)
    out = []
    for call in (lambda: c.shmget(0x4b7e, 4096, 0o1600), lambda: c.msgget(0x4b7e, 0o1600),
                 lambda: c.semget(0x4b7e, 1, 0o1600),
                 lambda: rt.mq_open(b'/ekt-q', 0o100 | 2, 0o600, None)):
        r = call()
        out.append('ok' if r >= 0 else errno.errorcode[ctypes.get_errno()])
    return ' '.join(out)
"""


def test_sysv_ipc_and_mq_refused(box):
    if not box.protections()["seccomp"]:
        pytest.skip("needs seccomp")
    before = _sysv()
    ex = run1(box, IPC_PROBE)
    assert (ex.status, ex.value) == ("ok", "EPERM EPERM EPERM EPERM"), ex
    assert _sysv() == before


def test_sysv_ipc_without_seccomp_leaves_nothing_for_the_next_program():
    """Without the filter, the worker's private IPC namespace holds what a program
    makes, and the worker removes it after the program: nothing reaches the next one,
    nothing reaches the host."""
    before = _sysv()
    sb = _box("tmpfs", workers=1, timeout=5.0, disable=["seccomp"], isolation="standard")
    make = ("import ctypes\ndef solution():\n    c = ctypes.CDLL(None)\n"
            "    return [c.shmget(0x4b7f, 4096, 0o1600) >= 0, c.msgget(0x4b7f, 0o1600) >= 0]\n")
    look = ("import ctypes\ndef solution():\n    c = ctypes.CDLL(None)\n"
            "    return str([c.shmget(0x4b7f, 0, 0), c.msgget(0x4b7f, 0)])\n")
    with sb:
        if not sb.protections()["ipc_namespace"]:
            pytest.skip("no private IPC namespace here")
        res = list(sb.run([make, look, make, look]))
        assert _sysv() == before
    assert [(e.status, e.value) for e in res][1::2] == [("ok", "[-1, -1]")] * 2
    assert _sysv() == before


# -- 3. a child holds nothing of another program -------------------------------------------

MATE = "def solution():\n    note = 'MKq7zz-{i}: the answer is {i}'\n    return {i}\n"
SCANNER = """
import gc, sys
def solution():
    m = 'MK' + 'q7' + 'zz'
    mb = m.encode()
    hits = []
    seen = set()
    todo = list(gc.get_objects()) + list(sys.modules.values())
    f = sys._getframe()
    while f is not None:
        todo += [f.f_locals, f.f_globals, f.f_code]
        f = f.f_back
    n = 0
    while todo and n < 3_000_000:
        o = todo.pop()
        n += 1
        if id(o) in seen:
            continue
        seen.add(id(o))
        t = type(o)
        if t is str:
            if m in o and o is not m:
                hits.append(o[:40])
            continue
        if t is bytes or t is bytearray:
            if mb in o and o is not mb:
                hits.append(repr(o[o.find(mb):][:40]))
            continue
        if t is memoryview:
            todo.append(o.obj)
            continue
        try:
            todo.extend(gc.get_referents(o))
        except Exception:
            pass
        if t is type(solution.__code__):
            todo.extend(o.co_consts)
            todo.append(o.co_code)
    return str(hits[:3])
"""


def test_child_finds_no_batch_mate_in_its_memory(box):
    """Programs for the same question queued around a scanner: the scanner walks every
    object the interpreter can reach (gc, frames, modules, code, buffers) for a marker
    only its batch-mates hold, and finds none."""
    progs = []
    for i in range(6):
        progs += [MATE.format(i=i), SCANNER, MATE.format(i=i + 100)]
    res = list(box.run(progs))
    assert [(e.status, e.value) for e in res[1::3]] == [("ok", "[]")] * 6, res[1::3]
    assert [e.value for e in res[0::3]] == list(range(6))


RAW_SCANNER = """
import ctypes, gc, mmap, os
def solution():
    m = bytes([77, 75]) + b'q7zz'  # built at run time: no other copy of it exists
    libc = ctypes.CDLL(None, use_errno=True)
    rfd, wfd = os.pipe()
    span = 1 << 20
    bases = set()
    for o in gc.get_objects():
        a = id(o) & ~(span - 1)
        bases.update((a - span, a, a + span))
    buf = mmap.mmap(-1, span)
    view = memoryview(buf)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    hits = []
    for base in sorted(bases):
        if base <= 0 or addr - span <= base <= addr + span:
            continue
        for off in range(0, span, 4096):  # through a pipe: an unreadable page is EFAULT
            if libc.write(wfd, ctypes.c_void_p(base + off), 4096) == 4096:
                os.readv(rfd, [view[off:off + 4096]])  # into the mmap: no copy on the heap
            else:
                view[off:off + 4096] = bytes(4096)
        i = buf.find(m)
        while i >= 0:
            if not id(m) <= base + i < id(m) + 64:
                hits.append(buf[max(0, i - 8):i + 24])
            i = buf.find(m, i + 1)
    return str(hits[:3])
"""


def test_child_finds_no_batch_mate_even_in_raw_memory(box):
    """The same, reading raw memory with ctypes around every heap arena (freed blocks
    included): the worker never held a batch-mate's text, code or result outside the
    buffers it zeroes, so not even freed memory has one."""
    progs = []
    for i in range(4):
        progs += [MATE.format(i=i), RAW_SCANNER, MATE.format(i=i + 100)]
    res = list(box.run(progs))
    assert [(e.status, e.value) for e in res[1::3]] == [("ok", "[]")] * 4, res[1::3]


# -- 4. tasks per child are bounded, and EAGAIN is survived ------------------------------

THREADS = """
import threading, time
def solution():
    threading.stack_size(1 << 16)
    n = 0
    ev = threading.Event()
    try:
        for _ in range(3000):
            threading.Thread(target=ev.wait, daemon=True).start()
            n += 1
    except RuntimeError:
        pass
    ev.set()
    return n
"""


def test_thread_bomb_is_bounded_and_the_pool_goes_on(box):
    res = list(box.run([THREADS, "def solution():\n    return 7\n"] * 3))
    p = box.protections()
    for ex in res[0::2]:
        assert ex.status == "ok", ex
        if p["tasks_cgroup"]:  # the worker and its child count too
            assert 1 <= ex.value <= MAX_TASKS - 2, ex
        else:
            assert p["threads_refused"] and ex.value == 0, ex
    assert [e.value for e in res[1::2]] == [7, 7, 7]


def test_fork_eagain_is_reported_and_the_worker_recovers():
    sb = _box("tmpfs", workers=1, timeout=5.0)
    with sb:
        (cg,) = sb.cgroups()
        if not cg:
            pytest.skip("no writable pids cgroup here")
        limit = Path(cg) / "pids.max"
        old = limit.read_text().strip()
        limit.write_text("1")  # the worker itself: no child can be forked now
        try:
            stuck = run1(sb, "def solution():\n    return 1\n")
        finally:
            limit.write_text(old)
        after = list(sb.run(["def solution():\n    return 2\n"] * 3))
    assert stuck.status == "killed" and "EAGAIN" in stuck.error, stuck
    assert [(e.status, e.value) for e in after] == [("ok", 2)] * 3


def test_large_programs_stream_without_blocking(box):
    """Programs of 40 KB each: no more text is queued behind a worker than its pipe
    holds, so the ekt process never blocks on a write while results wait."""
    big = "def solution():\n    x = " + repr("a" * 40_000) + "\n    return len(x)\n"
    res = list(box.run([big] * 12 + ["def solution():\n    return 1\n"] * 4))
    assert [(e.status, e.value) for e in res] == [("ok", 40_000)] * 12 + [("ok", 1)] * 4


# -- 5. any tree a program leaves is cleaned without recursion --------------------------

TREE = """
import os
def solution():
    os.mkfifo('fifo')
    os.symlink({sentinel!r}, 'to-sentinel')
    os.symlink('/', 'to-root')
    os.mkdir('shut', 0)
    os.mkdir('deep')
    os.chdir('deep')
    for i in range({depth}):
        os.mkdir('d')
        os.chdir('d')
    open('leaf', 'w').write('x')
    os.mkdir('shut', 0)
    return {depth}
"""


def test_deep_tree_fifos_links_and_mode0_dirs_are_cleaned(box, sentinel):
    look = "import os\ndef solution():\n    return str(sorted(os.listdir('.')))\n"
    tree = TREE.format(sentinel=str(sentinel), depth=1500)  # deeper than PATH_MAX / 2
    res = list(box.run([tree, look, tree, look]))
    if box.mode == "no_tmpfs":  # the watch cannot measure a mode-0 directory: over quota
        assert res[0].status == "killed" and "cannot measure" in res[0].error, res[0]
    else:
        assert (res[0].status, res[0].value) == ("ok", 1500), res[0]
    assert [(e.status, e.value) for e in res[1::2]] == [("ok", "[]")] * 2
    assert sorted(os.listdir(sentinel)) == ["keep.txt"]


def test_remove_tree_handles_any_depth_and_mode0(tmp_path):
    root = tmp_path / "t"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY)
    for _ in range(3000):  # far past the recursion limit and PATH_MAX
        os.mkdir("d", 0o700, dir_fd=fd)
        nxt = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    os.mkfifo("p", dir_fd=fd)
    os.symlink(str(tmp_path), "up", dir_fd=fd)
    os.mkdir("shut", 0, dir_fd=fd)
    os.fchmod(fd, 0)
    os.close(fd)
    (tmp_path / "keep").write_text("k")
    assert remove_tree(str(root))
    assert sorted(os.listdir(tmp_path)) == ["keep"]


# -- 6. the scratch quota holds, tmpfs or not ----------------------------------------------

FILL = """
def solution():
    n = 0
    try:
        for n in range({n}):
            with open('f%d' % n, 'wb') as f:
                f.write(b'x' * {size})
    except OSError as e:
        return e.errno
    return -n
"""


@pytest.mark.parametrize("what", ["bytes", "files"])
def test_scratch_quota_holds(box, what):
    prog = FILL.format(n=400, size=1_000_000) if what == "bytes" else FILL.format(n=50_000, size=0)
    res = list(box.run([prog, "import os\ndef solution():\n    return len(os.listdir('.'))\n"]))
    if box.mode == "tmpfs":
        assert (res[0].status, res[0].value) == ("ok", 28), res[0]  # ENOSPC
    else:
        want = "more than 16 MB" if what == "bytes" else "more than 2048 files"
        assert res[0].status == "killed" and want in res[0].error, res[0]
    assert (res[1].status, res[1].value) == ("ok", 0)
    small = run1(box, FILL.format(n=3, size=100_000))
    assert (small.status, small.value) == ("ok", -2)


def test_strict_refuses_without_a_quota():
    if not FULL:
        pytest.skip("strict needs seccomp and Landlock")
    with pytest.raises(EktError, match="scratch_quota .no scratch quota can be enforced"):
        Sandbox(SandboxConfig(isolation="strict", workers=1,
                              disable=["tmpfs", "user_namespace"]))


# -- 7. gold answers: no Hugging Face cache, no run folder ---------------------------------


def test_every_hf_cache_and_the_run_folder_are_unreadable(tmp_path, monkeypatch):
    if not FULL:
        pytest.skip("needs Landlock")
    hf, xdg = tmp_path / "hf", tmp_path / "xdg"
    files = [hf / "hub" / "datasets--gsm8k" / "snapshots" / "a" / "test.parquet",
             hf / "datasets" / "gsm8k" / "test.arrow",
             xdg / "huggingface" / "hub" / "x.parquet"]
    for f in files:
        f.parent.mkdir(parents=True)
        f.write_text("gold")
    monkeypatch.setenv("HF_HOME", str(hf))
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    assert {str(hf), str(xdg / "huggingface")} <= set(default_deny_read())
    with _box("tmpfs", workers=1, timeout=5.0, deny_read=None) as sb:
        res = list(sb.run([f"def solution():\n    return open({str(f)!r}).read()\n"
                           for f in files]
                          + [f"import os\ndef solution():\n    return os.listdir({str(hf)!r})\n"]))
    assert [(e.status, e.type) for e in res] == [("error", "PermissionError")] * 4


def test_ekt_verify_denies_the_run_folder(tmp_path, data_dir):
    if not FULL:
        pytest.skip("needs Landlock")
    from ekt.data.tasks import get_task

    pid = get_task("gsm8k", str(data_dir)).load("test")[0].id
    run = tmp_path / "run"
    run.mkdir()
    (run / "samples.jsonl").write_text('{"secret": 1}\n')
    programs = run / "programs.jsonl"
    peek = (f"import os\ndef solution():\n    return str(os.listdir({str(run)!r})) + "
            f"open({str(run / 'samples.jsonl')!r}).read()\n")
    programs.write_text(json.dumps({"problem_id": pid, "sample_idx": 0, "program": peek}) + "\n")
    out = run / "executions.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "ekt", "verify", "--programs", str(programs), "--out", str(out),
         "--data-dir", str(data_dir), "--isolation", "strict", "--timeout", "10"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert (row["status"], row["type"]) == ("error", "PermissionError"), row


# -- minor: inotify, xattrs, a module swapped into sys.modules ------------------------------


def test_inotify_and_xattr_listing_refused(box, sentinel):
    if not box.protections()["seccomp"]:
        pytest.skip("needs seccomp")
    prog = (
        "import ctypes, errno, os\ndef solution():\n    c = ctypes.CDLL(None, use_errno=True)\n"
        "    fd = c.inotify_init1(0)\n    a = errno.errorcode.get(ctypes.get_errno()) "
        "if fd < 0 else 'watch'\n"
        "    try:\n"
        f"        os.listxattr({str(sentinel)!r})\n        b = 'listed'\n"
        "    except OSError as e:\n        b = errno.errorcode[e.errno]\n"
        "    return a + ' ' + b\n"
    )
    ex = run1(box, prog)
    assert (ex.status, ex.value) == ("ok", "EPERM EPERM"), ex


SWAP = """
import sys, types
class Fake:
    @property
    def numerator(self):
        raise RuntimeError('a method of the returned object was called')
    denominator = numerator
    def __int__(self):
        raise RuntimeError('a method of the returned object was called')
    __float__ = __int__
fake = types.ModuleType('{mod}')
fake.Fraction = fake.Decimal = fake.int64 = fake.float64 = fake.bool_ = Fake
sys.modules['{mod}'] = fake
def solution():
    return Fake()
"""


@pytest.mark.parametrize("mod", ["fractions", "decimal", "numpy"])
def test_swapped_module_gets_no_method_called(box, mod):
    ex = run1(box, SWAP.format(mod=mod))
    assert (ex.status, ex.value, ex.type, ex.error) == (
        "ok", None, "Fake", "unsupported return type"), ex


# -- the same file without CAP_SYS_ADMIN -----------------------------------------------------


@pytest.mark.skipif(MODE == "nocap", reason="already the re-run")
def test_whole_file_again_without_cap_sys_admin():
    """As root without CAP_SYS_ADMIN (what a non-root user has: no tmpfs mount of its
    own), every test above again, and the original hostile suite."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv (util-linux) to drop CAP_SYS_ADMIN")
    proc = subprocess.run(
        ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin", "--",
         sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         str(Path(__file__)), str(REPO / "tests" / "test_sandbox.py"), "-k",
         "not oracle_corpus"],
        capture_output=True, text=True, cwd=REPO, timeout=900,
        env={**os.environ, "EKT_SANDBOX_TEST_MODE": "nocap"},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout
