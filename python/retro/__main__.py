"""``python -m retro``: the same command line as ``retro``."""

import sys

from retro.cli import main

sys.exit(main())
