"""Translated programs under SPU's two-party Cheetah simulator match onnxruntime (slow).

The simulator runs the real Cheetah protocol for both parties in one process; every input
(image and vendor weights) is secret shared. Shapes are tiny: the protocol costs tens of
seconds per network on two shared cores even so. Decisions and probabilities must match within
the fixed-point error; the plaintext translation itself is checked tightly in
test_twopc_translate.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from secure_infer.twopc.architecture import split_model
from secure_infer.twopc.program import FixedPoint
from secure_infer.twopc.simulate import run_simulated
from secure_infer.twopc.translate import build_program
from tests.secure_infer.test_twopc_translate import _residual
from tests.support.onnxgraph import Graph, ort_run

pytestmark = pytest.mark.slow

DEMO = Path(__file__).resolve().parents[2] / "secure_infer" / "models" / "demo-lesion"


def _op_mix(seed: int) -> tuple[Graph, list[str]]:
    """Most of the table's ops in one small graph (one simulator run covers them)."""
    g = Graph((1, 2, 6, 6), seed=seed, symbolic_batch=True)
    a = g.conv(g.x, 2, 3, 3, group=1, pads=[1, 1, 1, 1])
    b = g.conv(g.x, 2, 2, 3, group=2, strides=[2, 2], auto_pad="SAME_UPPER")
    b = g.node("Resize", [b, g.const([], np.float32), g.const([1.0, 1.0, 2.0, 2.0])],
               mode="linear")
    c = g.node("Concat", [g.node("LeakyRelu", [a], alpha=0.1),
                          g.node("Clip", [b, g.const(0.0), g.const(6.0)])], axis=1)
    c = g.node("Pad", [c, g.const([0, 0, 1, 0, 0, 0, 0, 1], np.int64)], mode="edge")
    m = g.node("MaxPool", [c], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    p = g.node("AveragePool", [c], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    y = g.node("Add", [g.node("Tanh", [m]), g.node("Div", [p, g.const(2.0)])])
    y = g.node("Sub", [g.node("Mul", [y, g.const(1.5)]), g.node("Sigmoid", [p])])
    y = g.node("Transpose", [y], perm=[0, 1, 3, 2])
    y = g.node("Flatten", [g.node("GlobalAveragePool", [y])])
    y = g.node("Gemm", [y, g.weight(3, 5), g.const([0.1, -0.2, 0.3])], transB=1)
    return g, [g.node("Softmax", [y], axis=1)]


def _simulated_error(model: object, x: np.ndarray, fp: FixedPoint | None = None) -> float:
    split = split_model(model)  # type: ignore[arg-type]
    program = build_program(split.architecture)
    got = run_simulated(program, split.weights, x, fp)
    ref = ort_run(model, {program.input.name: x})  # type: ignore[arg-type]
    assert [r.shape for r in ref] == [o.shape for o in got]
    return max(float(np.abs(r - o).max()) for r, o in zip(ref, got, strict=False))


@pytest.mark.parametrize("name", ["residual", "op_mix"])
def test_random_network_under_cheetah_matches_onnxruntime(name: str) -> None:
    g, outs = _residual(0) if name == "residual" else _op_mix(3)
    err = _simulated_error(g.model(outs), g.image(4))
    assert err < 5e-3  # probabilities in [0, 1]; FM64 with 18 fraction bits


def test_demo_model_under_cheetah_matches_onnxruntime() -> None:
    import onnx

    from secure_infer.demo.phantoms import labelled_set

    x, _ = labelled_set(seed=77, n=2)
    model = onnx.load(str(DEMO / "model.onnx"))
    err = _simulated_error(model, x[:1].reshape(1, 1, 64, 64).astype(np.float32))
    assert err < 5e-3
