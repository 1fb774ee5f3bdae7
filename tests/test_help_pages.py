"""`ekt COMMAND --help` lists the common options and `--help-all` every one; every flag is
accepted either way (the short page only hides help text, never a flag)."""

from __future__ import annotations

import dataclasses
import io
import json
import typing
from contextlib import redirect_stdout

import pytest

from ekt.cli import HELP_COMMON, main, options_class, parse, required_keys
from ekt.pipeline.flags import leaf_keys

REQUIRED_ARGS = {"generate": ["--model", "m", "--out", "o"],
                 "evaluate": ["--model", "m", "--out", "o"],
                 "verify": ["--programs", "p", "--out", "o"],
                 "train": ["--student", "s", "--pairs", "p", "--out", "o"]}  # fmt: skip


def _page(tmp_path, monkeypatch, *argv: str) -> str:
    monkeypatch.setenv("EKT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "100")
    from ekt import helpcache

    helpcache._key.cache_clear()
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(list(argv)) == 0
    return buf.getvalue()


def test_generate_help_is_short_and_help_all_lists_every_flag(tmp_path, monkeypatch):
    short = _page(tmp_path, monkeypatch, "generate", "--help")
    full = _page(tmp_path, monkeypatch, "generate", "--help-all")
    assert len(short.splitlines()) <= 120 < 250 <= len(full.splitlines())
    assert short.rstrip().endswith("ekt generate --help-all")
    keys = leaf_keys(options_class("generate"))
    for key in keys:
        if key.rsplit(".", 1)[0] in keys:  # an optional block's keys: --ray.help lists them
            continue
        assert f"--{key} " in full or f"--{key}\n" in full, key
    for key in HELP_COMMON & set(keys):
        assert f"--{key} " in short, key
    assert "--sandbox.memory_mb" in full and "--sandbox.memory_mb" not in short
    assert "--sampling.backend.max_retries" not in short


@pytest.mark.parametrize("command", ["evaluate", "verify", "train"])
def test_other_pages_shrink_too(tmp_path, monkeypatch, command):
    short = _page(tmp_path, monkeypatch, command, "--help")
    full = _page(tmp_path, monkeypatch, command, "--help-all")
    assert len(short.splitlines()) < len(full.splitlines())
    assert f"ekt {command} --help-all" in short


def _value(tp: typing.Any, default: typing.Any) -> str | None:
    """A value for a flag: its default where it has one, else one of its type."""
    if default is not None and default is not dataclasses.MISSING:
        if isinstance(default, bool):
            return "true" if default else "false"
        if isinstance(default, list | tuple | dict):
            return json.dumps(list(default) if isinstance(default, tuple) else default)
        return str(default)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    inner = args[0] if args else tp
    if typing.get_origin(inner) is typing.Literal:
        return str(typing.get_args(inner)[0])
    if typing.get_origin(inner) is list:
        return '["x"]'
    return {int: "1", float: "1.0", str: "x", bool: "true"}.get(inner)


def _defaults(cls: type, prefix: str = "") -> dict[str, typing.Any]:
    out: dict[str, typing.Any] = {}
    obj = cls()
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_defaults(type(value), f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


@pytest.mark.parametrize("command", ["generate", "evaluate", "verify", "train"])
def test_every_flag_still_parses(command):
    cls = options_class(command)
    keys, defaults = leaf_keys(cls), _defaults(cls)
    parsed = 0
    for key, tp in keys.items():
        if key in required_keys(command) or key == "model":  # given above
            parsed += 1
            continue
        if any(k.startswith(key + ".") for k in keys):  # an optional block (--ray): bare
            parse(command, [*REQUIRED_ARGS[command], f"--{key}"])
            parsed += 1
            continue
        value = _value(tp, defaults.get(key))
        if value is None:
            continue
        parse(command, [*REQUIRED_ARGS[command], f"--{key}={value}"])
        parsed += 1
    assert parsed >= len(keys) - 2  # (a key with no value to write is skipped)
