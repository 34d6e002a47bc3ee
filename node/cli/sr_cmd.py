"""``blindread sr build`` and ``blindread sr show``: see exactly what the node writes to PACS.

``build`` makes the result SR (and, with ``--sc``, the summary image) from a manifest, an outputs
JSON file (format in docs/sr.md) and a folder with the original images; ``show`` prints the
findings of a result SR. Outputs given to ``build`` by hand are never said to be computed under
encryption: the SR says they were not (only the node's job, which decrypted them, writes the
encryption statement). Exit codes: 0 done, 1 the inputs cannot make an SR or a file is
unreadable, 2 bad usage or config.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from node.cli.errors import reported_as
from node.config import load_config
from node.config.sr import SrSection
from node.keys import KeyFileError, read_secret_file
from node.sr import SrError, build_result_sr, load_outputs, read_result_sr
from node.sr.files import read_source_dir, write_dataset_atomic
from node.sr.reader import ResultFinding, ResultReport
from node.sr.summary import build_summary_sc
from secure_infer import ManifestError, load_manifest

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sr", help="build or show result Structured Reports")
    ssub = p.add_subparsers(dest="sr_command", metavar="ACTION")
    ssub.required = True

    b = ssub.add_parser(
        "build",
        help="build the result SR from a manifest, outputs JSON and the original images",
        description="Build the TID 1500 result SR exactly as the node would write it.",
    )
    b.add_argument("--manifest", required=True, help="model manifest YAML")
    b.add_argument("--outputs", required=True, help="decrypted outputs JSON (see docs/sr.md)")
    b.add_argument("--source-dir", required=True, help="folder with the original images")
    b.add_argument("-o", "--output", required=True, help="SR file to write")
    b.add_argument(
        "--uid-key-file",
        help="0600 key file for the deterministic UIDs (the node's key gives the node's UIDs);"
        " without it a random key is used and UIDs differ on every run",
    )
    b.add_argument("--config", help="node config YAML whose 'sr' section to use")
    b.add_argument("--series-number", type=int, help="override sr.series_number")
    b.add_argument("--series-description", help="override sr.series_description")
    b.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="algorithm parameter written into every group (repeatable), e.g. he.scheme=CKKS",
    )
    b.add_argument("--sc", metavar="FILE", help="also write the Secondary Capture summary here")
    b.set_defaults(handler=_build)

    s = ssub.add_parser("show", help="print the findings of a result SR")
    s.add_argument("file", help="result SR file")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--uids", action="store_true", help="also print referenced SOP Instance UIDs")
    s.set_defaults(handler=_show)


def _settings(args: argparse.Namespace) -> SrSection:
    base = load_config(args.config).sr if args.config else SrSection()
    update: dict[str, Any] = {}
    if args.series_number is not None:
        update["series_number"] = args.series_number
    if args.series_description is not None:
        update["series_description"] = args.series_description
    # re-validate so overrides get the same checks as YAML
    return SrSection.model_validate({**base.model_dump(), **update})


def _build(args: argparse.Namespace) -> int:
    params: dict[str, str] = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"--param {item!r}: expected KEY=VALUE", file=sys.stderr)
            return 2
        params[key] = value
    with reported_as("invalid SR settings", ValueError, usage=True):
        settings = _settings(args)
    if args.uid_key_file:
        with reported_as("uid key", KeyFileError, OSError, usage=True):
            key = read_secret_file(Path(args.uid_key_file))
    else:
        key = secrets.token_bytes(32)
        print("note: no --uid-key-file; UIDs are random for this preview", file=sys.stderr)
    # SrError -> "cannot build the SR:" and its problems, exit 1 (node.cli.errors)
    with reported_as("manifest", ManifestError):
        manifest = load_manifest(args.manifest).public()
        outputs = load_outputs(args.outputs)
        sources, skipped = read_source_dir(args.source_dir)
        sr = build_result_sr(
            manifest,
            outputs,
            sources,
            uid_key=key,
            settings=settings,
            algorithm_parameters=params or None,
            encrypted=False,  # hand-fed outputs: nothing shows they were computed encrypted
        )
        sc = (
            build_summary_sc(
                manifest, outputs, sources, uid_key=key, settings=settings, encrypted=False
            )
            if args.sc
            else None
        )
    write_dataset_atomic(sr, args.output)
    msg = f"wrote {args.output}: {len(read_result_sr(sr).findings)} finding(s)"
    msg += f" on {len(sources)} image(s)"
    if skipped:
        msg += f" ({skipped} non-image file(s) skipped)"
    print(msg)
    print("computed under encryption: no (outputs given by hand; the node's jobs write the SRs "
          "of encrypted runs)")
    if sc is not None:
        write_dataset_atomic(sc, args.sc)
        print(f"wrote {args.sc}: summary image")
    return 0


def _finding_dict(f: ResultFinding) -> dict[str, Any]:
    return {
        "label": f.label,
        "level": f.level,
        "finding": {"scheme": f.finding[0], "value": f.finding[1], "meaning": f.finding[2]},
        "present": f.present,
        "probability": f.probability,
        "threshold": f.threshold,
        "tracking_identifier": f.tracking_identifier,
        "source_sop_instance_uids": list(f.source_sop_instance_uids),
        "algorithm": {
            "name": f.algorithm_name,
            "version": f.algorithm_version,
            "parameters": f.algorithm_parameters,
        },
        "computed_under_encryption": f.computed_under_encryption,
        "not_for_primary_diagnosis": f.not_for_primary_diagnosis,
    }


def _report_dict(r: ResultReport) -> dict[str, Any]:
    return {
        "series_number": r.series_number,
        "series_description": r.series_description,
        "device": {
            "uid": r.device_uid,
            "name": r.device_name,
            "manufacturer": r.device_manufacturer,
            "model_name": r.device_model_name,
        },
        "contributing_equipment": [
            {"manufacturer": m, "software_versions": v} for m, v in r.contributing_equipment
        ],
        "findings": [_finding_dict(f) for f in r.findings],
    }


def _verdict(f: ResultFinding) -> str:
    return {True: "PRESENT", False: "absent", None: "?"}[f.present]


def _print_report(r: ResultReport, show_uids: bool) -> None:
    print(f"Result SR, series {r.series_number} ({r.series_description or 'no description'})")
    print(
        f"Algorithm: {r.device_manufacturer} / {r.device_model_name} / {r.device_name}"
        f"  (device UID {r.device_uid})"
    )
    equipment = ", ".join(f"{m} {v}".strip() for m, v in r.contributing_equipment)
    print(f"Contributing equipment: {equipment or '-'}")
    if r.findings:
        enc = all(f.computed_under_encryption for f in r.findings)
        nfpd = all(f.not_for_primary_diagnosis for f in r.findings)
        print(f"Computed under encryption: {'yes' if enc else 'NO'}")
        if nfpd:
            print("NOT FOR PRIMARY DIAGNOSIS")
    for title, group in (("Study", r.study_findings), ("Per image", r.image_findings)):
        if not group:
            continue
        print(f"{title}:")
        for f in group:
            prob = "?" if f.probability is None else f"{f.probability:.4f}"
            thr = "?" if f.threshold is None else f"{f.threshold:.2f}"
            scheme, value, meaning = f.finding
            print(
                f"  {f.tracking_identifier or f.label}: {meaning} ({scheme} {value})"
                f"  {_verdict(f)}  p={prob}  threshold={thr}"
                f"  [{len(f.source_sop_instance_uids)} image(s)]"
            )
            if show_uids:
                for uid in f.source_sop_instance_uids:
                    print(f"      {uid}")
    other = [f for f in r.findings if f.level not in ("study", "image")]
    for f in other:
        print(f"  (unlabelled group) {f.finding[2]} {_verdict(f)} p={f.probability}")


def _show(args: argparse.Namespace) -> int:
    def unreadable(exc: Exception) -> str:
        # only the type is shown: the error's text can quote file content
        return f"{args.file}: not a readable DICOM file ({type(exc).__name__})"

    with reported_as(unreadable, InvalidDicomError, OSError):
        ds = pydicom.dcmread(args.file)
    with reported_as(args.file, SrError):
        report = read_result_sr(ds)
    if args.json:
        print(json.dumps(_report_dict(report), indent=2))
    else:
        _print_report(report, args.uids)
    return 0
