"""The standard CNN builders (benchmark and reference model): valid ONNX that translates.

Only tiny inputs here; the 224x224 figures belong to ``make bench-2pc``.
"""

from __future__ import annotations

import numpy as np
import onnx

from secure_infer.demo.cnn import densenet121_onnx, resnet18_onnx
from secure_infer.twopc.architecture import load_architecture, split_model
from secure_infer.twopc.translate import build_program, run_plain
from tests.support.onnxgraph import ort_run


def _matches(model: onnx.ModelProto, size: int) -> dict[str, int]:
    x = np.random.default_rng(0).random((1, 1, size, size), dtype=np.float32)
    ref = ort_run(model, {"image": x})[0]
    split = split_model(model)
    got = run_plain(build_program(split.architecture), split.weights, x)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    ops: dict[str, int] = {}
    for n in load_architecture(split.architecture).graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return ops


def test_full_width_resnet18_small_input() -> None:
    model = resnet18_onnx(width=64, size=32, classes=2)
    n_params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    assert 11_000_000 < n_params < 11_300_000  # torchvision's ResNet-18 has 11.2 M (1 channel in)
    ops = _matches(model, 32)
    assert ops["Conv"] == 20 and ops["Add"] == 8 and "BatchNormalization" not in ops


def test_densenet121_small_input() -> None:
    model = densenet121_onnx(size=32)
    convs = sum(1 for n in model.graph.node if n.op_type == "Conv")
    assert convs == 1 + 2 * (6 + 12 + 24 + 16) + 3  # 120 convolutions + the classifier = 121
    ops = _matches(model, 32)
    assert ops["Concat"] == 58 and "BatchNormalization" not in ops
