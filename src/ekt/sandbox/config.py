"""Settings of the sandbox (``SandboxConfig``) and what the machine and the run imply:
the paths programs must not read, the protections this machine supports. See
docs/sandbox.md; ``ekt.sandbox.pool`` re-exports everything here.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from ekt.errors import EktError

ISOLATION = ("strict", "standard", "none")
# Layers SandboxConfig.disable may switch off, to run (and test) the fallbacks.
LAYERS = ("landlock", "seccomp", "tmpfs", "user_namespace", "ipc_namespace", "cgroup")


@dataclass
class SandboxConfig:
    workers: int | None = None  # default: os.cpu_count()
    timeout: float = 5.0  # wall-clock seconds per program, enforced by the worker
    memory_mb: int = 1024  # address space a program may add to the warm interpreter's
    cpu_seconds: int | None = None  # default: ceil(timeout) + 1
    max_output_bytes: int = 4096  # printed output kept (the last this many characters)
    isolation: str = "standard"  # strict | standard | none
    recycle_after: int = 5000  # a worker is replaced after this many programs
    fsize_bytes: int = 1 << 20  # RLIMIT_FSIZE: the largest file a program may write
    # The scratch quota: bytes (MB) and files (directories included) a program may leave
    # in its scratch directory. A tmpfs of this size where the worker can mount one (root,
    # or a user namespace), else the worker watches the usage (see docs/sandbox.md).
    scratch_mb: int = 64
    scratch_files: int = 4096
    # Tasks (processes and threads) a worker and its child may hold together, enforced
    # by a pids cgroup per worker where cgroups are writable; elsewhere threads are
    # refused outright by the seccomp filter.
    max_tasks: int = 64
    # Protection layers to switch off: landlock, seccomp, tmpfs, user_namespace,
    # ipc_namespace, cgroup (any of them), to run the fallbacks (tests) or to work around a
    # machine where one misbehaves; 'strict' still insists on its list.
    disable: list[str] = field(default_factory=list)
    # Paths programs must never read. None: the task data ($EKT_DATA_DIR) and the HF
    # datasets cache; verify/evaluate add the --data-dir they load gold answers from.
    deny_read: list[str] | None = None
    allow_read: list[str] = field(default_factory=list)  # extra read-only paths
    # Modules each worker imports once (None: ekt.sandbox.child.DEFAULT_PRELOAD). Every
    # module makes each fork dearer; one a program imports itself costs it a few ms.
    preload: list[str] | None = None
    # Pin worker i (and so every child it forks) to the i-th CPU this process may use,
    # when the pool has exactly one worker per such CPU (the default size). A fork then
    # flushes the TLB of one CPU instead of interrupting the others, and the child runs
    # where its pages are cached: about a quarter less CPU per program on a 2-core VM
    # (benchmarks/sandbox_throughput.py). A smaller pool is not pinned: other pools
    # (Ray actors, other ekt processes) may share the machine. Off: the scheduler places.
    pin_workers: bool = True

    def validate(self) -> None:
        if self.isolation not in ISOLATION:
            raise EktError(
                f"sandbox isolation must be one of {', '.join(ISOLATION)}, "
                f"got {self.isolation!r}"
            )
        if not (isinstance(self.timeout, int | float) and self.timeout > 0):
            raise EktError(f"sandbox timeout must be > 0 seconds, got {self.timeout!r}")
        if self.workers is not None and self.workers < 1:
            raise EktError(f"sandbox workers must be >= 1, got {self.workers}")
        if self.memory_mb < 16:
            raise EktError(f"sandbox memory_mb must be >= 16, got {self.memory_mb}")
        if self.cpu_seconds is not None and self.cpu_seconds < 1:
            raise EktError(f"sandbox cpu_seconds must be >= 1, got {self.cpu_seconds}")
        if self.max_output_bytes < 0:
            raise EktError(f"sandbox max_output_bytes must be >= 0, got {self.max_output_bytes}")
        if self.recycle_after < 1:
            raise EktError(f"sandbox recycle_after must be >= 1, got {self.recycle_after}")
        if self.scratch_mb < 1:
            raise EktError(f"sandbox scratch_mb must be >= 1, got {self.scratch_mb}")
        if self.scratch_files < 16:
            raise EktError(f"sandbox scratch_files must be >= 16, got {self.scratch_files}")
        if self.max_tasks < 8:
            raise EktError(f"sandbox max_tasks must be >= 8, got {self.max_tasks}")
        bad = [x for x in self.disable if x not in LAYERS] if isinstance(
            self.disable, list | tuple) else [self.disable]
        if bad:
            raise EktError(
                f"sandbox disable takes a list of {', '.join(LAYERS)}; got {bad!r}"
            )
        for name in ("deny_read", "allow_read", "preload"):
            paths = getattr(self, name) or []
            if isinstance(paths, str) or not all(isinstance(p, str) for p in paths):
                raise EktError(f"sandbox {name} must be a list of paths, got {paths!r}")


def default_deny_read() -> list[str]:
    """Where gold answers live by default: $EKT_DATA_DIR and every Hugging Face cache
    (all of $HF_HOME: datasets keeps hub downloads under hub/, not only datasets/)."""
    env = os.environ
    home = os.path.expanduser("~")
    xdg = env.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    out = [env.get("EKT_DATA_DIR", ""), env.get("HF_HOME", ""),
           os.path.join(xdg, "huggingface"), os.path.join(home, ".cache", "huggingface")]
    out += [env.get(k, "") for k in ("HF_DATASETS_CACHE", "HF_HUB_CACHE",
                                     "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE")]
    return [p for p in dict.fromkeys(out) if p]


def run_deny_read(*paths: str | os.PathLike) -> list[str]:
    """What of a run programs must not read: the folder of each file a stage reads or
    writes (samples, other programs, results), or the file alone where that folder
    also holds the interpreter or a ``sys.path`` entry (denying it would deny Python)."""
    keep = [os.path.realpath(p) for p in
            (sys.prefix, sys.base_prefix, *[x for x in sys.path if x], os.path.expanduser("~"))]
    out: list[str] = []
    for p in paths:
        f = os.path.realpath(os.fspath(p))
        d = os.path.dirname(f)
        holds = d == "/" or any(k == d or k.startswith(d.rstrip("/") + "/") for k in keep)
        out.append(f if holds else d)
    return list(dict.fromkeys(out))


def detect_protections() -> dict[str, bool]:
    """What this machine supports (a Sandbox reports what it uses: Sandbox.protections)."""
    from ekt.sandbox import confine as child

    linux = sys.platform.startswith("linux")
    abi = child.landlock_abi() if linux else 0
    return {
        "fork_per_program": hasattr(os, "fork"),
        "process_group": linux,
        "rlimits": linux,
        "seccomp": linux and child.seccomp_supported(),
        "scratch_tmpfs": linux and child.tmpfs_supported(),  # root, or a user namespace
        "landlock": abi >= 1,  # the filesystem rule: read allow-list, writes in scratch only
        "landlock_net": abi >= 4,
        "landlock_signal_scope": abi >= 6,
    }
