"""The ``blindread`` command line.

Each command group lives in its own module with a ``register(subparsers)`` function; the handler
it sets returns the process exit code: 0 success, 1 the operation failed, 2 bad usage or config.
Errors a handler raises become a message and an exit code in one place, :mod:`node.cli.errors`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from node import __version__
from node.cli.errors import CAUGHT, report

__all__ = ["main"]

log = logging.getLogger(__name__)

# Order is the order shown in --help.
_COMMAND_MODULES = (
    "node.cli.config_cmd",  # config check
    "node.cli.node_cmd",  # node run, echo, jobs list/retry
    "node.cli.deid_cmd",  # deid, vault purge
    "node.cli.sr_cmd",  # sr build/show
    "node.cli.model_cmd",  # model check
    "node.cli.vendor_cmd",  # vendor serve / issue-cert
    "node.cli.rules_cmd",  # rules test
    "node.cli.audit_cmd",  # audit verify/export
    "node.cli.validate_cmd",  # validate
    "node.cli.multisite_cmd",  # multisite coordinator/join/verify/keygen (issue 13)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blindread",
        description="BlindRead: a DICOM node for encrypted two-party AI inference.",
    )
    parser.add_argument("--version", action="version", version=f"blindread {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``blindread`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
        sys.stdout.flush()  # a closed pipe is found here, not at interpreter exit
    except CAUGHT as exc:
        if isinstance(exc, BrokenPipeError):
            _silence_stdout()
        return report(exc)
    return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null so Python's final flush of what is still buffered for a
    closed pipe does not print ``Exception ignored ... BrokenPipeError`` (Python's docs,
    "Note on SIGPIPE")."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # pytest's capture: no real descriptor
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
