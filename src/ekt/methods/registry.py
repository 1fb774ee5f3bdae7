"""Every training method ekt runs, in the order ``ekt run`` trains them when listed.

Adding a method is one module of this package with its ``METHOD`` (``ekt.methods.base``)
plus its line here (and, with a settings block, that block's field of the run config).
The run config's ``methods:`` choices, the run, ``--dry-run``, ``ekt export --method``,
the report and the CLI read this table.
"""

from __future__ import annotations

from ekt.errors import EktError
from ekt.methods import ekt, expert_iteration, grpo, kd, onpolicy, seqkd, supervised
from ekt.methods.base import Method

REGISTRY: dict[str, Method] = {
    m.name: m
    for m in (
        ekt.METHOD,
        supervised.METHOD,
        kd.METHOD,
        seqkd.METHOD,
        expert_iteration.METHOD,
        grpo.METHOD,
        onpolicy.METHOD,
    )
}
NAMES: tuple[str, ...] = tuple(REGISTRY)


def get(name: str) -> Method:
    try:
        return REGISTRY[name]
    except KeyError:
        raise EktError(f"unknown method {name!r}; available: {', '.join(NAMES)}") from None


def stale_globs(key: str) -> tuple[str, ...]:
    """The run-folder globs of every method's outputs a change of config ``key`` makes stale."""
    return tuple(g for m in REGISTRY.values() for g in m.stale_on(key))


def invalidating_keys() -> frozenset[str]:
    """Every config key some method's outputs depend on."""
    return frozenset(k for m in REGISTRY.values() for k in m.invalidated_by)


def harmless_keys() -> frozenset[str]:
    """The config keys of the methods' blocks that change no result."""
    return frozenset(k for m in REGISTRY.values() for k in m.harmless)


def with_teacher() -> tuple[str, ...]:
    """Methods whose student depends on the teacher."""
    return tuple(n for n, m in REGISTRY.items() if m.uses_teacher)
