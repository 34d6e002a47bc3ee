"""The demo lesion model's fixed architecture in numpy: forward, backward and ONNX export.

Architecture (fixed by the secure_infer contract so the CKKS compiler can target it)::

    image [N,1,64,64] in [0,1]
      -> Conv(4, kernel 8x8, stride 8, bias) -> Mul(x, x) -> Flatten (256)
      -> Gemm(256 -> 32, bias) -> Mul(x, x) -> Gemm(32 -> 1, bias) -> Sigmoid -> prob [N,1]

Hand-written in numpy (no deep-learning framework): the network has three linear layers and two
squares, so a forward/backward pass is a few lines, and CI stays free of multi-gigabyte
frameworks. A stride-8, 8x8 convolution without padding is a matrix product over the 64
non-overlapping 8x8 patches, which is how :func:`patches` computes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "IMAGE_SIZE",
    "DemoWeights",
    "Forward",
    "backward",
    "export_onnx",
    "forward",
    "init_weights",
    "load_onnx_weights",
    "patches",
]

IMAGE_SIZE = 64
KERNEL = 8
CONV_CHANNELS = 4
GRID = IMAGE_SIZE // KERNEL  # 8x8 output positions
FLAT = CONV_CHANNELS * GRID * GRID  # 256
HIDDEN = 32

F64 = npt.NDArray[np.float64]


@dataclass
class DemoWeights:
    """Weights in ONNX layouts: conv [4,1,8,8], Gemm weights [out, in] (used with transB=1)."""

    conv_w: F64
    conv_b: F64
    fc1_w: F64
    fc1_b: F64
    fc2_w: F64
    fc2_b: F64

    def arrays(self) -> dict[str, F64]:
        return {k: getattr(self, k) for k in
                ("conv_w", "conv_b", "fc1_w", "fc1_b", "fc2_w", "fc2_b")}


@dataclass
class Forward:
    """Intermediate values of one forward pass (kept for backward and for range checks)."""

    p: F64  # patches [N, 64 positions, 64 pixels]
    conv: F64  # conv output flattened in ONNX order [N, 256] (channel-major)
    fc1: F64  # pre-square hidden [N, 32]
    logit: F64  # [N, 1]

    @property
    def prob(self) -> F64:
        return 1.0 / (1.0 + np.exp(-self.logit))


def init_weights(rng: np.random.Generator) -> DemoWeights:
    """Small random weights: squares shrink small values, so start near unit pre-activations."""
    return DemoWeights(
        conv_w=rng.normal(0.0, 0.15, (CONV_CHANNELS, 1, KERNEL, KERNEL)),
        conv_b=np.zeros(CONV_CHANNELS),
        fc1_w=rng.normal(0.0, 1.0 / np.sqrt(FLAT), (HIDDEN, FLAT)),
        fc1_b=np.zeros(HIDDEN),
        fc2_w=rng.normal(0.0, 1.0 / np.sqrt(HIDDEN), (1, HIDDEN)),
        fc2_b=np.zeros(1),
    )


def patches(x: npt.NDArray[np.floating]) -> F64:
    """[N,1,64,64] -> [N, 64 positions (row-major 8x8 grid), 64 pixels (row-major 8x8 patch)]."""
    n = x.shape[0]
    t = np.asarray(x, dtype=np.float64).reshape(n, GRID, KERNEL, GRID, KERNEL)
    return t.transpose(0, 1, 3, 2, 4).reshape(n, GRID * GRID, KERNEL * KERNEL)


def forward(w: DemoWeights, x: npt.NDArray[np.floating]) -> Forward:
    """Plaintext forward pass in float64; equals the exported ONNX graph."""
    p = patches(x)
    wm = w.conv_w.reshape(CONV_CHANNELS, KERNEL * KERNEL)
    c = p @ wm.T + w.conv_b  # [N, pos, ch]
    conv = c.transpose(0, 2, 1).reshape(x.shape[0], FLAT)  # ONNX Flatten of [N, ch, 8, 8]
    fc1 = (conv * conv) @ w.fc1_w.T + w.fc1_b
    logit = (fc1 * fc1) @ w.fc2_w.T + w.fc2_b
    return Forward(p=p, conv=conv, fc1=fc1, logit=logit)


def backward(
    w: DemoWeights,
    f: Forward,
    dlogit: F64,
    d_fc1_extra: F64 | None = None,
    d_conv_extra: F64 | None = None,
) -> DemoWeights:
    """Gradients with respect to all weights, given d loss / d logit [N, 1].

    ``d_fc1_extra`` [N, 32] and ``d_conv_extra`` [N, 256] add loss terms that act directly on the
    pre-square activations (the training's magnitude penalties).
    """
    n = f.p.shape[0]
    s2 = f.fc1 * f.fc1
    g_fc2_w = dlogit.T @ s2
    g_fc2_b = dlogit.sum(axis=0)
    d_fc1 = (dlogit @ w.fc2_w) * 2.0 * f.fc1
    if d_fc1_extra is not None:
        d_fc1 = d_fc1 + d_fc1_extra
    s1 = f.conv * f.conv
    g_fc1_w = d_fc1.T @ s1
    g_fc1_b = d_fc1.sum(axis=0)
    d_conv = (d_fc1 @ w.fc1_w) * 2.0 * f.conv  # [N, 256] channel-major
    if d_conv_extra is not None:
        d_conv = d_conv + d_conv_extra
    d_c = d_conv.reshape(n, CONV_CHANNELS, GRID * GRID).transpose(0, 2, 1)  # [N, pos, ch]
    g_wm = d_c.reshape(-1, CONV_CHANNELS).T @ f.p.reshape(-1, KERNEL * KERNEL)
    g_conv_b = d_c.sum(axis=(0, 1))
    return DemoWeights(
        conv_w=g_wm.reshape(w.conv_w.shape),
        conv_b=g_conv_b,
        fc1_w=g_fc1_w,
        fc1_b=g_fc1_b,
        fc2_w=g_fc2_w,
        fc2_b=g_fc2_b,
    )


def export_onnx(w: DemoWeights, path: Path, doc: str = "") -> onnx.ModelProto:
    """Write the network as an ONNX opset-17 graph (input "image", output "prob", batch "N")."""
    inits = [
        numpy_helper.from_array(np.asarray(v, dtype=np.float32), name=k)
        for k, v in w.arrays().items()
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["conv"], name="conv",
                         kernel_shape=[KERNEL, KERNEL], strides=[KERNEL, KERNEL],
                         pads=[0, 0, 0, 0]),
        helper.make_node("Mul", ["conv", "conv"], ["conv_sq"], name="square1"),
        helper.make_node("Flatten", ["conv_sq"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc1_w", "fc1_b"], ["fc1"], name="fc1", transB=1),
        helper.make_node("Mul", ["fc1", "fc1"], ["fc1_sq"], name="square2"),
        helper.make_node("Gemm", ["fc1_sq", "fc2_w", "fc2_b"], ["logit"], name="fc2", transB=1),
        helper.make_node("Sigmoid", ["logit"], ["prob"], name="sigmoid"),
    ]
    graph = helper.make_graph(
        nodes,
        "demo_lesion",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                       ["N", 1, IMAGE_SIZE, IMAGE_SIZE])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="blindread-demo",
        producer_version="1",
        doc_string=doc,
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(model.SerializeToString())
    tmp.replace(path)
    return model


def load_onnx_weights(path: Path) -> DemoWeights:
    """Read the demo model's weights back from its ONNX file (for tests and the evaluator)."""
    model = onnx.load(str(path))
    arrays = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    return DemoWeights(**{k: arrays[k] for k in
                          ("conv_w", "conv_b", "fc1_w", "fc1_b", "fc2_w", "fc2_b")})
