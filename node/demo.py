"""``make demo``: run the whole path on embedded defaults (filled in by the foundation issue)."""

from __future__ import annotations

import sys


def main() -> int:
    print("the demo is not built yet", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
