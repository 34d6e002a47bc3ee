"""``blindread audit verify`` and ``blindread audit export``: check and copy out the ledger.

Exit codes: 0 the ledger verifies (or was exported), 1 it does not verify / cannot be read,
2 bad usage or config.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from durable_io import atomic_write
from node.audit import (
    export_since,
    key_fingerprint,
    load_public_key,
    public_key_path,
    verify_ledger,
)
from node.cli.errors import CommandError, reported_as
from node.config import load_config

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("audit", help="tamper-evident audit ledger")
    asub = p.add_subparsers(dest="audit_command", metavar="ACTION")
    asub.required = True

    v = asub.add_parser("verify", help="check the whole chain; name the first bad entry")
    _source_args(v)
    v.set_defaults(handler=_verify)

    e = asub.add_parser("export", help="write entries since a time as JSON lines")
    _source_args(e)
    e.add_argument("--since", required=True,
                   help="ISO 8601 time, e.g. 2026-11-23T00:00:00Z (no zone = UTC)")
    e.add_argument("--output", "-o", default=None, help="file to write (default: stdout)")
    e.add_argument("--no-verify", action="store_true",
                   help="export even if the ledger does not verify")
    e.set_defaults(handler=_export)


def _source_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", help="node config YAML (ledger path from audit.ledger)")
    g.add_argument("--ledger", help="ledger file")
    p.add_argument("--public-key", default=None,
                   help="PEM public key to verify with (default: <ledger>.pub; prefer a copy"
                        " kept off this host)")
    p.add_argument("--anchor", default=None,
                   help="the ledger's anchor file (default with --config: from audit.anchor_dir;"
                        " with --ledger: none, so cut entries may go unnoticed)")


def _ledger_and_key(args: argparse.Namespace) -> tuple[Path, Path, Path | None]:
    anchor = Path(args.anchor) if args.anchor else None
    if args.config:
        cfg = load_config(args.config)
        ledger, anchor = cfg.audit_ledger, anchor or cfg.audit_anchor
    else:
        ledger = Path(args.ledger)
    key = Path(args.public_key) if args.public_key else public_key_path(ledger)
    return ledger, key, anchor


def _verify(args: argparse.Namespace) -> int:
    ledger, key_path, anchor = _ledger_and_key(args)
    _require_ledger(ledger)
    key = load_public_key(key_path)  # AuditError -> "error: ...", exit 1 (node.cli.errors)
    report = verify_ledger(ledger, key, anchor=anchor)
    print(f"{ledger}: {report.describe()}")
    print(f"public key {key_path}: {key_fingerprint(key)}")
    return 0 if report.ok else 1


def _require_ledger(ledger: Path) -> None:
    """A ledger that was never written is not a failed verification: say so, exit 1."""
    if not ledger.exists():
        raise CommandError(
            f"no audit ledger at {ledger} yet: the node writes it at its first audited event "
            "(a study received with audit.enabled); nothing to verify or export"
        )


def _parse_since(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        print(f"--since: not an ISO 8601 time: {text!r}", file=sys.stderr)
        raise SystemExit(2) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _export(args: argparse.Namespace) -> int:
    ledger, key_path, anchor = _ledger_and_key(args)
    since = _parse_since(args.since)
    _require_ledger(ledger)
    with reported_as("error", OSError):  # AuditError -> "error: ...", exit 1 (node.cli.errors)
        if not args.no_verify:
            report = verify_ledger(ledger, load_public_key(key_path), anchor=anchor)
            if not report.ok:
                print(f"{ledger}: {report.describe()}; not exporting (use --no-verify)",
                      file=sys.stderr)
                return 1
        lines = list(export_since(ledger, since))
    text = "".join(line + "\n" for line in lines)
    if args.output is None:
        sys.stdout.write(text)
    else:
        atomic_write(Path(args.output), text.encode("ascii"), mode=0o644)
    print(f"exported {len(lines)} entries since {since.isoformat()}", file=sys.stderr)
    return 0
