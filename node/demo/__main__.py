"""``make demo``: the whole BlindRead path on embedded defaults, in about half a minute.

Generates keys and certificates, starts the vendor peer (another process, mutual TLS), a PACS
(Orthanc when installed, else an embedded receiver) and the node; a modality (dcmtk storescu when
installed, else pynetdicom) sends two synthetic, non-clinical chest studies; the node de-identifies
them, runs encrypted inference with the vendor, writes a TID 1500 SR into each original study and
stores it in the PACS; the demo reads the findings back from the PACS, verifies the audit chain
and shuts everything down. Nothing is left behind unless ``--keep DIR`` is given.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from node.audit import load_public_key, public_key_path, verify_ledger
from node.demo.phantom_study import phantom_cr_study
from node.demo.stack import Stack
from node.logsetup import configure_logging
from node.sr import read_result_sr

__all__ = ["main"]


def _say(msg: str) -> None:
    print(msg, flush=True)


def run(workdir: Path, pacs: str) -> int:
    t0 = time.monotonic()
    _say("BlindRead demo (synthetic, NON-CLINICAL data)")
    with Stack(workdir, quiet_seconds=2.0, pacs=pacs) as stack:
        kind = "Orthanc" if stack.use_orthanc else "embedded pynetdicom receiver"
        _say(f"[{time.monotonic() - t0:5.1f}s] vendor peer (mTLS), PACS ({kind}) and node are up")
        studies = {
            "study A (lesion in image 2)": phantom_cr_study([False, True], seed=11),
            "study B (no lesion)": phantom_cr_study([False, False], seed=12),
        }
        sent = {}
        for name, datasets in studies.items():
            sent[name] = stack.send_study(datasets)
            _say(f"[{time.monotonic() - t0:5.1f}s] modality sent {name}: {len(datasets)} images")
        _say(f"[{time.monotonic() - t0:5.1f}s] waiting for study completion, encrypted "
             "inference and the SR in the PACS ...")  # fmt: skip
        for name, uid in sent.items():
            sr = stack.wait_for_sr(uid, timeout=180)
            report = read_result_sr(sr)
            _say(f"[{time.monotonic() - t0:5.1f}s] SR for {name} is in the PACS, same study:")
            for f in report.findings:
                verdict = "PRESENT" if f.present else "absent"
                _say(f"      {f.finding[2]} ({f.finding[0]} {f.finding[1]}): {verdict},"
                     f" p={f.probability:.4f} (threshold {f.threshold}),"
                     f" {len(f.source_sop_instance_uids)} image(s) referenced")  # fmt: skip
            for c in report.findings[0].comments if report.findings else ():
                _say(f"      note: {c}")
        assert stack.cfg is not None
        ledger = stack.cfg.audit_ledger
        result = verify_ledger(ledger, load_public_key(public_key_path(ledger)))
        entries = len(ledger.read_text().splitlines())
        _say(f"[{time.monotonic() - t0:5.1f}s] audit ledger: {entries} signed entries, "
             f"{'chain verifies' if result.ok else 'BROKEN: ' + result.describe()}")  # fmt: skip
    _say(f"[{time.monotonic() - t0:5.1f}s] everything shut down")
    return 0 if result.ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="keep state, keys and logs in this folder")
    parser.add_argument("--pacs", choices=("auto", "orthanc", "embedded"), default="auto")
    parser.add_argument("--verbose", action="store_true", help="show the node's log lines")
    args = parser.parse_args(argv)
    configure_logging("INFO" if args.verbose else "WARNING")
    logging.getLogger("node.demo").setLevel(logging.INFO)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        return run(args.keep, args.pacs)
    workdir = Path(tempfile.mkdtemp(prefix="blindread-demo-"))
    try:
        return run(workdir, args.pacs)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
