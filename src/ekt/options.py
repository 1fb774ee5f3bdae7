"""Fields several commands share, declared once: each command's options class (and the run
config) inherits the ones it takes, so their flag, default and help cannot drift apart.
Plain dataclasses: building a parser from them imports nothing heavy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class DeviceOption:
    device: str | None = None
    """cpu | cuda | cuda:N (None: cuda if present)"""


@dataclass
class PromptFormatOption:
    prompt_format: str = "function"
    """prompt layout: function (default), chat, tinygsm, or a YAML file (see ekt/data/formats/)"""


def required(**kw: Any) -> Any:
    """A field the command cannot run without: its flag must be given (``ekt.cli`` checks)."""
    return field(metadata={"required": True}, **kw)
