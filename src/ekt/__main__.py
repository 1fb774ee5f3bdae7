"""``python -m ekt`` and the ``ekt`` command. A help page rendered before is printed from
``ekt.helpcache`` (``ekt --help`` from ``ekt.commands``) without importing the CLI; everything
else goes to ``ekt.cli.main``."""

import sys


def run() -> int:
    from ekt.helpcache import cached, help_topic

    if help_topic(sys.argv[1:]) == "ekt":  # the command list: no parser to build
        from ekt.commands import usage

        sys.stdout.write(usage())
        return 0
    text = cached(sys.argv[1:])
    if text is not None:
        sys.stdout.write(text)
        return 0
    from ekt.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(run())
