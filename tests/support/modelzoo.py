"""Small sequential ONNX models built with ``onnx.helper`` (tests, ``model check``, benchmarks).

A layer list such as ``[("conv", 4, 3, 2, 1), ("square",), ("flatten",), ("gemm", 8)]`` becomes a
valid ONNX graph with seeded random weights, so encrypted results can be compared against
onnxruntime on many shapes without shipping model files. ``demo_architecture`` rebuilds the demo
model's architecture (see the contract) with random weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["build_sequential", "demo_architecture"]

Layer = tuple[Any, ...]


def build_sequential(
    input_shape: Sequence[int], layers: Sequence[Layer], seed: int = 0, opset: int = 17
) -> onnx.ModelProto:
    """Build a single-path model ``input [N, *input_shape] -> ... -> output``.

    Layers: ``("conv", out, k, stride, pad[, group])``, ``("square",)``, ``("pow2",)``,
    ``("avgpool", k, stride, pad)``, ``("gap",)``, ``("bn",)``, ``("flatten",)``,
    ``("reshape",)``, ``("gemm", out)``, ``("matmul", out)``, ``("add",)``, ``("mul",)``,
    ``("relu",)``, ``("tanh",)``, ``("sigmoid",)``, ``("silu",)``, ``("maxpool", k)``,
    ``("final_sigmoid",)``, ``("final_softmax",)``.
    """
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    shape = list(input_shape)
    cur = "input"

    def const(name: str, arr: np.ndarray | float) -> str:
        inits.append(numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name))
        return name

    for i, layer in enumerate(layers):
        kind = layer[0]
        out = f"t{i}"
        if kind == "conv":
            co, k, stride, pad = layer[1:5]
            group = layer[5] if len(layer) > 5 else 1
            ci = shape[0]
            fan = ci // group * k * k
            w = rng.normal(0, 1 / np.sqrt(fan), size=(co, ci // group, k, k))
            b = rng.normal(0, 0.1, size=co)
            nodes.append(helper.make_node(
                "Conv", [cur, const(f"w{i}", w), const(f"b{i}", b)], [out], name=f"conv{i}",
                kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, group=group))
            h = (shape[1] + 2 * pad - k) // stride + 1
            wd = (shape[2] + 2 * pad - k) // stride + 1
            shape = [co, h, wd]
        elif kind in ("square", "mul_self"):
            nodes.append(helper.make_node("Mul", [cur, cur], [out], name=f"sq{i}"))
        elif kind == "pow2":
            nodes.append(helper.make_node("Pow", [cur, const(f"e{i}", np.array(2.0))], [out],
                                          name=f"pow{i}"))
        elif kind == "avgpool":
            k, stride, pad = layer[1:4]
            nodes.append(helper.make_node("AveragePool", [cur], [out], name=f"pool{i}",
                                          kernel_shape=[k, k], strides=[stride, stride],
                                          pads=[pad] * 4))
            shape = [shape[0], (shape[1] + 2 * pad - k) // stride + 1,
                     (shape[2] + 2 * pad - k) // stride + 1]
        elif kind == "maxpool":
            k = layer[1]
            nodes.append(helper.make_node("MaxPool", [cur], [out], name=f"maxpool{i}",
                                          kernel_shape=[k, k], strides=[k, k]))
            shape = [shape[0], shape[1] // k, shape[2] // k]
        elif kind == "gap":
            nodes.append(helper.make_node("GlobalAveragePool", [cur], [out], name=f"gap{i}"))
            shape = [shape[0], 1, 1]
        elif kind == "bn":
            c = shape[0]
            args = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c),
                    rng.uniform(0.5, 1.5, c)]
            names = [const(f"bn{i}_{j}", a) for j, a in enumerate(args)]
            nodes.append(helper.make_node("BatchNormalization", [cur, *names], [out],
                                          name=f"bn{i}", epsilon=1e-5))
        elif kind == "flatten":
            nodes.append(helper.make_node("Flatten", [cur], [out], name=f"flatten{i}", axis=1))
            shape = [int(np.prod(shape))]
        elif kind == "reshape":
            tgt = np.array([-1, int(np.prod(shape))], dtype=np.int64)
            inits.append(numpy_helper.from_array(tgt, f"shape{i}"))
            nodes.append(helper.make_node("Reshape", [cur, f"shape{i}"], [out], name=f"reshape{i}"))
            shape = [int(np.prod(shape))]
        elif kind in ("gemm", "matmul"):
            n_out = layer[1]
            n_in = shape[0]
            w = rng.normal(0, 1 / np.sqrt(n_in), size=(n_in, n_out))
            if kind == "gemm":
                nodes.append(helper.make_node(
                    "Gemm", [cur, const(f"w{i}", w.T), const(f"b{i}", rng.normal(0, 0.1, n_out))],
                    [out], name=f"gemm{i}", transB=1))
            else:
                nodes.append(helper.make_node("MatMul", [cur, const(f"w{i}", w)], [out],
                                              name=f"matmul{i}"))
            shape = [n_out]
        elif kind == "add":
            nodes.append(helper.make_node("Add", [cur, const(f"a{i}", rng.normal(0, 0.1, shape))],
                                          [out], name=f"add{i}"))
        elif kind == "mul":
            nodes.append(helper.make_node(
                "Mul", [cur, const(f"m{i}", rng.uniform(0.5, 1.5, shape))], [out], name=f"mul{i}"))
        elif kind in ("relu", "tanh", "sigmoid"):
            op = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}[kind]
            nodes.append(helper.make_node(op, [cur], [out], name=f"{kind}{i}"))
        elif kind == "silu":
            nodes.append(helper.make_node("Sigmoid", [cur], [f"s{i}"], name=f"silu_sig{i}"))
            nodes.append(helper.make_node("Mul", [cur, f"s{i}"], [out], name=f"silu_mul{i}"))
        elif kind == "final_sigmoid":
            nodes.append(helper.make_node("Sigmoid", [cur], [out], name="final_sigmoid"))
        elif kind == "final_softmax":
            nodes.append(helper.make_node("Softmax", [cur], [out], name="final_softmax", axis=1))
        else:
            raise ValueError(f"unknown layer {kind!r}")
        cur = out
    nodes[-1].output[0] = "output"
    graph = helper.make_graph(
        nodes, "sequential",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *input_shape])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", *shape])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def demo_architecture(seed: int = 0) -> onnx.ModelProto:
    """The demo-lesion architecture (contract) with random weights; ``image`` -> ``prob``."""
    m = build_sequential(
        (1, 64, 64),
        [("conv", 4, 8, 8, 0), ("square",), ("flatten",), ("gemm", 32), ("square",),
         ("gemm", 1), ("final_sigmoid",)],
        seed,
    )
    m.graph.input[0].name = "image"
    m.graph.node[0].input[0] = "image"
    m.graph.output[0].name = "prob"
    m.graph.node[-1].output[0] = "prob"
    return m
