"""Compiler and parameter selection: clear plans equal onnxruntime; bad models fail clearly."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from secure_infer.errors import CompileError, ParameterError
from secure_infer.hospital.session import apply_activations
from secure_infer.params import MAX_COEFF_BITS_128, check_security, select_params
from secure_infer.plan import LinearStage, ReduceStage, SquareStage, diagonals
from secure_infer.vendor.compiler import compile_onnx
from tests.support.modelzoo import build_sequential, demo_architecture


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0].reshape(len(x), -1)


ARCHS = [
    ((1, 8, 8), [("conv", 3, 3, 1, 1), ("square",), ("flatten",), ("gemm", 5)]),
    ((2, 9, 9), [("conv", 4, 3, 2, 0), ("bn",), ("square",), ("avgpool", 2, 2, 0), ("flatten",),
                 ("gemm", 6), ("square",), ("gemm", 1), ("final_sigmoid",)]),
    ((1, 10, 10), [("conv", 2, 4, 3, 2), ("pow2",), ("gap",), ("flatten",), ("matmul", 3),
                   ("add",), ("final_softmax",)]),
    ((3, 6, 6), [("conv", 2, 3, 1, 1, 1), ("conv", 4, 3, 2, 1), ("square",), ("reshape",),
                 ("gemm", 4), ("mul",)]),
    ((12,), [("gemm", 7), ("square",), ("gemm", 3), ("square",), ("gemm", 2)]),
    ((1, 8, 8), [("avgpool", 3, 1, 1), ("conv", 2, 2, 2, 0), ("square",), ("flatten",),
                 ("gemm", 1)]),
]


@pytest.mark.parametrize("idx", range(len(ARCHS)))
def test_clear_plan_matches_onnxruntime(idx: int) -> None:
    shape, layers = ARCHS[idx]
    model = build_sequential(shape, layers, seed=idx)
    plan = compile_onnx(model)
    x = np.random.default_rng(idx).uniform(0, 1, size=(5, *shape))
    ref = ort_run(model, x)
    got = apply_activations(plan.forward_clear(plan.packing.pack(x)),
                            [plan.final_activation] * plan.n_outputs)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_demo_architecture_uses_im2col_and_few_diagonals() -> None:
    plan = compile_onnx(demo_architecture(1))
    assert plan.packing.kind == "im2col" and plan.packing.length == 4096
    kinds = [type(s) for s in plan.stages]
    assert kinds == [LinearStage, SquareStage, LinearStage, SquareStage, ReduceStage]
    assert plan.depth == 4 and plan.final_activation == "sigmoid"
    first = plan.stages[0]
    assert isinstance(first, LinearStage)
    d = diagonals(first)
    assert sorted(d.diags) == [0, 64, 128, 192]  # conv = 4 plaintext multiplies


def test_relu_needs_declared_range_then_approximates() -> None:
    model = build_sequential((6,), [("gemm", 4), ("relu",), ("gemm", 2)], seed=3)
    with pytest.raises(CompileError) as exc:
        compile_onnx(model)
    assert exc.value.op_type == "Relu" and "approx" in str(exc.value)
    plan = compile_onnx(model, approx_range=(-3.0, 3.0))
    assert plan.depth == 3 and plan.notes
    x = np.random.default_rng(0).uniform(0, 1, size=(20, 6))
    ref = ort_run(model, x)
    got = plan.forward_clear(plan.packing.pack(x))
    assert np.max(np.abs(got - ref)) < 0.3  # quadratic ReLU stand-in, not exact


@pytest.mark.parametrize(("act", "tol"), [("tanh", 0.5), ("sigmoid", 0.1), ("silu", 0.2)])
def test_other_activations_approximated(act: str, tol: float) -> None:
    # degree 2 (one level): tanh, being odd, gets only its linear part
    model = build_sequential((5,), [("gemm", 4), (act,), ("gemm", 1)], seed=4)
    plan = compile_onnx(model, approx_range=(-2.0, 2.0))
    x = np.random.default_rng(1).uniform(0, 1, size=(10, 5))
    assert np.max(np.abs(plan.forward_clear(plan.packing.pack(x)) - ort_run(model, x))) < tol


@pytest.mark.parametrize(
    ("layers", "op"),
    [
        ([("conv", 2, 2, 2, 0), ("maxpool", 2), ("flatten",), ("gemm", 1)], "MaxPool"),
        ([("flatten",), ("gemm", 3), ("final_softmax",), ("gemm", 1)], "Softmax"),
    ],
)
def test_unsupported_ops_name_node(layers: list[tuple[object, ...]], op: str) -> None:
    model = build_sequential((1, 4, 4), layers)  # type: ignore[arg-type]
    with pytest.raises(CompileError) as exc:
        compile_onnx(model)
    assert exc.value.op_type == op and exc.value.node and exc.value.node in str(exc.value)


def test_branching_graph_refused() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    nodes = [helper.make_node("Mul", ["x", "x"], ["a"], name="sq"),
             helper.make_node("Add", ["a", "x"], ["y"], name="residual")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]))
    with pytest.raises(CompileError) as exc:
        compile_onnx(model)
    assert exc.value.node == "residual" and "branch" in str(exc.value)


def test_security_table_enforced() -> None:
    check_security(8192, (60, 40, 40, 60))
    with pytest.raises(ParameterError):
        check_security(8192, (60, 40, 40, 40, 40))  # 220 > 218
    with pytest.raises(ParameterError):
        check_security(4096, (40, 30, 40))  # 110 > 109
    with pytest.raises(ParameterError):
        check_security(2000, (30, 30))


def test_select_params_smallest_ring_and_refusal() -> None:
    p = select_params(depth=2, min_slots=64, headroom_bits=8)
    assert p.poly_modulus_degree == 8192 and p.total_bits <= MAX_COEFF_BITS_128[8192]
    assert p.scale_bits >= 26 and p.depth == 2
    deep = select_params(depth=9, min_slots=64, headroom_bits=8)
    assert deep.poly_modulus_degree == 16384
    with pytest.raises(ParameterError):
        select_params(depth=40, min_slots=64, headroom_bits=8)
    with pytest.raises(ParameterError):
        select_params(depth=2, min_slots=65536, headroom_bits=8)
