"""``python -m snorky``."""

import sys

from snorky.cli import main

sys.exit(main(prog="python -m snorky"))
