"""ONNX -> JAX translation for the two-party engine, against onnxruntime in the clear.

Every case builds a small random graph with ``onnx.helper``, splits it into architecture and
weights exactly as the vendor does, translates the architecture alone and compares the JAX
function (given the weights) with onnxruntime on the original model.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest

from secure_infer.errors import CompileError
from secure_infer.twopc.architecture import load_architecture, split_model
from secure_infer.twopc.translate import build_program, run_plain
from tests.support.onnxgraph import Graph, ort_run

Case = Callable[[int], tuple[Graph, list[str]]]


def _check(g: Graph, outs: list[str], seed: int = 1, tol: float = 1e-4) -> float:
    model = g.model(outs)
    x = g.image(seed)
    ref = ort_run(model, {"x": x})
    split = split_model(model)
    program = build_program(split.architecture)
    got = run_plain(program, split.weights, x)
    worst = 0.0
    for r, o in zip(ref, got, strict=False):
        assert r.shape == o.shape
        scale = max(1.0, float(np.abs(r).max()))
        err = float(np.abs(r - o).max())
        assert err <= tol * scale, (err, scale)
        worst = max(worst, err / scale)
    return worst


# ------------------------------------------------------------------------------ convolutions

CONV_FORMS = [
    dict(k=3, strides=[1, 1], pads=[1, 1, 1, 1]),
    dict(k=3, strides=[2, 2], pads=[1, 0, 0, 1]),
    dict(k=5, strides=[2, 1], pads=[2, 2, 1, 1], dilations=[1, 1]),
    dict(k=3, strides=[1, 1], dilations=[2, 2], pads=[2, 2, 2, 2]),
    dict(k=3, strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(k=4, strides=[3, 3], auto_pad="SAME_LOWER"),
    dict(k=3, strides=[1, 1], auto_pad="VALID"),
    dict(k=7, strides=[2, 2], pads=[3, 3, 3, 3]),
    dict(k=1, strides=[1, 1]),
]


def _form_id(form: dict) -> str:
    return "-".join(f"{k}{v}" for k, v in form.items())


@pytest.mark.parametrize("form", CONV_FORMS, ids=_form_id)
def test_conv_forms(form: dict) -> None:
    form = dict(form)
    g = Graph((1, 3, 11, 10), seed=len(str(form)))
    y = g.conv(g.x, 3, 4, form.pop("k"), **form)
    _check(g, [y])


@pytest.mark.parametrize("group,cin,cout", [(2, 4, 6), (4, 4, 4), (3, 6, 3)])
def test_grouped_and_depthwise_conv(group: int, cin: int, cout: int) -> None:
    g = Graph((1, cin, 9, 9), seed=group)
    y = g.conv(g.x, cin, cout, 3, group=group, pads=[1, 1, 1, 1], strides=[2, 2])
    _check(g, [y])


def test_conv_without_bias_and_1d() -> None:
    g = Graph((1, 2, 16), seed=3)
    w = g.weight(3, 2, 5)
    y = g.node("Conv", [g.x, w], kernel_shape=[5], strides=[2], pads=[2, 1])
    _check(g, [y])


# ------------------------------------------------------------------ random residual/concat nets


def _residual(seed: int) -> tuple[Graph, list[str]]:
    rng = np.random.default_rng(seed)
    c = int(rng.integers(2, 5))
    g = Graph((1, 2, 12, 12), seed=seed, symbolic_batch=bool(seed % 2))
    y = g.node("Relu", [g.bn(g.conv(g.x, 2, c, 3, pads=[1, 1, 1, 1], bias=False), c)])
    y = g.node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    skip = y
    z = g.node("Relu", [g.bn(g.conv(y, c, c, 3, pads=[1, 1, 1, 1], bias=False), c)])
    z = g.bn(g.conv(z, c, c, 3, pads=[1, 1, 1, 1], bias=False), c)
    y = g.node("Relu", [g.node("Add", [z, skip])])
    down = g.bn(g.conv(y, c, 2 * c, 1, strides=[2, 2], bias=False), 2 * c)
    z = g.node("Relu", [g.bn(g.conv(y, c, 2 * c, 3, strides=[2, 2], pads=[1, 1, 1, 1]), 2 * c)])
    y = g.node("Relu", [g.node("Add", [g.conv(z, 2 * c, 2 * c, 3, pads=[1, 1, 1, 1]), down])])
    y = g.node("Flatten", [g.node("GlobalAveragePool", [y])])
    y = g.node("Gemm", [y, g.weight(3, 2 * c), g.const(rng.normal(0, 0.1, 3))], transB=1)
    return g, [g.node("Softmax", [y], axis=1)]


def _dense(seed: int) -> tuple[Graph, list[str]]:
    rng = np.random.default_rng(seed)
    g = Graph((1, 3, 10, 10), seed=seed, symbolic_batch=bool(seed % 2))
    feats, c = g.conv(g.x, 3, 4, 3, pads=[1, 1, 1, 1]), 4
    for _ in range(2):  # a DenseNet block: each layer's output concatenated to its input
        h = g.node("Relu", [g.bn(feats, c)])
        h = g.conv(h, c, 3, 3, pads=[1, 1, 1, 1], bias=False)
        feats, c = g.node("Concat", [feats, h], axis=1), c + 3
    t = g.conv(g.node("Relu", [g.bn(feats, c)]), c, 4, 1, bias=False)  # transition
    t = g.node("AveragePool", [t], kernel_shape=[2, 2], strides=[2, 2])
    t = g.node("GlobalAveragePool", [g.node("Relu", [t])])
    t = g.node("Reshape", [t, g.const([1, -1], np.int64)])
    out = g.node("Gemm", [t, g.weight(4, 2), g.const(rng.normal(0, 0.1, 2))])
    return g, [g.node("Sigmoid", [out])]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", [_residual, _dense], ids=["residual", "dense"])
def test_random_networks_match_onnxruntime(case: Case, seed: int) -> None:
    g, outs = case(seed)
    _check(g, outs, seed=seed + 10)


def test_batch_norm_is_folded_out_of_the_architecture() -> None:
    g, outs = _residual(0)
    split = split_model(g.model(outs))
    arch = load_architecture(split.architecture)
    assert "BatchNormalization" not in {n.op_type for n in arch.graph.node}
    # standalone batch norm (no conv before it) becomes a per-channel Mul/Add of weights
    g2 = Graph((1, 3, 4, 4), seed=5)
    y = g2.node("Relu", [g2.bn(g2.node("Relu", [g2.x]), 3)])
    split2 = split_model(g2.model([y]))
    ops = [n.op_type for n in load_architecture(split2.architecture).graph.node]
    assert ops == ["Relu", "Mul", "Add", "Relu"]
    _check(g2, [y])


# ----------------------------------------------------------------------------- op by op


def _unary(op: str, **attrs: object) -> Case:
    def build(seed: int) -> tuple[Graph, list[str]]:
        g = Graph((1, 2, 5, 5), seed=seed)
        return g, [g.node(op, [g.x], **attrs)]
    return build


def _clip11(seed: int) -> tuple[Graph, list[str]]:
    g = Graph((1, 2, 5, 5), seed=seed)
    return g, [g.node("Clip", [g.x, g.const(0.0), g.const(6.0)])]


def _clip_min_only(seed: int) -> tuple[Graph, list[str]]:
    g = Graph((1, 2, 5, 5), seed=seed)
    return g, [g.node("Clip", [g.x, g.const(-0.5)])]


def _clip6(seed: int) -> tuple[Graph, list[str]]:
    g = Graph((1, 2, 5, 5), seed=seed, opset=6)
    return g, [g.node("Clip", [g.x], min=0.0, max=6.0)]


def _elementwise(seed: int) -> tuple[Graph, list[str]]:
    g = Graph((1, 3, 4, 4), seed=seed)
    a = g.node("Relu", [g.x])
    b = g.node("Sigmoid", [g.x])
    y = g.node("Add", [a, b])
    y = g.node("Sub", [y, g.const(np.linspace(-1, 1, 3).reshape(3, 1, 1))])
    y = g.node("Mul", [y, b])
    y = g.node("Mul", [y, g.const(1.7)])
    y = g.node("Div", [y, g.const([2.0, 4.0, 0.5, 8.0])])
    y = g.node("Div", [y, g.node("Add", [b, g.const(1.0)])])  # tensor / tensor
    return g, [g.node("Sub", [g.const(0.25), y])]


def _matmul(seed: int) -> tuple[Graph, list[str]]:
    g = Graph((1, 2, 3, 4), seed=seed)
    y = g.node("MatMul", [g.x, g.weight(4, 5)])
    y = g.node("Transpose", [y], perm=[0, 2, 1, 3])
    y = g.node("Reshape", [y, g.const([0, 3, -1], np.int64)])
    y = g.node("Flatten", [y], axis=1)
    y = g.node("Gemm", [g.weight(1, 3), y], alpha=0.5, beta=2.0, transA=1)
    return g, [y]


def _gemm_transposes(seed: int) -> tuple[Graph, list[str]]:
    g = Graph((6, 5), seed=seed)
    y = g.node("Gemm", [g.x, g.weight(4, 5), g.const(np.ones((1, 4)))], transB=1, alpha=2.0)
    return g, [g.node("LeakyRelu", [y], alpha=0.2)]


def _pools(seed: int) -> tuple[Graph, list[str]]:
    g = Graph((1, 2, 9, 8), seed=seed)
    a = g.node("MaxPool", [g.x], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    b = g.node("MaxPool", [g.x], kernel_shape=[2, 3], strides=[1, 2], pads=[1, 1, 0, 1],
               dilations=[2, 1])
    c = g.node("AveragePool", [g.x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    d = g.node("AveragePool", [g.x], kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1],
               count_include_pad=1)
    d2 = g.node("AveragePool", [g.x], kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1],
                ceil_mode=1)
    e = g.node("MaxPool", [g.x], kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_UPPER")
    f = g.node("GlobalMaxPool", [g.x])
    h = g.node("MaxPool", [g.x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    return g, [a, b, c, d, d2, e, f, h]


def _pads(seed: int) -> tuple[Graph, list[str]]:
    g = Graph((1, 2, 5, 6), seed=seed)
    pads = g.const([0, 0, 1, 2, 0, 0, 2, 1], np.int64)
    a = g.node("Pad", [g.x, pads, g.const(0.5)], mode="constant")
    b = g.node("Pad", [g.x, pads], mode="reflect")
    c = g.node("Pad", [g.x, pads], mode="edge")
    d = g.node("Pad", [g.x, g.const([0, 0, -1, 1, 0, 0, 1, -2], np.int64)])
    return g, [a, b, c, d]


def _resize(mode: str, ctm: str, nearest: str = "round_prefer_floor",
            sizes: bool = False) -> Case:
    def build(seed: int) -> tuple[Graph, list[str]]:
        g = Graph((1, 2, 4, 5), seed=seed)
        roi = g.const([], np.float32)
        if sizes:
            ins = [g.x, roi, g.const([], np.float32), g.const([1, 2, 7, 9], np.int64)]
        else:
            ins = [g.x, roi, g.const([1.0, 1.0, 2.0, 1.5])]
        y = g.node("Resize", ins, mode=mode, coordinate_transformation_mode=ctm,
                   nearest_mode=nearest)
        return g, [y]
    return build


def _torch_shape_arithmetic(seed: int) -> tuple[Graph, list[str]]:
    """x.view(x.size(0), -1) as older PyTorch exports write it, plus Constant and Identity."""
    g = Graph((1, 2, 3, 3), seed=seed, symbolic_batch=True)
    y = g.node("Identity", [g.node("Relu", [g.x])])
    shape = g.node("Shape", [y])
    n = g.node("Gather", [shape, g.node("Constant", [], value=onnx.numpy_helper.from_array(
        np.array(0, dtype=np.int64)))], axis=0)
    n = g.node("Unsqueeze", [n, g.const([0], np.int64)])
    new = g.node("Concat", [n, g.const([-1], np.int64)], axis=0)
    y = g.node("Reshape", [y, new])
    y = g.node("Gemm", [y, g.weight(18, 3), g.node("Constant", [], value=onnx.numpy_helper
                                                    .from_array(np.zeros(3, np.float32)))])
    y = g.node("Unsqueeze", [y, g.const([1], np.int64)])
    y = g.node("Squeeze", [y, g.const([1], np.int64)])
    return g, [g.node("Identity", [y])]


OP_CASES: dict[str, Case] = {
    "relu": _unary("Relu"),
    "leaky": _unary("LeakyRelu", alpha=0.1),
    "sigmoid": _unary("Sigmoid"),
    "tanh": _unary("Tanh"),
    "softmax13": _unary("Softmax", axis=1),
    "softmax-last": _unary("Softmax"),
    "clip11-relu6": _clip11,
    "clip-min": _clip_min_only,
    "clip6-attrs": _clip6,
    "elementwise": _elementwise,
    "matmul-transpose-reshape": _matmul,
    "gemm-transB-leaky": _gemm_transposes,
    "pools": _pools,
    "pads": _pads,
    "global-avg": _unary("GlobalAveragePool"),
    "resize-nearest-asym": _resize("nearest", "asymmetric", "floor"),
    "resize-nearest-half": _resize("nearest", "half_pixel"),
    "resize-nearest-sizes": _resize("nearest", "half_pixel", "round_prefer_ceil", sizes=True),
    "resize-linear-half": _resize("linear", "half_pixel"),
    "resize-linear-pytorch": _resize("linear", "pytorch_half_pixel", sizes=True),
    "resize-linear-align": _resize("linear", "align_corners"),
    "resize-linear-asym": _resize("linear", "asymmetric"),
    "torch-shape-arith": _torch_shape_arithmetic,
}


@pytest.mark.parametrize("name", list(OP_CASES))
def test_op_matches_onnxruntime(name: str) -> None:
    g, outs = OP_CASES[name](7)
    _check(g, outs)


def test_softmax_opset11_coerces_to_2d() -> None:
    g = Graph((1, 2, 3, 2), seed=2, opset=11)
    _check(g, [g.node("Softmax", [g.x], axis=1)])


def test_resize_opset10() -> None:
    g = Graph((1, 1, 3, 4), seed=2, opset=10)
    _check(g, [g.node("Resize", [g.x, g.const([1.0, 1.0, 2.0, 2.0])], mode="nearest")])


# ------------------------------------------------------------------------ refusals and contract


def test_every_unsupported_node_is_named() -> None:
    g = Graph((1, 2, 6, 6), seed=1)
    y = g.node("LRN", [g.x], size=3, name="norm1")
    y = g.node("Relu", [y])
    y = g.node("Erf", [y], name="gelu_erf")
    y = g.node("Resize", [y, g.const([], np.float32), g.const([1.0, 1.0, 2.0, 2.0])],
               mode="cubic", name="up_cubic")
    y = g.node("MaxPool", [y], n_out=2, kernel_shape=[2, 2], name="pool_idx")
    split = split_model(g.model([y]))
    with pytest.raises(CompileError) as info:
        build_program(split.architecture)
    msg = str(info.value)
    for name, op in [("norm1", "LRN"), ("gelu_erf", "Erf"), ("up_cubic", "Resize"),
                     ("pool_idx", "MaxPool")]:
        assert f"'{name}' ({op})" in msg
    assert info.value.node == "norm1" and info.value.op_type == "LRN"
    assert "4 node(s)" in msg


def test_two_image_inputs_are_refused() -> None:
    g = Graph((1, 2), seed=1)
    g.inputs.append(onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2]))
    out = g.node("Add", [g.x, "y"])
    with pytest.raises(CompileError, match="2 data inputs"):
        split_model(g.model([out]))


def test_symbolic_non_batch_dim_is_refused() -> None:
    g = Graph((1, 2), seed=1)
    g.inputs[0] = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, "C"])
    with pytest.raises(CompileError, match="dimension 1 is symbolic"):
        split_model(g.model([g.node("Relu", [g.x])]))


def test_architecture_holds_no_weight_values_and_hashes_deterministically() -> None:
    g, outs = _residual(1)
    model = g.model(outs)
    split = split_model(model)
    arch = load_architecture(split.architecture)
    # weights are declared graph inputs, without values; no value of theirs is in the bytes
    declared = {vi.name for vi in arch.graph.input[1:]}
    assert declared == set(split.weights)
    assert all(t.name not in split.weights for t in arch.graph.initializer)
    for w in split.weights.values():
        if w.size >= 4:
            assert w.tobytes() not in split.architecture
    assert arch.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1  # batch bound
    # the same model splits to the same bytes; other weights, same architecture and hash
    assert split_model(model).architecture == split.architecture
    g2, outs2 = _residual(1)
    g2.rng = np.random.default_rng(99)
    other = g2.model(outs2)
    for t in other.graph.initializer:
        a = onnx.numpy_helper.to_array(t)
        if a.dtype == np.float32 and a.size > 1:
            t.CopyFrom(onnx.numpy_helper.from_array((a * 1.5).astype(np.float32), t.name))
    assert split_model(other).sha256 == split.sha256
    # a different architecture, a different hash; the program carries the hash
    g3, outs3 = _residual(2)
    assert split_model(g3.model(outs3)).sha256 != split.sha256
    assert build_program(split.architecture).description_sha256 == split.sha256


def test_architecture_runs_in_onnxruntime_with_the_weights_as_inputs() -> None:
    g, outs = _dense(2)
    model = g.model(outs)
    x = g.image(3)
    split = split_model(model)
    a = ort_run(split.architecture, {"x": x, **split.weights})
    b = ort_run(model, {"x": x})
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)


def test_public_constants_stay_and_a_weight_in_a_shape_role_is_copied() -> None:
    g = Graph((1, 2, 3, 3), seed=1)
    bounds_lo, bounds_hi = g.const(0.0), g.const(6.0)
    shape = g.const([1, 18], np.int64)
    y = g.node("Clip", [g.x, bounds_lo, bounds_hi])
    y = g.node("Reshape", [y, shape])
    y = g.node("Add", [y, g.node("Mul", [y, bounds_hi])])  # the 6.0 also used as a weight
    split = split_model(g.model([y]))
    arch = load_architecture(split.architecture)
    public = {t.name for t in arch.graph.initializer}
    assert shape in public and bounds_lo in public and f"{bounds_hi}.public" in public
    assert bounds_hi in split.weights and shape not in split.weights
    _check(g, [y])


def test_unreadable_model_is_refused() -> None:
    with pytest.raises(CompileError, match="not a readable ONNX model"):
        split_model(b"\x00not-onnx\xff" * 3)


def test_weight_order_and_shapes_are_checked() -> None:
    g = Graph((1, 2, 4, 4), seed=1)
    y = g.conv(g.x, 2, 3, 3)
    split = split_model(g.model([y]))
    program = build_program(split.architecture)
    bad = dict(split.weights)
    name = program.weights[0].name
    bad[name] = np.zeros((1, 1), np.float32)
    with pytest.raises(CompileError, match="has shape"):
        run_plain(program, bad, g.image())
    del bad[name]
    with pytest.raises(CompileError, match="is missing"):
        run_plain(program, bad, g.image())


def test_shipped_demo_model_translates_and_matches_onnxruntime() -> None:
    from pathlib import Path

    from secure_infer.demo.phantoms import labelled_set

    path = Path(__file__).resolve().parents[2] / "secure_infer" / "models" / "demo-lesion"
    model = onnx.load(str(path / "model.onnx"))
    split = split_model(model)
    program = build_program(split.architecture)
    assert program.input.shape == (1, 1, 64, 64) and program.outputs[0].shape == (1, 1)
    images, _ = labelled_set(seed=78, n=6)
    for x in images:
        x = x.reshape(1, 1, 64, 64)
        ref = ort_run(model, {program.input.name: x})[0]
        got = run_plain(program, split.weights, x)[0]
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)  # float32 sums, |logit| ~70
