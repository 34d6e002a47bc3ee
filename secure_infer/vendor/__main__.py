"""``python -m secure_infer.vendor ...``: the vendor's entry point (see :mod:`.cli`)."""

import sys

from secure_infer.vendor.cli import main

sys.exit(main())
