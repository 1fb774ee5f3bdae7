"""From the options' dataclass fields to flags: each command's parser, its --help pages, the
accepted spellings of a flag (``aliases``, ``normalize``), the wording of a usage error
(``suggest_flags``) and ``ekt run``'s split between its own flags and run-config keys."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import typing
from typing import Any

import jsonargparse

from ekt.cli.options import COMMAND_OPTIONS, RunOptions, options_class, required_keys
from ekt.errors import EktError
from ekt.pipeline.flags import (
    add_dataclass,
    did_you_mean,
    instantiate,
    leaf_keys,
    name_key,
    parse_error,
)


def aliases(keys: dict[str, Any]) -> dict[str, str]:
    """Every accepted spelling (underscores for dashes) -> its key; ambiguous ones left out."""
    claims: dict[str, set[str]] = {}
    for key in keys:
        parts = key.split(".")
        names = {key, key.replace(".", "_"), parts[-1]}
        if parts[-1] == "name" and len(parts) > 1:
            names.add(parts[-2])
            names.add(key.rsplit(".", 1)[0])
        for n in names:
            claims.setdefault(n, set()).add(key)
    out = {n: next(iter(ks)) for n, ks in claims.items() if len(ks) == 1}
    out.update({k: k for k in keys})  # a full key always means itself
    return out


def _is(tp: Any, kind: type) -> bool:
    return tp is kind or kind in typing.get_args(tp) or typing.get_origin(tp) is kind


def normalize(argv: list[str], keys: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """``argv`` in canonical flags (``--a.b=value``), and each key's flag as the user typed it."""
    names = aliases(keys)
    out: list[str] = []
    typed: dict[str, str] = {}
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if not tok.startswith("--") or tok == "--":
            out.append(tok)
            continue
        name, eq, value = tok[2:].partition("=")
        norm = name.replace("-", "_")
        negated = norm.startswith("no_") and names.get(norm[3:]) in keys
        key = names.get(norm[3:] if negated else norm)
        if key is None or key not in keys:
            out.append(tok)
            continue
        tp = keys[key]
        typed[key] = f"--{name}"
        if negated:
            if not _is(tp, bool):
                out.append(tok)
                continue
            out.append(f"--{key}=false")
            continue
        has_value = bool(eq) or (i < len(argv) and not argv[i].startswith("--"))
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if inner:  # an optional block given bare or with one value: its first field
            first = dataclasses.fields(inner[0])[0].name
            if not eq and has_value and not argv[i].startswith("-"):
                value = argv[i]
                i += 1
            out.append(f"--{key}.{first}=" + (value if value else "null"))
            continue
        if _is(tp, bool):
            if not eq and i < len(argv) and argv[i].lower() in ("true", "false", "yes", "no"):
                value = argv[i]
                i += 1
            out.append(f"--{key}=" + (value or "true"))
            continue
        if _is(tp, list) and not eq:
            items: list[str] = []
            while i < len(argv) and not argv[i].startswith("--"):
                items += [x for x in argv[i].split(",") if x.strip()]
                i += 1
            out.append(f"--{key}=" + json.dumps(items))
            continue
        if _is(tp, list) and eq and not value.startswith("["):
            value = json.dumps([x for x in value.split(",") if x.strip()])
        out.append(f"--{key}" + (f"={value}" if eq else ""))
    return out, typed


def suggest_flags(message: str, keys: dict[str, Any]) -> str:
    """A parser's "unrecognized arguments" message with a "did you mean" for each unknown
    flag, from ``keys`` (dotted keys and their accepted spellings)."""
    head, sep, rest = message.partition("nrecognized arguments:")
    if not sep:
        return message
    hints = ""
    for flag in re.findall(r"--([\w.-]+)", rest):  # the canonical keys, else a short spelling
        hints += did_you_mean(flag, keys, "--") or did_you_mean(flag, set(aliases(keys)), "--")
    return message + hints


# `ekt COMMAND --help` lists the common options; `--help-all` lists every one (all are accepted
# either way). Hidden from --help: the keys of these blocks but those in HELP_COMMON, the keys
# in HELP_MORE, and a block's own loader flags (--sampling CONFIG, --ray.help).
HELP_MORE_BLOCKS = ("backend", "sandbox", "ray")
HELP_COMMON = {"sampling.backend.name", "sampling.backend.base_url", "sampling.backend.api",
               "sampling.backend.served_model", "eval.backend.name", "eval.backend.base_url",
               "sandbox.workers", "sandbox.timeout", "ray"}  # fmt: skip
HELP_MORE = {"dev_size", "dev_seed", "shard_size", "keep", "executions", "sampling.stop",
             "sampling.round_size", "sampling.target", "sampling.give_up_after", "eval.stop",
             "eval.task_data", "train.output_dir", "train.adam_beta1", "train.adam_beta2",
             "train.adam_epsilon", "train.gradient_accumulation_steps", "train.data_seed",
             "train.torch_compile", "train.report_to", "train.lora_alpha", "train.lora_dropout",
             "train.lora_target_modules",
             "kd.teacher_device", "kd.teacher_dtype"}  # fmt: skip


def _rarely_used(dest: str, keys: dict[str, Any]) -> bool:
    if dest not in keys:  # a block's loader (--sandbox CONFIG) or class help (--ray.help)
        return "." in dest or any(k.startswith(dest + ".") for k in keys)
    if dest in HELP_COMMON:
        return False
    return dest in HELP_MORE or any(b in HELP_MORE_BLOCKS for b in dest.split("."))


def command_parser(
    command: str, helps: bool = True, full: bool = True
) -> jsonargparse.ArgumentParser:
    """The parser of ``command``; ``helps=False``: for parsing only (no help text read from
    the sources' comments, which costs start-up time); ``full=False``: its --help page lists
    the common options only (``_rarely_used``), and says how to see the rest."""
    _, text, positional = COMMAND_OPTIONS[command]
    cls = options_class(command)
    parser = jsonargparse.ArgumentParser(
        prog=f"ekt {command}", description=text, exit_on_error=False
    )
    for name, kwargs in positional:
        parser.add_argument(name, **kwargs)
    add_dataclass(parser, cls, None, helps)
    names = aliases(leaf_keys(cls))
    short: dict[str, list[str]] = {}
    for n, key in names.items():
        if n != key and (n != key.replace(".", "_") or key.count(".") == 1):
            short.setdefault(key, []).append("--" + n.replace("_", "-"))
    for action in parser._actions:
        if action.dest in short:
            action.help = f"{action.help or ''} [also {', '.join(sorted(short[action.dest]))}]"
    if not full:
        keys, hidden = leaf_keys(cls), 0
        for action in parser._actions:
            if action.option_strings and _rarely_used(action.dest, keys):
                hidden += action.dest in keys
                action.help = argparse.SUPPRESS
        if hidden:
            parser.epilog = (
                f"{hidden} more options (the engine's, the sandbox's, Ray's and rarely changed "
                f"settings), all accepted here: ekt {command} --help-all"
            )
    return parser


def parse(command: str, argv: list[str]) -> tuple[Any, jsonargparse.Namespace]:
    """The options of ``command`` (a dataclass) and the positional arguments."""
    cls = options_class(command)
    keys = leaf_keys(cls)
    canonical, typed = normalize(argv, keys)
    parser = command_parser(command, helps=False)
    try:
        ns = parser.parse_args(canonical)
    except (jsonargparse.ArgumentError, TypeError, ValueError) as e:
        message = suggest_flags(parse_error(e), keys)
        for key, flag in sorted(typed.items(), key=lambda kv: -len(kv[0])):
            message = re.sub(rf"(?<![\w.-])(--)?{re.escape(key)}(?![\w.])", flag, message)
        raise UsageError(command, message) from None
    positional = {name: ns.pop(name) for name, _ in COMMAND_OPTIONS[command][2]}
    try:
        options = instantiate(cls, ns)
        for f in dataclasses.fields(options):  # every block checks its values
            block = getattr(options, f.name)
            if dataclasses.is_dataclass(block) and hasattr(block, "validate"):
                try:
                    block.validate()
                except EktError as e:
                    raise EktError(name_key(str(e), type(block), f"{f.name}.")) from None
    except EktError as e:  # the key in the message, as the user typed its flag
        message = str(e)
        for key in sorted(keys, key=len, reverse=True):
            if message.startswith(key):
                flag = typed.get(key, "--" + key.rsplit(".", 1)[-1].replace("_", "-"))
                message = flag + message[len(key) :]
                break
        raise EktError(message) from None
    for key in required_keys(command):
        if not getattr(options, key):
            raise UsageError(command, f"the following arguments are required: --{key}")
    return options, jsonargparse.Namespace(**positional)


class UsageError(Exception):
    def __init__(self, command: str, message: str):
        super().__init__(message)
        self.command = command


def _own_flags(cls: type) -> tuple[set[str], set[str]]:
    """The flags of a command's own options (every spelling), and those that take a value."""
    own, valued = {"-h", "--help"}, set()
    for f in dataclasses.fields(cls):
        names = {f"--{f.name}", f"--{f.name.replace('_', '-')}"}
        own |= names
        if f.type not in ("bool", bool):
            valued |= names
    return own, valued


def split_run_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """``ekt run``'s arguments: its own flags (``RunOptions``) and the config file, and the
    run-config keys given as overrides (in canonical spelling)."""
    rest = ["--show" if t in ("--print_config", "--print-config") else t for t in argv]
    own, valued = _own_flags(RunOptions)
    mine: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(rest):
        tok = rest[i]
        if tok.split("=")[0] in own or not tok.startswith("-"):
            mine.append(tok)
            if tok in valued and i + 1 < len(rest):
                mine.append(rest[i + 1])
                i += 1
        else:
            overrides.append(tok)
            while i + 1 < len(rest) and not rest[i + 1].startswith("--"):
                overrides.append(rest[i + 1])
                i += 1
        i += 1
    if overrides:  # run-config keys: the whole RunConfig (transformers with it)
        from ekt.pipeline.config import RunConfig

        overrides, _ = normalize(overrides, leaf_keys(RunConfig))
    return mine, overrides
