"""``blindread deid`` and ``blindread vault purge`` end to end (subprocess and in-process)."""

from __future__ import annotations

import csv
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from node.cli import main
from node.vault import IdentifierVault
from tests.support.phi_corpus import Manifest, generate

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    root = tmp_path_factory.mktemp("cli-corpus")
    manifest = generate(root, seed=7, n_patients=2)
    (root / "notes.txt").write_text("not dicom")
    (root / "broken.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00")
    return root, manifest


def _config(tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "node.yaml"
    cfg.write_text(
        f"node:\n  state_dir: {tmp_path / 'state'}\n"
        "deid:\n  options: [retain_long_modified_dates, clean_descriptors]\n"
        "  burned_in:\n    policy: mask\n    masks:\n"
        "      - {manufacturer: ACME, model: DOSESCREEN, rows: 16, columns: 16,\n"
        "         regions: [{x: 0, y: 0, width: 16, height: 4}]}\n" + extra
    )
    return cfg


def test_cli_deid_with_map_out(corpus: tuple[Path, Manifest], tmp_path: Path) -> None:
    in_dir, manifest = corpus
    out, maps = tmp_path / "out", tmp_path / "maps"
    cfg = _config(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "node",
            "deid",
            str(in_dir),
            str(out),
            "--config",
            str(cfg),
            "--map-out",
            str(maps),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "files=14 written=10 blocked=2 skipped=2 errors=0" in proc.stdout
    assert "retain_long_modified_dates,clean_descriptors" in proc.stdout
    # nothing identifying on stdout/stderr (not even file names, which hold patient names)
    for phi in [*manifest.phi_strings, *manifest.uids]:
        assert phi.casefold() not in (proc.stdout + proc.stderr).casefold()
    # same relative layout
    for p in manifest.patients:
        for rel, role in p.files.items():
            assert (out / rel).exists() == (role != "us")
    # mapping files: 0600, id_old,id_new, consistent with outputs
    for name in ("uid_mapping.csv", "patient_id_mapping.csv", "skipped.csv"):
        assert stat.S_IMODE(os.stat(maps / name).st_mode) == 0o600
    with open(maps / "uid_mapping.csv") as fh:
        rows = list(csv.DictReader(fh))
    uid_map = {r["id_old"]: r["id_new"] for r in rows}
    with open(maps / "patient_id_mapping.csv") as fh:
        pid_map = {r["id_old"]: r["id_new"] for r in csv.DictReader(fh)}
    for p in manifest.patients:
        for rel, role in p.files.items():
            if role == "us":
                continue
            ds = pydicom.dcmread(out / rel)
            assert uid_map[p.sop_uids[rel]] == ds.SOPInstanceUID
            assert uid_map[p.study_uid] == ds.StudyInstanceUID
            assert pid_map[p.patient_id] == ds.PatientID
    skipped = (maps / "skipped.csv").read_text()
    assert "notes.txt" in skipped and "broken.dcm" in skipped and "us.dcm" in skipped

    # second run with the same node keys: identical pseudonyms and UIDs
    out2 = tmp_path / "out2"
    assert main(["deid", str(in_dir), str(out2), "--config", str(cfg), "--no-fsync"]) == 0
    a = pydicom.dcmread(next(out.rglob("ct_0.dcm")))
    b = pydicom.dcmread(out2 / next(out.rglob("ct_0.dcm")).relative_to(out))
    assert (a.SOPInstanceUID, a.PatientID, a.StudyDate) == (
        b.SOPInstanceUID,
        b.PatientID,
        b.StudyDate,
    )
    for key in ("deid-hmac.key", "deid-dateshift.key"):
        assert stat.S_IMODE(os.stat(tmp_path / "state" / "keys" / key).st_mode) == 0o600


def test_cli_option_flags_override_and_unknown_rejected(
    corpus: tuple[Path, Manifest], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    in_dir, _ = corpus
    assert main(["deid", str(in_dir), str(tmp_path / "o"), "--option", "retain_everything"]) == 2
    err = capsys.readouterr().err
    assert "unknown de-identification option 'retain_everything'" in err
    assert "retain_safe_private" in err and "clean_graphics" in err
    assert (
        main(
            [
                "deid",
                str(in_dir),
                str(tmp_path / "o"),
                "--no-fsync",
                "--option",
                "retain_uids",
                "--option",
                "retain_long_full_dates",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "options=retain_uids,retain_long_full_dates" in out
    ds = pydicom.dcmread(next((tmp_path / "o").rglob("ct_0.dcm")))
    assert not ds.SOPInstanceUID.startswith("2.25.")


def test_cli_bad_config_is_reported_with_yaml_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("deid:\n  options: [clean_everything]\n")
    assert main(["deid", str(tmp_path), str(tmp_path / "o"), "--config", str(cfg)]) == 2
    assert "deid.options[0]: unknown de-identification option" in capsys.readouterr().err


def test_cli_vault_purge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path)
    with IdentifierVault.open(tmp_path / "state", tmp_path / "state" / "keys") as v:
        v.store("st-old", {"PatientID": "A"})
        v.store("st-new", {"PatientID": "B"})
        v._db.execute(
            "UPDATE vault SET updated=? WHERE study_pseudonym='st-old'", (time.time() - 10 * 86400,)
        )
    assert main(["vault", "purge", "--older-than", "7", "--config", str(cfg)]) == 0
    assert "deleted 1 entry" in capsys.readouterr().out
    with IdentifierVault.open(tmp_path / "state", tmp_path / "state" / "keys") as v:
        assert "st-old" not in v and "st-new" in v
    new_key = tmp_path / "new.key"
    assert main(["vault", "rotate-key", "--config", str(cfg), "--new-key", str(new_key)]) == 0
    assert "re-encrypted 1 entries" in capsys.readouterr().out
    assert stat.S_IMODE(os.stat(new_key).st_mode) == 0o600
