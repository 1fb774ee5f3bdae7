"""``python -m ekt.cli``: the same as ``ekt``."""

import sys

from ekt.cli.main import main

sys.exit(main())
