"""``blindread validate``: encrypted local validation of a vendor model on a labeled set.

Exit codes: 0 report written; 2 bad usage, config or labels (each label problem listed with its
CSV line number); 1 preprocessing or encrypted inference failed. Messages name files by the
relative path under DIR, never by patient name, ID or UID.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from node.cli.errors import reported_as
from node.config import load_config
from node.validate import ValidationSettings, run_validation
from node.validate.labels import LabelError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "validate",
        help="run a vendor model (encrypted) on a labeled local set and write a report",
        description=(
            "Run encrypted inference through the configured vendor peer on the DICOM files "
            "under DIR, compare with the labels and write report.json, report.md, roc.png "
            "and calibration.png. Only ciphertexts leave the hospital. See docs/validate.md."
        ),
    )
    p.add_argument("--config", required=True, help="node config YAML")
    p.add_argument(
        "--labels", required=True, type=Path,
        help="CSV with a header 'path,sop_instance_uid,label' (one of the first two per row)",
    )  # fmt: skip
    p.add_argument("--model", required=True, help="model name (as in vendors.<name>.models)")
    p.add_argument("--vendor", default=None, help="vendor peer (default: the one listing MODEL)")
    p.add_argument("--output", default=None, help="model output to validate (default: first)")
    p.add_argument(
        "--out", type=Path, default=None,
        help="report folder (default: ./validation-MODEL-<UTC time>)",
    )  # fmt: skip
    p.add_argument("--batch", type=int, default=8, help="images per encrypted request (8)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (0)")
    p.add_argument("dir", type=Path, metavar="DIR", help="folder of labeled DICOM files")
    p.set_defaults(handler=_validate)


def _validate(args: argparse.Namespace) -> int:
    # imported here: matplotlib costs ~0.5 s, which other commands should not pay
    from node.audit import AuditError, open_ledger
    from node.keys import KeyFileError
    from node.validate.report import write_report
    from node.vendors import VendorBackends

    cfg = load_config(args.config)  # ConfigError -> exit 2 in node.cli.main
    settings = ValidationSettings(
        model=args.model,
        data_dir=args.dir,
        labels_csv=args.labels,
        vendor=args.vendor,
        output=args.output,
        batch=args.batch,
        bootstrap=args.bootstrap,
        seed=args.seed,
    )
    out = args.out or Path(
        f"validation-{args.model}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    )
    with reported_as(
        "error: cannot open the audit ledger", AuditError, KeyFileError, OSError, usage=True
    ):
        audit = open_ledger(cfg)

    def label_problems(exc: LabelError) -> str:
        lines = "".join(f"\n  {problem}" for problem in exc.problems)
        return f"labels: {len(exc.problems)} problem(s) in {args.labels}:{lines}"

    # ValidateUsageError -> exit 2, ValidateInferenceError -> exit 1 (node.cli.errors)
    backends = VendorBackends(cfg)
    try:
        with (
            reported_as(label_problems, LabelError, usage=True),
            reported_as("error: cannot write the audit ledger", AuditError),
        ):
            result = run_validation(cfg, settings, backends, audit=audit)
    finally:
        backends.close()
    with reported_as(f"error: cannot write the report into {out}", OSError):
        data = write_report(result, out)
    a = data["auroc"]
    th = data["at_threshold"]
    print(
        f"{data['cases']['n']} cases: AUROC {a['value']:.4f} "
        f"(95% CI {a['ci_low']:.4f}-{a['ci_high']:.4f}), Brier {data['brier']:.4f}, "
        f"sensitivity {th['tp']}/{th['tp'] + th['fn']}, "
        f"specificity {th['tn']}/{th['tn'] + th['fp']} at threshold {data['threshold']:g}; "
        f"{len(data['discordant'])} discordant case(s)"
    )
    print(f"report: {out / 'report.md'}")
    return 0
