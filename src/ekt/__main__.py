"""``python -m ekt`` and the ``ekt`` command. A help page rendered before is printed from
``ekt.helpcache`` without importing the CLI; everything else goes to ``ekt.cli.main``."""

import sys


def run() -> int:
    from ekt.helpcache import cached

    text = cached(sys.argv[1:])
    if text is not None:
        sys.stdout.write(text)
        return 0
    from ekt.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(run())
