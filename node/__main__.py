"""``python -m node`` is the ``blindread`` command."""

import sys

from node.cli import main

sys.exit(main())
