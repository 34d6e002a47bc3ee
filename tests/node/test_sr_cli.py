"""``blindread sr build`` / ``sr show`` end to end, in process and as ``python -m node``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import yaml

from node.cli import main
from node.keys import write_secret_file
from node.sr import read_result_sr
from tests.node.test_sr_synth import dciodvfy, make_manifest, make_study, write_study


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, object]:
    study = make_study(3, n_series=2)
    src = tmp_path / "src"
    write_study(study, src)
    (src / "README.txt").write_text("not DICOM")
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump(json.loads(make_manifest().model_dump_json())))
    outputs = tmp_path / "outputs.json"
    outputs.write_text(
        json.dumps(
            {
                "study": {"pneumothorax": 0.77, "cardiomegaly": 0.31},
                "images": {d.SOPInstanceUID: {"nodule": 0.05} for d in study},
            }
        )
    )
    key = tmp_path / "keys" / "sr-uid.key"
    write_secret_file(key, os.urandom(32))
    return {"study": study, "src": src, "manifest": manifest, "outputs": outputs, "key": key}


def _build_args(inputs: dict[str, object], out: Path, *extra: str) -> list[str]:
    return [
        "sr", "build",
        "--manifest", str(inputs["manifest"]),
        "--outputs", str(inputs["outputs"]),
        "--source-dir", str(inputs["src"]),
        "-o", str(out),
        *extra,
    ]  # fmt: skip


def test_build_then_show(
    inputs: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out" / "sr.dcm"
    sc = tmp_path / "out" / "sc.dcm"
    args = _build_args(
        inputs, out, "--uid-key-file", str(inputs["key"]), "--param", "he.scheme=CKKS",
        "--series-number", "777", "--sc", str(sc),
    )  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "5 finding(s) on 3 image(s) (1 non-image file(s) skipped)" in printed
    assert dciodvfy(out)[0] == [] and dciodvfy(sc)[0] == []
    first = pydicom.dcmread(out)
    assert first.SeriesNumber == 777
    report = read_result_sr(first)
    assert all(f.algorithm_parameters.get("he.scheme") == "CKKS" for f in report.findings)

    # the node's key file gives the node's UIDs: a rebuild has the same identity
    assert main(args) == 0
    assert pydicom.dcmread(out).SOPInstanceUID == first.SOPInstanceUID
    capsys.readouterr()

    assert main(["sr", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "pneumothorax (study): Pneumothorax (SCT 36118008)  PRESENT  p=0.7700" in shown
    assert "cardiomegaly (study): Cardiomegaly (SCT 8186001)  PRESENT  p=0.3100" in shown
    assert shown.count("nodule (image ") == 3
    assert "NOT FOR PRIMARY DIAGNOSIS" in shown
    # hand-fed outputs are never said to be computed under encryption (issue #14)
    assert "Computed under encryption: NO" in shown
    study = inputs["study"]
    assert isinstance(study, list)
    assert study[0].SOPInstanceUID not in shown  # only with --uids
    assert str(study[0].PatientName) not in shown

    assert main(["sr", "show", "--json", "--uids", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    probs = {f["label"]: f["probability"] for f in data["findings"] if f["level"] == "study"}
    assert probs == {"pneumothorax": 0.77, "cardiomegaly": 0.31}
    assert {u for f in data["findings"] for u in f["source_sop_instance_uids"]} == {
        d.SOPInstanceUID for d in study
    }


def test_build_refuses_bad_outputs_without_writing(
    inputs: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"study": {"pneumothorax": 0.2}, "images": {}}))
    out = tmp_path / "sr.dcm"
    inputs = {**inputs, "outputs": bad}
    assert main(_build_args(inputs, out)) == 1
    err = capsys.readouterr().err
    assert "missing study-level output 'cardiomegaly'" in err
    assert "no image has results" in err
    assert not out.exists()
    bad.write_text("{not json")
    assert main(_build_args(inputs, out)) == 1
    assert "not a readable JSON file" in capsys.readouterr().err
    bad.write_text(json.dumps({"study": {"pneumothorax": "high"}, "extra": 1}))
    assert main(_build_args(inputs, out)) == 1
    err = capsys.readouterr().err
    assert "study.pneumothorax" in err and "extra" in err


def test_build_refuses_an_unprotected_key_and_bad_params(
    inputs: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = Path(str(inputs["key"]))
    key.chmod(0o644)
    out = tmp_path / "sr.dcm"
    assert main(_build_args(inputs, out, "--uid-key-file", str(key))) == 2
    assert "chmod 600" in capsys.readouterr().err
    assert main(_build_args(inputs, out, "--param", "novalue")) == 2
    assert main(_build_args(inputs, out, "--series-description", "x" * 80)) == 2
    assert not out.exists()


def test_show_refuses_non_sr(inputs: dict[str, object], capsys: pytest.CaptureFixture[str]) -> None:
    image = sorted(Path(str(inputs["src"])).glob("*.dcm"))[0]
    assert main(["sr", "show", str(image)]) == 1
    assert "not a Comprehensive 3D SR" in capsys.readouterr().err
    assert main(["sr", "show", str(inputs["outputs"])]) == 1


def test_console_entry_point(inputs: dict[str, object], tmp_path: Path) -> None:
    out = tmp_path / "sr.dcm"
    cmd = [sys.executable, "-m", "node", *_build_args(inputs, out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=Path.cwd())
    assert proc.returncode == 0, proc.stderr
    assert "UIDs are random" in proc.stderr
    show = subprocess.run(
        [sys.executable, "-m", "node", "sr", "show", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert show.returncode == 0 and "Pneumothorax" in show.stdout
