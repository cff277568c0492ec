"""python -m export.qins: see export.qins.cli."""

import sys

from export.qins.cli import main

sys.exit(main())
