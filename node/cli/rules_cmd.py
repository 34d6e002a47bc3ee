"""``blindread rules test``: dry-run the routing rules on DICOM files; nothing is sent.

Files are grouped by study, as the node receives them: the rules are evaluated once per study
(on its first instance, as the pipeline does) and each matching action's series filter on every
instance. Files that are not DICOM are reported and skipped (a folder may hold a README).

Exit codes: 0 at least one study was evaluated (skipped files are listed, not a failure);
1 no study could be evaluated (no readable DICOM file among PATHs); 2 bad usage or config.

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
from tqdm import tqdm

from node.config import NodeConfig, load_config
from node.rules import evaluate, series_selected

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("rules", help="routing rules")
    rsub = p.add_subparsers(dest="rules_command", metavar="ACTION")
    rsub.required = True
    t = rsub.add_parser(
        "test",
        help="show which rule fires for each study and what would happen (sends nothing)",
        description="Exit codes: 0 at least one study evaluated (non-DICOM files are listed "
        "and skipped); 1 no study could be evaluated; 2 bad usage or config.",
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


def _study_key(ds: pydicom.Dataset, path: Path) -> str:
    uid = ds.get("StudyInstanceUID")
    return str(uid) if uid else f"<no StudyInstanceUID: {path}>"


def _test(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    when = _parse_at(args.at)
    if not cfg.routes:
        print("no routes configured: every study would be left alone")
    skipped = 0
    studies: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    for path in _files(args.paths):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            # the exception text can quote file content; show only its type
            print(f"{path}: not readable as DICOM ({type(exc).__name__}), skipped")
            skipped += 1
            continue
        studies.setdefault(_study_key(ds, path), []).append((path, ds))
    n_files = sum(len(v) for v in studies.values())
    bar = tqdm(studies.values(), desc="rules test", unit="study", disable=None, file=sys.stderr)
    for number, headers in enumerate(bar, 1):
        _report_study(cfg, number, len(studies), headers, args.calling_ae, when)
    print(f"{len(studies)} study(ies) ({n_files} file(s)) evaluated, {skipped} file(s) skipped; "
          "nothing was sent")
    return 0 if studies else 1


def _report_study(
    cfg: NodeConfig,
    number: int,
    total: int,
    headers: list[tuple[Path, pydicom.Dataset]],
    calling_ae: str | None,
    when: datetime | None,
) -> None:
    """One study as the node sees it: the rules on its first instance (as the pipeline does),
    each matching action's series filter on every instance."""
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in headers}
    print(f"study {number} of {total}: {len(headers)} file(s) in {len(series)} series "
          f"(rules evaluated on {headers[0][0]}):")
    result = evaluate(cfg.routes, headers[0][1], calling_ae, when)
    for line in result.explanation:
        print(f"  {line}")
    for match in result.matches:
        spec = match.action.infer or match.action.forward_deidentified
        if spec is None or spec.series_filter is None:
            continue
        picked = 0
        lines: list[str] = []
        for path, ds in headers:
            ok, why = series_selected(match.action, ds, calling_ae, when)
            picked += ok
            verdict = "this series is included" if ok else "this series is skipped"
            lines.append(f"    {path}: {verdict}")
            lines += [f"      {w}" for w in why]
        print(f"  series filter of {match.name!r}: {picked} of {len(headers)} file(s) included")
        for line in lines:
            print(line)
    if result.actions:
        print("  would do: " + "; ".join(a.kind for a in result.actions) + " (dry run)")
    else:
        print("  would do: nothing")
