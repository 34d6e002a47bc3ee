"""Standard CNN architectures as ONNX, built with ``onnx.helper`` (no torch needed).

A vendor's models are PyTorch exports of standard networks; these builders write the same graphs
node for node (Conv + BatchNormalization + Relu, MaxPool, residual ``Add``, ``Concat``,
GlobalAveragePool, Flatten, Gemm) so the two-party engine can be measured on them
(``make bench-2pc``) and the reference model can be exported from trained numpy weights. Batch
norm is left unfolded, as PyTorch exports it; the vendor-side split folds it.

- :func:`resnet18_onnx`: ResNet-18 (BasicBlock x [2, 2, 2, 2]); ``width=64`` is the full
  torchvision width, smaller widths give the "ResNet-18-style" reference model.
- :func:`densenet121_onnx`: DenseNet-121 (growth 32, blocks [6, 12, 24, 16], bn_size 4).

Weights are seeded random (He-normal convolutions, mild batch-norm statistics) unless given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["CnnBuilder", "densenet121_onnx", "resnet18_onnx"]


class CnnBuilder:
    """Appends nodes and initializers; weight values come from ``weights`` or a seeded rng."""

    def __init__(self, seed: int = 0, weights: Mapping[str, np.ndarray] | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.given = weights or {}
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}

    def param(self, name: str, value: np.ndarray) -> str:
        v = self.given.get(name, value)
        if tuple(np.shape(v)) != tuple(np.shape(value)):
            raise ValueError(f"weight {name!r}: shape {np.shape(v)}, expected {np.shape(value)}")
        self.inits[name] = np.asarray(v, dtype=np.float32)
        return name

    def node(self, op: str, inputs: Sequence[str], output: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=output, **attrs))
        return output

    def conv(self, x: str, name: str, cin: int, cout: int, k: int, stride: int = 1,
             pad: int = 0, bias: bool = False) -> str:
        w = self.param(f"{name}.weight", self.rng.normal(
            0.0, np.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k)))
        ins = [x, w]
        if bias:
            ins.append(self.param(f"{name}.bias", np.zeros(cout)))
        return self.node("Conv", ins, name, kernel_shape=[k, k], strides=[stride, stride],
                         pads=[pad] * 4)

    def bn(self, x: str, name: str, c: int) -> str:
        r = self.rng
        ins = [x, self.param(f"{name}.weight", r.uniform(0.8, 1.2, c)),
               self.param(f"{name}.bias", r.normal(0.0, 0.05, c)),
               self.param(f"{name}.running_mean", r.normal(0.0, 0.05, c)),
               self.param(f"{name}.running_var", r.uniform(0.8, 1.2, c))]
        return self.node("BatchNormalization", ins, name, epsilon=1e-5)

    def relu(self, x: str, name: str) -> str:
        return self.node("Relu", [x], name)

    def head(self, x: str, c: int, classes: int) -> str:
        y = self.node("GlobalAveragePool", [x], "gap")
        y = self.node("Flatten", [y], "flatten", axis=1)
        w = self.param("fc.weight", self.rng.normal(0.0, 1.0 / np.sqrt(c), (classes, c)))
        b = self.param("fc.bias", np.zeros(classes))
        return self.node("Gemm", [y, w, b], "logits", transB=1)

    def model(self, size: int, channels: int, output: str, doc: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "cnn",
            [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, channels, size, size])],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
            initializer=[numpy_helper.from_array(v, k) for k, v in self.inits.items()],
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="blindread-demo", doc_string=doc)
        m.ir_version = 8
        return onnx.shape_inference.infer_shapes(m)


def resnet18_onnx(width: int = 64, size: int = 224, channels: int = 1, classes: int = 1,
                  seed: int = 0, weights: Mapping[str, np.ndarray] | None = None,
                  final: str | None = None) -> onnx.ModelProto:
    """ResNet-18 as torchvision builds it (stem 7x7/2 + MaxPool 3x3/2, four stages of two
    BasicBlocks, 1x1 stride-2 downsampling), ``width`` channels in the first stage; ``final``
    ("Sigmoid", "Softmax") appends that activation to the logits."""
    b = CnnBuilder(seed, weights)
    x = b.relu(b.bn(b.conv("image", "conv1", channels, width, 7, 2, 3), "bn1", width), "relu1")
    x = b.node("MaxPool", [x], "maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    cin = width
    for stage in range(4):
        cout = width * 2 ** stage
        for block in range(2):
            p = f"layer{stage + 1}.{block}"
            stride = 2 if stage > 0 and block == 0 else 1
            y = b.relu(b.bn(b.conv(x, f"{p}.conv1", cin, cout, 3, stride, 1), f"{p}.bn1", cout),
                       f"{p}.relu1")
            y = b.bn(b.conv(y, f"{p}.conv2", cout, cout, 3, 1, 1), f"{p}.bn2", cout)
            skip = x
            if stride != 1 or cin != cout:
                skip = b.bn(b.conv(x, f"{p}.downsample.0", cin, cout, 1, stride),
                            f"{p}.downsample.1", cout)
            x = b.relu(b.node("Add", [y, skip], f"{p}.add"), f"{p}.relu2")
            cin = cout
    out = b.head(x, cin, classes)
    if final is not None:
        out = b.node(final, [out], "prob")
    return b.model(size, channels, out, f"ResNet-18 width {width}, {size}x{size}")


def densenet121_onnx(growth: int = 32, size: int = 224, channels: int = 1, classes: int = 1,
                     seed: int = 0, blocks: Sequence[int] = (6, 12, 24, 16),
                     ) -> onnx.ModelProto:
    """DenseNet-121 as torchvision builds it (bn_size 4, compression 0.5)."""
    b = CnnBuilder(seed)
    c = 2 * growth
    x = b.relu(b.bn(b.conv("image", "conv0", channels, c, 7, 2, 3), "norm0", c), "relu0")
    x = b.node("MaxPool", [x], "pool0", kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    for i, n_layers in enumerate(blocks):
        for j in range(n_layers):
            p = f"denseblock{i + 1}.layer{j + 1}"
            y = b.relu(b.bn(x, f"{p}.norm1", c), f"{p}.relu1")
            y = b.conv(y, f"{p}.conv1", c, 4 * growth, 1)
            y = b.relu(b.bn(y, f"{p}.norm2", 4 * growth), f"{p}.relu2")
            y = b.conv(y, f"{p}.conv2", 4 * growth, growth, 3, 1, 1)
            x = b.node("Concat", [x, y], f"{p}.concat", axis=1)
            c += growth
        if i != len(blocks) - 1:
            p = f"transition{i + 1}"
            y = b.relu(b.bn(x, f"{p}.norm", c), f"{p}.relu")
            y = b.conv(y, f"{p}.conv", c, c // 2, 1)
            x = b.node("AveragePool", [y], f"{p}.pool", kernel_shape=[2, 2], strides=[2, 2])
            c //= 2
    x = b.relu(b.bn(x, "norm5", c), "relu5")
    out = b.head(x, c, classes)
    return b.model(size, channels, out, f"DenseNet-121 growth {growth}, {size}x{size}")
