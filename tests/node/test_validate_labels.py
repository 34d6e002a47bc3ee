"""Labels CSV checks, usage errors and the validation run with an in-process plaintext backend.

No vendor peer here (see tests/test_validate.py for the encrypted path): the CLI must reject bad
input before it opens any connection, listing every label problem with its CSV line number and
never echoing a UID.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from node.cli import main
from node.config import load_config
from node.demo.phantom_study import PlantedIdentity, phantom_cr_study, write_study_files
from node.demo.stack import DEMO_MODEL_DIR
from node.pipeline import InferenceOutcome
from node.validate import (
    Progress,
    ValidateInferenceError,
    ValidateUsageError,
    ValidationSettings,
    run_validation,
    select_vendor,
)
from node.validate.labels import LabelError, read_labels, scan_dicom_files
from node.validate.report import REPORT_FILES, write_report
from node.validate.stats import auroc
from secure_infer.manifest import Manifest, load_manifest


@pytest.fixture()
def dataset(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    """Six phantom CR files under tmp/set/a (+ a non-DICOM file); relpaths and UIDs."""
    study = phantom_cr_study([True, False, True, False, True, False], seed=5, size=96)
    root = tmp_path / "set"
    paths = write_study_files(study, root / "a")
    (root / "notes.txt").write_text("hello\n")
    return root, [p.relative_to(root).as_posix() for p in paths], [
        str(ds.SOPInstanceUID) for ds in study
    ]


def _config(tmp_path: Path, vendors: dict[str, list[str]]) -> Path:
    peers = {
        name: {
            "url": "https://127.0.0.1:9",  # discard port: nothing may ever connect here
            "client_cert": str(tmp_path / "missing.crt"),
            "client_key": str(tmp_path / "missing.key"),
            "ca": str(tmp_path / "missing-ca.crt"),
            "models": models,
            "max_attempts": 1,
        }
        for name, models in vendors.items()
    }
    cfg = {"node": {"state_dir": str(tmp_path / "node")}, "vendors": peers}
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_read_labels_by_path_and_uid(
    tmp_path: Path, dataset: tuple[Path, list[str], list[str]]
) -> None:
    root, rel, uids = dataset
    files, skipped = scan_dicom_files(root)
    assert skipped == 1 and [f.relpath for f in files] == rel
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(
        "\ufeffPath,SOP_Instance_UID,label,comment\n"  # BOM, any case, extra column ignored
        "# a comment line\n"
        f"{rel[0]},,1,first\n"
        "\n"
        f",{uids[1]},0,\n"
        f"./{rel[2]},,1,dot slash\n",
        encoding="utf-8",
    )
    cases = read_labels(csv_path, files)
    assert [(c.file.relpath, c.label, c.line) for c in cases] == [
        (rel[0], 1, 3), (rel[1], 0, 5), (rel[2], 1, 6)
    ]  # fmt: skip


def test_every_label_problem_listed_with_its_line(
    tmp_path: Path, dataset: tuple[Path, list[str], list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, rel, uids = dataset
    bogus_uid = "1.2.826.0.1.3680043.8.498.999999999"
    lines = [
        "path,sop_instance_uid,label",  # 1
        f"{rel[0]},,1",  # 2 ok
        f"{rel[1]},,yes",  # 3 bad label
        f"{rel[2]},{uids[2]},1",  # 4 both keys
        ",,0",  # 5 neither key
        "a/nope.dcm,,0",  # 6 missing file
        f",{bogus_uid},1",  # 7 unknown UID
        f",{uids[0]},1",  # 8 same file as line 2
        "../outside.dcm,,0",  # 9 escapes DIR
        f"{rel[3]},,0,extra",  # 10 wrong field count
        "notes.txt,,1",  # 11 not DICOM
    ]
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    cfg = _config(tmp_path, {"v": ["demo-lesion"]})
    code = main(["validate", "--config", str(cfg), "--labels", str(csv_path),
                 "--model", "demo-lesion", "--out", str(tmp_path / "r"), str(root)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "9 problem(s)" in err
    for n, what in [(3, "label must be 0 or 1, got 'yes'"), (4, "fill exactly one"),
                    (5, "fill exactly one"), (6, "no DICOM file 'a/nope.dcm'"),
                    (7, "SOP Instance UID not found"),
                    (8, f"{rel[0]!r} is already labeled on line 2"),
                    (9, "path '../outside.dcm' must be relative"),
                    (10, "4 fields, the header has 3"),
                    (11, "no DICOM file 'notes.txt'")]:  # fmt: skip
        assert f"line {n}: {what}" in err, (n, err)
    assert "line 2:" not in err
    for uid in [bogus_uid, *uids]:
        assert uid not in err  # a UID from the CSV is never echoed
    assert not (tmp_path / "r").exists()
    assert not (tmp_path / "node" / "keys" / "ckks").exists()  # no vendor client was created


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("file,label\nx,1\n", "line 1: header must name the column(s) 'path' or 'sop_inst"),
        ("path,truth\nx,1\n", "line 1: header must name the column(s) 'label'"),
        ("# only a comment\n\n", "empty; expected a header row"),
        ("path,label\n", "no labeled cases"),
    ],
)
def test_header_and_empty_files(
    tmp_path: Path, dataset: tuple[Path, list[str], list[str]], text: str, expected: str
) -> None:
    root, _, _ = dataset
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(text)
    with pytest.raises(LabelError) as info:
        read_labels(csv_path, scan_dicom_files(root)[0])
    assert expected in str(info.value)
    with pytest.raises(LabelError, match="no such file"):
        read_labels(tmp_path / "absent.csv", [])


def test_single_class_and_usage_errors_exit_2(
    tmp_path: Path, dataset: tuple[Path, list[str], list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, rel, _ = dataset
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label\n" + "".join(f"{r},0\n" for r in rel))
    cfg = _config(tmp_path, {"v1": ["demo-lesion"], "v2": ["demo-lesion"], "v3": ["other"]})
    base = ["validate", "--config", str(cfg), "--labels", str(csv_path)]

    def run(*extra: str) -> tuple[int, str]:
        code = main([*base, *extra])
        return code, capsys.readouterr().err

    code, err = run("--model", "demo-lesion", "--vendor", "v1", str(root))
    assert code == 2 and "all 6 cases are negative (0)" in err
    code, err = run("--model", "demo-lesion", str(root))
    assert code == 2 and "several vendors list 'demo-lesion' (v1, v2)" in err
    code, err = run("--model", "nope", str(root))
    assert code == 2 and "known models: demo-lesion, other" in err
    code, err = run("--model", "demo-lesion", "--vendor", "v3", str(root))
    assert code == 2 and "does not list model 'demo-lesion'" in err
    code, err = run("--model", "demo-lesion", "--vendor", "zz", str(root))
    assert code == 2 and "unknown vendor 'zz'" in err
    code, err = run("--model", "demo-lesion", "--vendor", "v1", "--batch", "0", str(root))
    assert code == 2 and "--batch" in err
    code, err = run("--model", "demo-lesion", "--vendor", "v1", str(tmp_path / "nodir"))
    assert code == 2 and "not a directory" in err
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("vendors: {v: {url: 'http://x'}}\n")
    assert main(["validate", "--config", str(bad_cfg), "--labels", str(csv_path),
                 "--model", "m", str(root)]) == 2  # fmt: skip
    assert "config error" in capsys.readouterr().err


class OnnxBackend:
    """Plaintext stand-in for the vendor (onnxruntime in process), to test the run's logic."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.manifest_ = load_manifest(DEMO_MODEL_DIR / "manifest.yaml")
        self.sess = ort.InferenceSession(str(DEMO_MODEL_DIR / "model.onnx"))
        self.batches: list[int] = []
        self.fail_on_call = fail_on_call

    def manifest(self, model: str) -> Manifest:
        return self.manifest_.public()

    def infer(self, model: str, batch: np.ndarray) -> InferenceOutcome:
        if self.fail_on_call is not None and len(self.batches) == self.fail_on_call:
            raise ConnectionError("vendor went away")
        self.batches.append(batch.shape[0])
        p = self.sess.run(None, {"image": batch.astype(np.float32)})[0]
        return InferenceOutcome(
            probabilities=p.astype(float).tolist(), model_version="1.0.0", context_sha256="c",
            request_sha256="q", response_sha256="r", bytes_up=10, bytes_down=1,
            timings={"total": 0.1}, parameters={},
        )  # fmt: skip


def test_run_batches_and_report_with_plaintext_backend(
    tmp_path: Path, dataset: tuple[Path, list[str], list[str]]
) -> None:
    root, rel, _ = dataset
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label\n" + "".join(
        f"{r},{lab}\n" for r, lab in zip(rel, [1, 0, 1, 0, 1, 0], strict=True)
    ))  # fmt: skip
    cfg = load_config(_config(tmp_path, {"v": ["demo-lesion"]}))
    backend = OnnxBackend()
    stream = io.StringIO()
    settings = ValidationSettings("demo-lesion", root, csv_path, batch=4, bootstrap=50)
    result = run_validation(cfg, settings, lambda name: backend, stream=stream)
    assert backend.batches == [4, 2]
    assert result.vendor == "v" and result.output == "lesion" and result.threshold == 0.5
    assert result.non_dicom_files == 1 and result.files_without_label == 0
    probs = [c.probability for c in result.cases]
    assert result.auroc == auroc(probs, [1, 0, 1, 0, 1, 0])
    assert "encrypted inference [########################] 6/6 images (100%)" in stream.getvalue()
    assert all(c.pseudonym.startswith("in-") and len(c.pseudonym) == 19 for c in result.cases)

    data = write_report(result, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(REPORT_FILES)
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == data
    assert data["inference"]["batches"] == 2 and data["inference"]["bytes_up"] == 20

    failing = OnnxBackend(fail_on_call=1)
    with pytest.raises(ValidateInferenceError, match="images 5-6 of 6: ConnectionError"):
        run_validation(cfg, settings, lambda name: failing, stream=io.StringIO())
    with pytest.raises(ValidateUsageError, match="no output 'x'; outputs: lesion"):
        run_validation(
            cfg, ValidationSettings("demo-lesion", root, csv_path, output="x"),
            lambda name: backend, stream=io.StringIO(),
        )  # fmt: skip


def test_unreadable_pixels_listed_by_path_before_any_inference(
    tmp_path: Path, dataset: tuple[Path, list[str], list[str]]
) -> None:
    root, rel, _ = dataset
    broken = phantom_cr_study([True], seed=9, size=96, identity=PlantedIdentity())[0]
    broken.PhotometricInterpretation = "RGB"  # not greyscale: the manifest cannot preprocess it
    broken.SamplesPerPixel = 3
    broken.PlanarConfiguration = 0
    broken.Rows, broken.Columns = 32, 32
    broken.BitsAllocated = broken.BitsStored = 8
    broken.HighBit = 7
    broken.PixelData = bytes(32 * 32 * 3)
    write_study_files([broken], root / "b")
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(f"path,label\n{rel[0]},1\n{rel[1]},0\nb/0000.dcm,1\n")
    cfg = load_config(_config(tmp_path, {"v": ["demo-lesion"]}))
    backend = OnnxBackend()
    with pytest.raises(ValidateInferenceError) as info:
        run_validation(cfg, ValidationSettings("demo-lesion", root, csv_path), lambda n: backend,
                       stream=io.StringIO())  # fmt: skip
    assert "b/0000.dcm: cannot preprocess (PreprocessError" in str(info.value)
    assert backend.batches == []  # nothing was sent
    for needle in PlantedIdentity().needles():
        assert needle.decode() not in str(info.value)


def test_missing_tls_files_are_an_inference_failure_not_a_crash(
    tmp_path: Path, dataset: tuple[Path, list[str], list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, rel, _ = dataset
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(f"path,label\n{rel[0]},1\n{rel[1]},0\n")
    cfg = _config(tmp_path, {"v": ["demo-lesion"]})  # certificate files do not exist
    code = main(["validate", "--config", str(cfg), "--labels", str(csv_path),
                 "--model", "demo-lesion", "--out", str(tmp_path / "r"), str(root)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1, err
    assert "vendor 'v': cannot fetch the manifest of 'demo-lesion'" in err
    assert not (tmp_path / "r").exists()


def test_select_vendor_when_peer_lists_no_models(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, {"v": []}))
    assert select_vendor(cfg, "demo-lesion", "v") == "v"
    with pytest.raises(ValidateUsageError, match="no configured vendor lists"):
        select_vendor(cfg, "demo-lesion", None)


def test_progress_line_without_tty() -> None:
    out = io.StringIO()
    p = Progress(3, "encrypted inference", out)
    p.update(2)
    p.update(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "2/3 images (67%)" in lines[0] and "3/3 images (100%)" in lines[1]
    assert not math.isnan(p.t0)
    # one line per tenth (plus the end), not one per image
    out = io.StringIO()
    p = Progress(1000, "preprocess", out)
    for _ in range(1000):
        p.update(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1].startswith("preprocess [####")
    assert "1000/1000 images (100%)" in lines[-1]
