"""Sandbox throughput: ekt's sandbox vs a common-harness executor vs a bare fork.

One corpus, built from GSM8K's calculator annotations (``ekt.data.supervised``):

* ``oracle``: the reference program of a training question, kept only when a
  bounded evaluation of its arithmetic here (plain numbers and operators, no
  program is run) returns the gold answer;
* ``wrong``: a variant of an oracle program that returns something else (the
  answer plus one, an earlier step, the answer as a string, NaN, a bool, an object
  whose ``__eq__`` is always true, ...);
* ``raises``: a variant that raises (division by zero, a missing name, ``raise``,
  a type error, no ``solution`` at all).

Measured, over the same corpus and with the same per-program timeout:

(a) ``ekt.sandbox.pool.Sandbox`` at the strictest isolation this machine offers, on a
    warm pool (start-up is reported separately);
(b) a reference executor in the style of the widely used harnesses: for every
    program a fresh ``multiprocessing.Manager`` and ``multiprocessing.Process``
    running ``exec`` on it, ``join(timeout)`` and ``kill``, one thread per core;
(c) the floor: warm interpreters, one per worker, that ``fork()`` a child per
    program; the child does nothing but write one byte to a pipe and exit.
    ``floor`` uses interpreters with the sandbox worker's own pre-imports,
    ``floor_bare`` plain ones; both are pinned to CPUs exactly as the sandbox pins its
    workers (and measured unpinned too, for comparison). The last line uses
    ``floor_bare`` (the highest rate, so the strictest fraction).

Timeouts are measured separately: programs that loop forever or sleep, under a
short timeout, through (a) and (b).

The last line is machine-readable::

    programs_per_s=<a> vs_reference=<a/b>x floor_fraction=<a/c>

Usage: ``EKT_DATA_DIR=../shared/data/gsm8k python benchmarks/sandbox_throughput.py``
(``--n-oracle`` sets the corpus size: about 2.3 programs per oracle program).
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# -- the corpus ---------------------------------------------------------------------------


class _Unbounded(Exception):
    pass


_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
}


def _arith(node: ast.AST, env: dict[str, Any]) -> Any:
    """Value of a plain-arithmetic expression, or an exception; bounded so that no
    expression can take long (powers with big exponents are refused)."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.Name):
        return env[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        v = _arith(node.operand, env)
        return -v if isinstance(node.op, ast.USub) else +v
    if isinstance(node, ast.BinOp):
        a, b = _arith(node.left, env), _arith(node.right, env)
        if isinstance(node.op, ast.Pow):
            if not isinstance(b, int | float) or abs(b) > 64 or abs(a) > 1e12:
                raise _Unbounded
            v = a**b
        elif type(node.op) in _BINOPS:
            v = _BINOPS[type(node.op)](a, b)
        else:
            raise _Unbounded
        if not isinstance(v, int | float) or (isinstance(v, int) and v.bit_length() > 256):
            raise _Unbounded
        return v
    raise _Unbounded


def program_value(program: str) -> tuple[bool, Any]:
    """(ok, value) of a reference program from ``ekt.data.supervised``: its step assignments
    evaluated by :func:`_arith`; ``ok`` is False when it would raise or is unbounded."""
    fn = ast.parse(program).body[0]
    assert isinstance(fn, ast.FunctionDef)
    env: dict[str, Any] = {}
    try:
        for stmt in fn.body:
            if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name):
                env[stmt.targets[0].id] = _arith(stmt.value, env)
            elif isinstance(stmt, ast.Return) and stmt.value is not None:
                return True, _arith(stmt.value, env)
    except (ArithmeticError, _Unbounded, KeyError, TypeError, ValueError):
        return False, None
    return False, None


def _graded(value: Any, gold: float) -> bool:
    from ekt.data.grading import grade_value

    return grade_value(value, type(value).__name__, gold)


_EVIL_EQ = (
    "    class Answer:\n        def __eq__(self, other):\n            return True\n"
    "        __hash__ = object.__hash__\n    return Answer()\n"
)
_RAISE_KINDS = ("zero_division", "name_error", "raise", "type_error", "no_solution")
_WRONG_KINDS = (
    "plus_one", "previous_step", "doubled", "as_string", "nan", "bool", "eq_always_true",
    "negated",
)


def _wrong_variant(program: str, last: str, gold: float, k: int) -> str:
    """A variant of ``program`` whose result is statically not the gold answer."""
    body, _ = program.rsplit("    return ", 1)
    steps = [ln.split("=")[0].strip() for ln in body.splitlines()[1:]]
    for j in range(len(_WRONG_KINDS)):
        kind = _WRONG_KINDS[(k + j) % len(_WRONG_KINDS)]
        if kind == "as_string":
            return body + f"    return str({last})\n"
        if kind == "nan":
            return body + "    return float('nan')\n"
        if kind == "bool":
            return body + f"    return {last} == {last}\n"
        if kind == "eq_always_true":
            return body + _EVIL_EQ
        expr = {
            "plus_one": f"{last} + 1",
            "previous_step": steps[-2] if len(steps) >= 2 else "",
            "doubled": f"{last} * 2",
            "negated": f"-{last}",
        }[kind]
        if not expr:
            continue
        variant = body + f"    return {expr}\n"
        ok, value = program_value(variant)
        if ok and not _graded(value, gold):
            return variant
    return body + f"    return str({last})\n"


def _raising_variant(program: str, last: str, k: int) -> str:
    body, _ = program.rsplit("    return ", 1)
    kind = _RAISE_KINDS[k % len(_RAISE_KINDS)]
    if kind == "zero_division":
        return body + f"    return {last} / 0\n"
    if kind == "name_error":
        return body + f"    return {last} + undefined_step\n"
    if kind == "raise":
        return body + "    raise ValueError('no answer')\n"
    if kind == "type_error":
        return body + f"    return {last} + 'units'\n"
    return program.replace("def solution():", "def solve():", 1)


def build_corpus(data_dir: str | None, n_oracle: int) -> list[dict]:
    """``n_oracle`` oracle programs from the train split, one wrong variant each and a
    raising variant for every third; records with problem_id, program, kind, gold."""
    from ekt.data.supervised import reference_program
    from ekt.data.tasks import get_task

    out: list[dict] = []
    n = 0
    for p in get_task("gsm8k", data_dir=data_dir).load_file("train"):
        if n >= n_oracle:
            break
        prog = reference_program(p.solution)
        if prog is None:
            continue
        ok, value = program_value(prog)
        if not ok or not _graded(value, p.answer):
            continue
        last = prog.rsplit("    return ", 1)[1].strip()
        base = {"problem_id": p.id, "gold": p.answer}
        out.append({**base, "kind": "oracle", "program": prog})
        out.append({**base, "kind": "wrong", "program": _wrong_variant(prog, last, p.answer, n)})
        if n % 3 == 0:
            out.append({**base, "kind": "raises", "program": _raising_variant(prog, last, n)})
        n += 1
    return out


def outcome_problems(corpus: list[dict], results: list[tuple[str, Any, str]]) -> list[str]:
    """Every corpus entry whose (status, value, type) is not what its kind demands."""
    from ekt.data.grading import grade_value

    bad = []
    for rec, (status, value, tname) in zip(corpus, results):
        correct = status == "ok" and grade_value(value, tname, rec["gold"])
        want = rec["kind"] == "oracle"
        if correct != want or (rec["kind"] == "raises" and status != "error"):
            bad.append(f"{rec['problem_id']} {rec['kind']}: {status} {value!r} {tname}")
    return bad


# -- (a) ekt's sandbox --------------------------------------------------------------------


def strictest() -> str:
    from ekt.sandbox.pool import detect_protections

    d = detect_protections()
    return "strict" if d["seccomp"] and d["landlock"] else "standard"


def _cpu_seconds(pid: int) -> float:
    """CPU time of a process and of its reaped children (utime, stime, cutime, cstime)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def run_ekt(
    programs: list[str], timeout: float, workers: int, isolation: str
) -> tuple[float, float, float, list[tuple[str, Any, str]], str]:
    """(programs/s on a warm pool, CPU microseconds per program in all processes,
    start-up seconds, results, describe())."""
    from ekt.sandbox.pool import Sandbox, SandboxConfig

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        box = Sandbox(SandboxConfig(workers=workers, timeout=timeout, isolation=isolation))
    with box:
        started = time.perf_counter() - t0
        list(box.run(programs[: 4 * workers]))  # every worker has forked once
        pids = [w.proc.pid for w in box._workers if w is not None]
        cpu0 = sum(_cpu_seconds(p) for p in pids) + sum(os.times()[:2])
        t = time.perf_counter()
        res = [(e.status, e.value, e.type) for e in box.run(programs)]
        rate = len(programs) / (time.perf_counter() - t)
        cpu1 = sum(_cpu_seconds(p) for p in pids) + sum(os.times()[:2])
        cpu = (cpu1 - cpu0) / len(programs) * 1e6
        return rate, cpu, started, res, box.describe()


# -- (b) the common-harness reference -------------------------------------------------------


_GUARDED = {  # what such harnesses set to None before exec, module by module
    "os": "kill killpg system putenv remove removedirs rmdir fchdir setuid fork forkpty "
    "rename renames truncate replace unlink fchmod fchown chmod chown chroot lchown "
    "getcwd chdir",
    "shutil": "rmtree move chown",
    "subprocess": "Popen",
    "builtins": "exit quit help",
}


def _reference_target(program: str, result: Any, timeout: float) -> None:
    """In the forked process, what those harnesses do: a temporary working directory,
    destructive functions replaced by None, output swallowed, an interval timer as the
    time limit, then exec; (status, value, type) goes into the managed list."""
    import builtins
    import contextlib
    import faulthandler
    import importlib
    import io
    import shutil
    import signal
    import tempfile

    tmp = tempfile.mkdtemp()
    rmtree, chdir, cwd = shutil.rmtree, os.chdir, os.getcwd()
    os.chdir(tmp)
    saved = []
    try:
        faulthandler.disable()
        for mod, names in _GUARDED.items():
            m = builtins if mod == "builtins" else importlib.import_module(mod)
            for name in names.split():
                if hasattr(m, name):
                    saved.append((m, name, getattr(m, name)))
                    setattr(m, name, None)

        def on_alarm(signum: int, frame: Any) -> None:
            raise TimeoutError("timed out")

        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        sink = io.StringIO()
        try:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                ns: dict[str, Any] = {}
                exec(program, ns)
                v = ns["solution"]()
            t = type(v).__name__
            if type(v) is float and not math.isfinite(v):
                v = str(v)
            elif type(v) not in (int, float, str, bool):
                v = None
            result.append(("ok", v, t))
        except TimeoutError:
            result.append(("timeout", None, ""))
        except BaseException as e:  # noqa: BLE001
            result.append(("error", None, type(e).__name__))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        for m, name, value in saved:
            setattr(m, name, value)
        chdir(cwd)
        rmtree(tmp, ignore_errors=True)


def reference_check(program: str, timeout: float) -> tuple[str, Any, str]:
    import multiprocessing

    manager = multiprocessing.Manager()
    try:
        result = manager.list()
        p = multiprocessing.Process(
            target=_reference_target, args=(program, result, timeout)
        )
        p.start()
        p.join(timeout=timeout + 1)
        if p.is_alive():
            p.kill()
            p.join()
            return ("timeout", None, "")
        return tuple(result[0]) if result else ("killed", None, "")  # type: ignore[return-value]
    finally:
        manager.shutdown()


def run_reference(
    programs: list[str], timeout: float, workers: int
) -> tuple[float, list[tuple[str, Any, str]]]:
    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        res = list(pool.map(lambda prog: reference_check(prog, timeout), programs))
    return len(programs) / (time.perf_counter() - t), res


# -- (c) the floor: fork, report one byte, exit --------------------------------------------

_FLOOR = r"""
import os, sys, time
if int(sys.argv[3]) >= 0:
    os.sched_setaffinity(0, {int(sys.argv[3])})
if sys.argv[2] == "warm":
    from ekt.sandbox.child import DEFAULT_PRELOAD, _preload
    _preload(list(DEFAULT_PRELOAD))
    import gc; gc.collect(); gc.freeze()
import resource
n = int(sys.argv[1])
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
r0 = resource.getrusage(resource.RUSAGE_SELF); c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
t = time.perf_counter()
for _ in range(n):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, b"x")
        os._exit(0)
    os.close(w)
    os.read(r, 1)
    os.close(r)
    os.waitpid(pid, 0)
r1 = resource.getrusage(resource.RUSAGE_SELF); c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = sum(b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime for a, b in ((r0, r1), (c0, c1)))
print(cpu)
"""


def floor_cpus(workers: int) -> list[int]:
    """The CPUs ekt's sandbox pins its workers to (``SandboxConfig.pin_workers``), the
    same rule: one each when there is one worker per CPU; else none (-1)."""
    cpus = sorted(os.sched_getaffinity(0))
    return cpus if len(cpus) == workers else [-1] * workers


def run_floor(n: int, workers: int, warm: bool, pin: bool = True) -> tuple[float, float]:
    """(forks/s, CPU microseconds per fork); ``pin``: floor process i on ekt's CPU i."""
    per = math.ceil(n / workers)
    cpus = floor_cpus(workers) if pin else [-1] * workers
    env = {**os.environ, "PYTHONPATH": os.path.join(os.path.dirname(__file__), "..", "src")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _FLOOR, str(per), "warm" if warm else "bare", str(cpu)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        for cpu in cpus
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    t = time.perf_counter()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    cpu = 0.0
    for p in procs:
        cpu += float(p.communicate()[0])
    rate = per * workers / (time.perf_counter() - t)
    return rate, cpu / (per * workers) * 1e6


# -- timeouts --------------------------------------------------------------------------------

_TIMEOUT_PROGRAMS = (
    "def solution():\n    while True:\n        pass\n",
    "import time\n\ndef solution():\n    time.sleep(100)\n",
)


def bench_timeouts(n: int, timeout: float, workers: int, isolation: str) -> None:
    from ekt.sandbox.pool import Sandbox, SandboxConfig

    progs = [_TIMEOUT_PROGRAMS[i % 2] for i in range(n)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        box = Sandbox(SandboxConfig(workers=workers, timeout=timeout, isolation=isolation))
    with box:
        t = time.perf_counter()
        st = [e.status for e in box.run(progs)]
        a = time.perf_counter() - t
    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rs = list(pool.map(lambda prog: reference_check(prog, timeout)[0], progs))
    b = time.perf_counter() - t
    ideal = n * timeout / workers
    print(
        f"timeouts: {n} programs (loop forever / sleep 100 s), timeout {timeout:g}s, "
        f"{workers} workers; ideal {ideal:.2f}s\n"
        f"  ekt sandbox: {a:.2f}s, {st.count('timeout')}/{n} reported timeout\n"
        f"  reference:   {b:.2f}s, {rs.count('timeout')}/{n} reported timeout"
    )


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("EKT_DATA_DIR"))
    ap.add_argument("--n-oracle", type=int, default=1000, help="oracle programs in the corpus")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds per program")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=3, help="rounds of (a) and (c); medians")
    ap.add_argument("--timeouts", type=int, default=8, help="programs in the timeout run")
    args = ap.parse_args(argv)

    corpus = build_corpus(args.data_dir, args.n_oracle)
    programs = [r["program"] for r in corpus]
    kinds = {k: sum(r["kind"] == k for r in corpus) for k in ("oracle", "wrong", "raises")}
    print(f"corpus: {len(corpus)} programs ({', '.join(f'{v} {k}' for k, v in kinds.items())})")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    isolation = strictest()

    a_rates, floors, bares, cpus = [], [], [], []
    loose: list[tuple[float, float]] = []  # the floors with the scheduler placing them
    for r in range(args.repeat):
        rate, cpu, started, res, desc = run_ekt(programs, args.timeout, args.workers, isolation)
        a_rates.append(rate)
        bad = outcome_problems(corpus, res)
        floor, floor_cpu = run_floor(len(programs), args.workers, warm=True)
        bare, bare_cpu = run_floor(len(programs), args.workers, warm=False)
        loose.append((run_floor(len(programs), args.workers, warm=True, pin=False)[0],
                      run_floor(len(programs), args.workers, warm=False, pin=False)[0]))
        floors.append(floor)
        bares.append(bare)
        cpus.append((cpu, floor_cpu, bare_cpu))
        print(
            f"round {r + 1}: (a) ekt {rate:.0f}/s (pool start {started:.2f}s), "
            f"(c) floor {floor:.0f}/s, floor_bare {bare:.0f}/s (unpinned: {loose[-1][0]:.0f}/s, "
            f"{loose[-1][1]:.0f}/s); CPU per program: ekt "
            f"{cpu:.0f}us (ekt process, workers, children), floor {floor_cpu:.0f}us, "
            f"floor_bare {bare_cpu:.0f}us; outcomes wrong: {len(bad)}"
        )
        for line in bad[:10]:
            print("   ", line)
        if r == 0:
            print(f"  {desc}")
    b_rate, ref_res = run_reference(programs, args.timeout, args.workers)
    ref_bad = outcome_problems(corpus, ref_res)
    print(f"(b) reference (Manager + Process per program): {b_rate:.1f}/s; "
          f"outcomes wrong: {len(ref_bad)}")
    for line in ref_bad[:5]:
        print("   ", line)
    if args.timeouts:
        bench_timeouts(args.timeouts, 0.5, args.workers, isolation)

    a = statistics.median(a_rates)
    c = statistics.median(bares)
    warm = statistics.median(floors)
    pinned = floor_cpus(args.workers)[0] >= 0
    print(
        f"ekt sandbox ({isolation}) {a:.0f}/s [rounds: {', '.join(f'{x:.0f}' for x in a_rates)}]; "
        f"reference {b_rate:.1f}/s; floor_bare {c:.0f}/s "
        f"[{', '.join(f'{x:.0f}' for x in bares)}]; floor with the worker's pre-imports "
        f"{warm:.0f}/s [{', '.join(f'{x:.0f}' for x in floors)}]; "
        f"floors {'pinned to CPUs like the workers' if pinned else 'not pinned (too few CPUs)'}"
        f"; load average {os.getloadavg()[0]:.2f} at end"
    )
    med = [statistics.median(x[i] for x in cpus) for i in range(3)]
    print(
        f"CPU time per program (median; less sensitive to the other load on the machine): "
        f"ekt {med[0]:.0f}us, floor {med[1]:.0f}us, floor_bare {med[2]:.0f}us "
        f"(floor_bare/ekt {med[2] / med[0]:.2f})"
    )
    lw, lb = (statistics.median(x[i] for x in loose) for i in range(2))
    print(
        f"fractions: of floor_bare {a / c:.2f}, of the floor with the worker's pre-imports "
        f"{a / warm:.2f}; of the same floors left to the scheduler (unpinned; ekt pinned) "
        f"{a / lb:.2f} and {a / lw:.2f}"
    )
    print(f"programs_per_s={a:.0f} vs_reference={a / b_rate:.1f}x floor_fraction={a / c:.2f}")


if __name__ == "__main__":
    main()
