"""The Jinja2 environment of the report: templates from the package, autoescaping on.

Every template under ``ekt/report/templates`` is rendered with autoescaping,
so anything that comes from records (model output above all) is HTML-escaped
unless Python marked it safe; only ``charts`` marks its own rendered SVG safe.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

METHOD_COLORS = {
    "few-shot": "#555555",
    "none": "#9a9a9a",
    "ekt": "#1f5fbf",
    "supervised": "#2e8b57",
    "kd": "#e07b00",
    "seq-kd": "#8e44ad",
    "expert-iteration": "#c0392b",
    "grpo": "#16a085",
    "on-policy": "#d4a017",
}
EXTRA_COLORS = ["#17becf", "#bcbd22", "#8c564b", "#e377c2", "#7f7f7f", "#1b9e77"]


def color(method: str) -> str:
    """A method's colour, the same in every chart and table of the report."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    return EXTRA_COLORS[sum(map(ord, method)) % len(EXTRA_COLORS)]


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("ekt.report", "templates"),
        autoescape=select_autoescape(
            enabled_extensions=("html", "svg", "j2"), default_for_string=True, default=True
        ),
        undefined=StrictUndefined,  # a name the template expects but did not get is an error
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters["f1"] = lambda v: f"{v:.1f}"
    env.globals.update(color=color, fmt=fmt)
    return env


def fmt(v: Any) -> str:
    """A value as the report prints it: floats to 4 significant digits."""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render(template: str, **context: object) -> str:
    return environment().get_template(template).render(**context)
