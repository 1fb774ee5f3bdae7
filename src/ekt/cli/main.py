"""``ekt``'s entry point: global flags, cached help pages, then the subcommand."""

from __future__ import annotations

import os
import sys
from typing import Any

from ekt import __version__, helpcache
from ekt.cli.commands import COMMANDS, _one_writer, cmd_run
from ekt.cli.flags import UsageError, command_parser, parse, split_run_args
from ekt.commands import usage
from ekt.errors import user_message


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = False
    while argv and argv[0].startswith("-"):
        flag = argv.pop(0)
        if flag == "--debug":
            debug = True
        elif flag == "--version":
            print(f"ekt {__version__}")
            return 0
        elif flag in ("-h", "--help"):
            print(usage(), end="")
            return 0
        else:
            print(f"ekt: error: unrecognized arguments: {flag} (see `ekt --help`)", file=sys.stderr)
            return 2
    if not argv or argv[0] not in COMMANDS:
        what = f"invalid command {argv[0]!r}" if argv else "a command is required"
        print(f"ekt: error: {what}; choose from {', '.join(COMMANDS)} (see `ekt --help`)",
              file=sys.stderr)  # fmt: skip
        return 2
    command, rest = argv[0], argv[1:]
    topic = helpcache.help_topic([command, *rest])
    if topic in (command, f"{command}{helpcache.ALL}"):  # rendered once, then kept
        text = command_parser(command, full=topic != command).format_help()
        helpcache.store(topic, text)
        print(text, end="")
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    options: Any = None
    try:
        overrides: list[str] = []
        if command == "run":  # its own flags here, the rest are run-config keys
            rest, overrides = split_run_args(rest)
        options, positional = parse(command, rest)
        if command == "run":
            cmd_run(options, positional, overrides)
        else:
            with _one_writer(command, options):
                COMMANDS[command](options, positional)
    except UsageError as e:
        print(f"ekt {command}: error: {e} (see `ekt {command} --help`)", file=sys.stderr)
        return 2
    except Exception as e:  # EktError, or the file system refusing (full, read-only...)
        out = getattr(options, "out", None) or "."
        message = None if debug else user_message(e, out)
        if message is None:
            raise
        print(f"ekt {command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ekt {command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0
