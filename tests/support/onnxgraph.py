"""A tiny builder of arbitrary (non-sequential) ONNX graphs with seeded random weights.

``tests/support/modelzoo.py`` builds single-path models for the CKKS engine; the two-party
engine takes any DAG (residual ``Add``, ``Concat``, PyTorch-style shape arithmetic), so its tests
build graphs node by node: ``g = Graph((1, 3, 8, 8)); y = g.node("Relu", [g.x]); g.model([y])``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["Graph", "ort_run"]


class Graph:
    """Nodes, initializers and one float image input ``x`` (batch symbolic if asked)."""

    def __init__(self, shape: Sequence[int], seed: int = 0, opset: int = 17,
                 symbolic_batch: bool = False) -> None:
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.shape = tuple(shape)
        dims: list[Any] = list(shape)
        if symbolic_batch:
            dims[0] = "N"
        self.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)]
        self.x = "x"
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def _name(self, stem: str) -> str:
        self._n += 1
        return f"{stem}{self._n}"

    def const(self, value: np.ndarray | Sequence[float] | float, dtype: Any = np.float32) -> str:
        name = self._name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def weight(self, *shape: int, scale: float | None = None) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        s = scale if scale is not None else 1.0 / np.sqrt(max(1, fan_in))
        return self.const(self.rng.normal(0.0, s, size=shape))

    def node(self, op: str, inputs: Sequence[str], n_out: int = 1, name: str | None = None,
             **attrs: Any) -> str:
        outs = [self._name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs,
                                           name=name or self._name(op + "_"), **attrs))
        return outs[0]

    def conv(self, x: str, cin: int, cout: int, k: int, group: int = 1, bias: bool = True,
             **attrs: Any) -> str:
        w = self.weight(cout, cin // group, k, k)
        ins = [x, w] + ([self.const(self.rng.normal(0, 0.1, cout))] if bias else [])
        return self.node("Conv", ins, group=group, kernel_shape=[k, k], **attrs)

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        return self.node("BatchNormalization", [
            x, self.const(r.uniform(0.5, 1.5, c)), self.const(r.normal(0, 0.1, c)),
            self.const(r.normal(0, 0.1, c)), self.const(r.uniform(0.5, 1.5, c))], epsilon=1e-5)

    def model(self, outputs: Sequence[str]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "test", self.inputs,
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
            initializer=self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = 8
        return m

    def image(self, seed: int = 1) -> np.ndarray:
        return np.random.default_rng(seed).normal(0, 1, self.shape).astype(np.float32)


def ort_run(model: onnx.ModelProto | bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    data = model if isinstance(model, bytes) else model.SerializeToString()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in sess.run(None, feeds)]
