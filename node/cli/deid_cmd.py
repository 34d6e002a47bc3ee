"""Command group placeholder: this module's commands are added by their issue."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers no command yet."""
