"""Running untrusted programs (design and security spec: docs/sandbox.md).

``pool`` is the ekt side (``Sandbox``, ``SandboxConfig``), ``child`` the worker loop and
forked child, ``confine`` the confinement, ``wire`` the message formats. ``Sandbox`` and
``SandboxConfig`` are exported lazily: the worker (``python -P -m ekt.sandbox.child``)
imports this package and must not pull in the pool and what it imports.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ekt.sandbox.pool import Sandbox, SandboxConfig

__all__ = ["Sandbox", "SandboxConfig"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from ekt.sandbox import pool

        return getattr(pool, name)
    raise AttributeError(f"module 'ekt.sandbox' has no attribute {name!r}")
