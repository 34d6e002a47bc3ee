"""``blindread validate`` end to end against a real vendor peer process over mutual TLS.

Synthetic CR files (phantoms with and without a lesion, with planted identity) and a labels CSV
(some rows by path, some by SOP Instance UID, two labels deliberately flipped so there are
discordant cases); the report's numbers must equal node.validate.stats recomputed from
onnxruntime on the same preprocessed pixels, the PNGs must be real PNGs, and neither the report
nor the console output may carry a planted identifier or a raw UID.
"""

from __future__ import annotations

import csv
import json
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from node.audit import load_public_key, public_key_path, verify_ledger
from node.cli import main
from node.demo.localpacs import free_port
from node.demo.phantom_study import PlantedIdentity, phantom_cr_study, write_study_files
from node.demo.stack import DEMO_MODEL_DIR, Stack
from node.keys import load_or_create_secret
from node.pseudonym import Pseudonymizer
from node.validate import preprocess_file
from node.validate.stats import (
    auroc,
    bootstrap_auroc,
    brier_score,
    calibration_bins,
    confusion_at,
)
from secure_infer.manifest import load_manifest
from tests.support.local_backend import record_vendor_traffic

pytestmark = pytest.mark.slow

LESIONS = [False, True, True, False, True, False, False, True, False, True, True, False]
FLIPPED = {2, 3}  # labels contradicting the phantom: one positive, one negative


@pytest.fixture(scope="module")
def vendor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path | int]]:
    """Just the vendor peer of node.demo.stack.Stack (separate process, mutual TLS, demo model)."""
    workdir = tmp_path_factory.mktemp("vendor-stack")
    stack = Stack(workdir, pacs="embedded")
    certs = stack.make_certs()
    try:
        stack.start_vendor(certs)
        yield {**certs, "port": stack.vendor_port, "workdir": workdir}
    finally:
        stack.__exit__(None, None, None)


def _node_config(path: Path, state: Path, vendor: dict[str, Path | int], dead_port: int) -> Path:
    peer = {
        "client_cert": str(vendor["client_cert"]),
        "client_key": str(vendor["client_key"]),
        "ca": str(vendor["ca"]),
        "models": ["demo-lesion"],
        "max_attempts": 1,
        "connect_timeout_seconds": 2,
    }
    cfg = {
        "node": {"name": "validate-test", "state_dir": str(state)},
        "vendors": {
            "demo-vendor": {**peer, "url": f"https://127.0.0.1:{vendor['port']}"},
            # lists no model, so only an explicit --vendor picks it
            "gone-vendor": {**peer, "models": [], "url": f"https://127.0.0.1:{dead_port}"},
        },
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def _png_ok(data: bytes) -> tuple[int, int]:
    """Walk the PNG chunks, checking every CRC; returns (width, height)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        chunks.append(kind)
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    hdr = data[16:24]
    return struct.unpack(">II", hdr)


def test_validate_report_matches_onnxruntime(
    tmp_path: Path,
    vendor: dict[str, Path | int],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent_to_vendor = record_vendor_traffic(monkeypatch)

    who = PlantedIdentity()
    study = phantom_cr_study(LESIONS, seed=31, identity=who)
    data = tmp_path / "set"
    paths = write_study_files(study[:6], data / "site-a") + write_study_files(
        study[6:], data / "site-b"
    )
    extra = phantom_cr_study([True], seed=32, identity=who)  # a DICOM file nobody labeled
    write_study_files(extra, data / "unlabeled")
    (data / "README.txt").write_text("not DICOM\n")
    rel = [p.relative_to(data).as_posix() for p in paths]
    truth = [int(v) for v in LESIONS]
    labels = [1 - t if i in FLIPPED else t for i, t in enumerate(truth)]

    csv_path = tmp_path / "labels.csv"
    with csv_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "sop_instance_uid", "label"])
        w.writerow(["# curated 2026-11-23", "", ""])
        for i, ds in enumerate(study):
            if i % 3 == 0:  # every third case by UID, the rest by path
                w.writerow(["", str(ds.SOPInstanceUID), labels[i]])
            else:
                w.writerow([rel[i], "", labels[i]])

    state = tmp_path / "node"
    cfg = _node_config(tmp_path / "node.yaml", state, vendor, free_port())
    out = tmp_path / "report"
    code = main(["validate", "--config", str(cfg), "--labels", str(csv_path),
                 "--model", "demo-lesion", "--batch", "5", "--bootstrap", "300", "--seed", "7",
                 "--out", str(out), str(data)])  # fmt: skip
    console = capsys.readouterr()
    assert code == 0, console.err
    assert "encrypted inference" in console.err and "12/12 images" in console.err

    report = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()

    # reference: onnxruntime on the same preprocessed inputs
    manifest = load_manifest(DEMO_MODEL_DIR / "manifest.yaml")
    x = np.stack([preprocess_file(p, manifest) for p in paths])
    sess = ort.InferenceSession(str(DEMO_MODEL_DIR / "model.onnx"))
    ref = sess.run(None, {"image": x.astype(np.float32)})[0][:, 0].astype(np.float64)
    threshold = manifest.outputs[0].threshold

    per_case = {c["path"]: c for c in report["per_case"]}
    assert sorted(per_case) == sorted(rel)
    got = np.array([per_case[r]["probability"] for r in rel])
    assert float(np.abs(got - ref).max()) <= 1e-3
    # the model is right on the phantoms, so the flipped labels (and only they) are discordant
    assert [int(p >= threshold) for p in ref] == truth

    y = np.array(labels)
    assert report["cases"] == {"n": 12, "positive": int(y.sum()), "negative": int(12 - y.sum()),
                               "dicom_files_without_label": 1, "non_dicom_files": 1}  # fmt: skip
    assert report["threshold"] == threshold
    # AUROC counts (positive, negative) pairs in order; CKKS noise (<= 1e-3 here) can only
    # reorder pairs whose onnxruntime probabilities are closer than twice that (the demo model
    # saturates near 1, so a flipped negative can tie with the positives at 1 - 1e-9)
    pos, neg = ref[y == 1], ref[y == 0]
    close = int((np.abs(pos[:, None] - neg[None, :]) <= 2e-3).sum())
    assert report["auroc"]["value"] == pytest.approx(
        auroc(ref, y), abs=close / (pos.size * neg.size) + 1e-12
    )
    # and exactly the statistics of the decrypted probabilities it lists
    assert report["auroc"]["value"] == auroc(got, y)
    ci = bootstrap_auroc(got, y, resamples=300, seed=7)
    assert (report["auroc"]["ci_low"], report["auroc"]["ci_high"]) == (ci.low, ci.high)
    assert report["auroc"]["ci_low"] <= report["auroc"]["value"] <= report["auroc"]["ci_high"]
    assert report["brier"] == pytest.approx(brier_score(ref, y), abs=2e-3)
    assert report["brier"] == pytest.approx(brier_score(got, y), abs=1e-12)
    conf = confusion_at(ref, y, threshold)
    th = report["at_threshold"]
    assert (th["tp"], th["fp"], th["tn"], th["fn"]) == (conf.tp, conf.fp, conf.tn, conf.fn)
    assert th["sensitivity"] == pytest.approx(conf.sensitivity)
    assert th["specificity"] == pytest.approx(conf.specificity)
    assert [b["count"] for b in report["calibration"]] == [
        b.count for b in calibration_bins(ref, y)
    ]
    assert report["roc"]["fpr"][0] == 0.0 and report["roc"]["tpr"][-1] == 1.0

    # discordant cases: exactly the flipped ones, named by keyed pseudonym + relative path
    key = load_or_create_secret(state / "keys" / "pseudonym.key")
    pseudo = Pseudonymizer(key)
    expected = {(pseudo.instance(str(study[i].SOPInstanceUID)), rel[i]) for i in FLIPPED}
    assert {(d["pseudonym"], d["path"]) for d in report["discordant"]} == expected
    assert sorted(d["kind"] for d in report["discordant"]) == ["false negative", "false positive"]
    for d in report["discordant"]:
        assert d["decision"] != d["label"]
        assert d["pseudonym"] in md and d["path"] in md

    # every request to the vendor is in the node's signed audit chain, without identifiers
    ledger = state / "audit" / "ledger.jsonl"
    assert verify_ledger(ledger, load_public_key(public_key_path(ledger))).ok
    entries = [json.loads(line) for line in ledger.read_text().splitlines()]
    requested = [e for e in entries if e["kind"] == "inference_requested"]
    assert [e["details"]["images"] for e in requested] == [5, 5, 2]
    assert all(e["details"]["purpose"] == "validation" for e in requested)
    (done,) = [e for e in entries if e["kind"] == "validation_completed"]
    assert done["details"]["validation"] == report["run"]
    assert done["details"]["auroc"] == pytest.approx(report["auroc"]["value"], abs=1e-6)

    # plots are real PNGs of a sensible size
    for name in ("roc.png", "calibration.png"):
        w, h = _png_ok((out / name).read_bytes())
        assert w >= 300 and h >= 300

    # no planted identifier nor any UID of the set in the report or on the console
    needles = [*who.needles(), str(study[0].StudyInstanceUID).encode(),
               str(study[0].SeriesInstanceUID).encode(),
               *[str(ds.SOPInstanceUID).encode() for ds in study + extra]]  # fmt: skip
    # ... nor in anything sent to the vendor (ciphertexts, public context, headers) or its log
    assert any(b"/infer" in blob for blob in sent_to_vendor)
    vendor_log = Path(str(vendor["workdir"])) / "vendor" / "vendor.log"
    blobs = [(out / "report.json").read_bytes(), md.encode(), console.out.encode(),
             console.err.encode(), ledger.read_bytes(), vendor_log.read_bytes(),
             *sent_to_vendor]  # fmt: skip
    for needle in [*needles, *[r.encode() for r in rel]]:
        for blob in blobs[4:]:
            assert needle not in blob, needle  # not even the file paths leave the node
    for needle in needles:
        for blob in blobs[:4]:
            assert needle not in blob, needle

    # the vendor is gone (nothing listens on its port): inference failure -> exit 1
    code = main(["validate", "--config", str(cfg), "--labels", str(csv_path),
                 "--model", "demo-lesion", "--vendor", "gone-vendor",
                 "--out", str(tmp_path / "r2"), str(data)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1, err
    assert "gone-vendor" in err and not (tmp_path / "r2" / "report.json").exists()
    assert os.listdir(out)  # the first report is untouched
