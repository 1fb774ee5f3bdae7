"""The procedural helper: generates a procedural task's items and runs its generators' checkers.

It reads JSON lines and answers each with one line:

- ``["items", generator, config, seed, size, [i, ...]]``: ``{"items": [[question, answer],
  ...]}`` for those items, or ``{"error": "..."}``;
- ``["score", generator, config, seed, size, i, text]``: ``1`` when the generator's own
  checker gives ``text`` full marks for item ``i``, else ``0``.

Items are generated here, not in the ekt process, because some generators depend on the
order of Python's hashed sets: the helper always runs with ``PYTHONHASHSEED=0``, so a task
file gives the same problems on every machine and run, and the checker sees exactly the
item the problem was made from.

Started by ``ekt.data.procedural`` (through ``ekt.data.helper.HelperProcess``), which kills
it when an answer takes too long. Some checkers parse the text with sympy, whose
``parse_expr`` evaluates Python: so before it reads its first request this helper limits its
own address space and, where the kernel allows, drops its capabilities, sets no_new_privs
and installs the sandbox's seccomp filter with filesystem writes refused (no sockets, no
processes, no exec, no writes). A hostile text can then end this helper or waste its time,
but not reach the network, a file or the ekt process. The item is generated again here from
its seed, so no gold answer is ever sent to it.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import sys
from typing import Any

MEMORY_ENV = "EKT_HELPER_MEMORY_MB"  # ekt.data.helper.MEMORY_ENV
_PR_SET_NO_NEW_PRIVS = 38


def confine() -> str:
    """Lock this process down as far as the machine allows; says what could not be done."""
    from ekt.sandbox.confine import build_seccomp, drop_capabilities, seccomp_supported

    drop_capabilities()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return "no_new_privs refused"
    if not seccomp_supported():
        return "no seccomp"
    prog = build_seccomp(allow_tgkill=False, block_fs_writes=True, allow_threads=True)
    if prog is None:
        return "no seccomp filter"
    prog.install()
    return ""


def main() -> None:
    mb = int(os.environ.get(MEMORY_ENV, "1024"))
    resource.setrlimit(resource.RLIMIT_AS, (mb << 20, mb << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.setrecursionlimit(4000)
    import reasoning_gym
    import sympy  # noqa: F401 - imported before the filter: checkers parse with it

    datasets: dict[str, object] = {}

    def dataset(name: str, config: dict, seed: int, size: int) -> Any:
        key = json.dumps([name, config, seed, size], sort_keys=True)
        if key not in datasets:
            if len(datasets) > 64:
                datasets.clear()
            datasets[key] = reasoning_gym.create_dataset(name, **config, seed=seed, size=size)
        return datasets[key]

    def items(name: str, config: dict, seed: int, size: int, indices: list[int]) -> str:
        try:
            ds = dataset(name, config, seed, size)
            rows = [[ds[i]["question"], str(ds[i]["answer"])] for i in indices]
        except Exception as e:  # an unknown name, a bad config, a generator that fails
            return json.dumps({"error": f"{type(e).__name__}: {e}"[:500]})
        return json.dumps({"items": rows})

    def score(name: str, config: dict, seed: int, size: int, index: int, text: str) -> str:
        try:
            ds = dataset(name, config, seed, size)
            ok = isinstance(text, str) and float(ds.score_answer(text, ds[index])) >= 1.0
        except (Exception, RecursionError):  # a text the checker cannot read is simply wrong
            ok = False
        return "1" if ok else "0"

    missing = confine()
    out = sys.stdout
    out.write("ready\n" if not missing else f"ready ({missing})\n")
    out.flush()
    for line in sys.stdin:
        try:
            kind, *args = json.loads(line)
            answer = items(*args) if kind == "items" else score(*args)
        except (Exception, RecursionError):  # a malformed request
            answer = "0"
        out.write(answer + "\n")
        out.flush()


if __name__ == "__main__":
    main()
