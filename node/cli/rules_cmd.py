"""``blindread rules test``: dry-run the routing rules on DICOM files; nothing is sent.

Output names files by path and attributes by keyword; values are shown only for the
non-identifying attributes in :data:`node.rules.SAFE_ATTRIBUTES`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from node.config import load_config
from node.rules import evaluate, series_selected

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("rules", help="routing rules")
    rsub = p.add_subparsers(dest="rules_command", metavar="ACTION")
    rsub.required = True
    t = rsub.add_parser(
        "test",
        help="show which rule fires for each DICOM file and what would happen (sends nothing)",
    )
    t.add_argument("--config", required=True, help="node config YAML")
    t.add_argument("--calling-ae", default=None, help="calling AE title to assume (default: none)")
    t.add_argument(
        "--at",
        default=None,
        help="time to assume: HH:MM or ISO date-time (default: now, node local time)",
    )
    t.add_argument("paths", nargs="+", metavar="PATH", help="DICOM files or directories")
    t.set_defaults(handler=_test)


def _parse_at(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        if len(text) <= 8 and ":" in text:
            now = datetime.now()
            parts = [int(x) for x in text.split(":")]
            return now.replace(hour=parts[0], minute=parts[1],
                               second=parts[2] if len(parts) > 2 else 0, microsecond=0)
        return datetime.fromisoformat(text)
    except (ValueError, IndexError):
        print(f"--at: not a time 'HH:MM' or ISO date-time: {text!r}", file=sys.stderr)
        raise SystemExit(2) from None


def _files(paths: list[str]) -> Iterator[Path]:
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            yield from sorted(q for q in p.rglob("*") if q.is_file())
        else:
            yield p


def _test(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    when = _parse_at(args.at)
    if not cfg.routes:
        print("no routes configured: every study would be left alone")
    failures = 0
    seen = 0
    for path in _files(args.paths):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            # the exception text can quote file content; show only its type
            print(f"{path}: not readable as DICOM ({type(exc).__name__}), skipped")
            failures += 1
            continue
        seen += 1
        result = evaluate(cfg.routes, ds, args.calling_ae, when)
        print(f"{path}:")
        for line in result.explanation:
            print(f"  {line}")
        for match in result.matches:
            spec = match.action.infer or match.action.forward_deidentified
            if spec is not None and spec.series_filter is not None:
                ok, lines = series_selected(match.action, ds, args.calling_ae, when)
                print(f"  series filter of {match.name!r}: "
                      f"{'this series is included' if ok else 'this series is skipped'}")
                for line in lines:
                    print(f"    {line}")
        if result.actions:
            print("  would do: " + "; ".join(a.kind for a in result.actions) + " (dry run)")
        else:
            print("  would do: nothing")
    print(f"{seen} file(s) evaluated, {failures} skipped; nothing was sent")
    return 1 if failures or seen == 0 else 0
