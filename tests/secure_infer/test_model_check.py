"""``blindread model check``: exit 0 within tolerance, 1 outside, 2 unsupported; real encryption."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from node.cli import main
from tests.support.modelzoo import build_sequential

ROOT = Path(__file__).resolve().parents[2]


def _save(tmp: Path, layers: list[tuple[object, ...]], shape: tuple[int, ...] = (1, 6, 6),
          seed: int = 0) -> Path:
    path = tmp / "m.onnx"
    onnx.save(build_sequential(shape, layers, seed=seed), path)  # type: ignore[arg-type]
    return path


def test_check_ok_prints_parameters_and_error(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    m = _save(tmp_path, [("conv", 2, 3, 1, 1), ("square",), ("flatten",), ("gemm", 1),
                         ("final_sigmoid",)])
    assert main(["model", "check", str(m), "--samples", "3"]) == 0
    out = capsys.readouterr().out
    assert "N=8192" in out and "128-bit" in out and "max |HE - onnxruntime|" in out
    assert "result       OK" in out


def test_check_input_npy_and_tolerance_exit_1(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    m = _save(tmp_path, [("flatten",), ("gemm", 4), ("relu",), ("gemm", 2)], shape=(8,))
    x = np.random.default_rng(0).uniform(0, 1, size=(4, 8))
    np.save(tmp_path / "x.npy", x)
    # a quadratic ReLU stand-in is not within 1e-6 of the original model
    rc = main(["model", "check", str(m), "--input-npy", str(tmp_path / "x.npy"),
               "--approx-range", "-3", "3", "--tolerance", "1e-6"])
    assert rc == 1
    out = capsys.readouterr().out
    assert "Relu" in out and "OUTSIDE TOLERANCE" in out and "(4 inputs" in out


def test_check_unsupported_exit_2(tmp_path: Path) -> None:
    m = _save(tmp_path, [("conv", 2, 2, 2, 0), ("maxpool", 2), ("flatten",), ("gemm", 1)])
    proc = subprocess.run([sys.executable, "-m", "node", "model", "check", str(m)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert "MaxPool" in proc.stderr and "maxpool1" in proc.stderr


# --- issue #14: batch 1 exports, meaningless comparisons, every unsupported op -------------------


def test_check_model_with_a_fixed_batch_of_one(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    model = build_sequential((8,), [("flatten",), ("gemm", 2), ("final_sigmoid",)], seed=1)
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1  # type: ignore[attr-defined]
    path = tmp_path / "b1.onnx"
    onnx.save(model, path)  # type: ignore[arg-type]
    assert main(["model", "check", str(path), "--samples", "3"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "onnxruntime cannot run" not in captured.err
    assert "(3 inputs" in captured.out


def test_saturated_outputs_make_the_check_meaningless(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # weights x 1000: logits in the hundreds, as uniform noise gives the demo model
    model = build_sequential((8,), [("flatten",), ("gemm", 2), ("final_sigmoid",)], seed=3)
    for init in model.graph.initializer:  # type: ignore[attr-defined]
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1000.0, init.name))
    m = tmp_path / "big.onnx"
    onnx.save(model, m)  # type: ignore[arg-type]
    assert main(["model", "check", str(m), "--samples", "3"]) == 2
    out = capsys.readouterr().out
    assert "result       MEANINGLESS" in out and "saturated" in out
    assert "result       OK" not in out


def test_demo_model_checked_on_phantoms_not_noise(capsys: pytest.CaptureFixture[str]) -> None:
    demo = ROOT / "secure_infer" / "models" / "demo-lesion"
    rc = main(["model", "check", str(demo / "model.onnx"), "--manifest",
               str(demo / "manifest.yaml"), "--samples", "2"])
    out = capsys.readouterr().out
    assert "inputs       2 synthetic phantom(s) through the manifest's preprocessing" in out
    assert rc == 0 and "result       OK" in out


def test_check_names_every_unsupported_op(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    m = _save(tmp_path, [("maxpool", 2), ("maxpool", 2), ("flatten",), ("gemm", 1)],
              shape=(1, 8, 8))
    names = [n.name for n in onnx.load(str(m)).graph.node if n.op_type == "MaxPool"]
    assert len(names) == 2
    assert main(["model", "check", str(m)]) == 2
    err = capsys.readouterr().err
    assert "2 unsupported operations" in err
    assert all(f"{name!r} (MaxPool)" in err for name in names)
