import sys

from ekt.cli import main

sys.exit(main())
