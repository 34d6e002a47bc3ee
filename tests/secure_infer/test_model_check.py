"""``blindread model check``: exit 0 within tolerance, 1 outside, 2 unsupported; real encryption."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

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
