"""BlindRead hospital node: config, routing, jobs, de-identification, SR, audit and the CLI."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
