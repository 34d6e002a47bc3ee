"""Fixed-point choice from activation ranges (#12)."""

from __future__ import annotations

import numpy as np
import pytest

from secure_infer.errors import CompileError
from secure_infer.twopc.architecture import split_model
from secure_infer.twopc.fixedpoint import activation_range, choose_fixed_point
from secure_infer.twopc.program import FixedPoint
from secure_infer.twopc.translate import build_program
from tests.secure_infer.test_twopc_translate import _residual
from tests.support.onnxgraph import Graph


def _scaled(scale: float) -> tuple[object, dict[str, np.ndarray], list[np.ndarray]]:
    g = Graph((1, 2, 4, 4), seed=3)
    y = g.node("Mul", [g.node("Relu", [g.conv(g.x, 2, 3, 3, pads=[1, 1, 1, 1])]),
                       g.const(scale)])
    y = g.node("Sigmoid", [g.node("Flatten", [g.node("GlobalAveragePool", [y])])])
    split = split_model(g.model([y]))
    return build_program(split.architecture), split.weights, [g.image(s) for s in (1, 2)]


def test_range_is_the_largest_intermediate_value() -> None:
    program, weights, samples = _scaled(1000.0)
    peak, n = activation_range(program, weights, samples)
    assert n == 2
    # the Mul by 1000 dominates: the peak is 1000x the ReLU's peak, not the sigmoid's output
    small, _ = activation_range(*_scaled(1.0)[:2], samples)
    assert peak == pytest.approx(1000.0 * small, rel=1e-4)


def test_small_ranges_get_fm64_large_ranges_fm128() -> None:
    fp, report = choose_fixed_point(*_scaled(1.0))
    assert (fp.field, fp.fraction_bits) == ("FM64", 18)
    assert report.headroom_bits >= 4 and report.expected_error < 1e-4
    fp_big, report_big = choose_fixed_point(*_scaled(3e8))
    assert fp_big.field == "FM128" and report_big.max_abs_value > 1e8
    assert any("FM128" in line for line in report_big.lines())
    with pytest.raises(CompileError, match="at least one sample"):
        choose_fixed_point(*_scaled(1.0)[:2], [])


def test_expected_error_grows_as_fraction_bits_shrink() -> None:
    g, outs = _residual(1)
    split = split_model(g.model(outs))
    program = build_program(split.architecture)
    samples = [g.image(s) for s in (5, 6)]
    _, report = choose_fixed_point(program, split.weights, samples)
    _, tight = choose_fixed_point(program, split.weights, samples, margin_bits=30)  # FM64, 14 bits
    assert tight.fixed_point == FixedPoint("FM64", 14) and report.fixed_point.fraction_bits == 18
    assert tight.expected_error > report.expected_error > 0.0


@pytest.mark.slow
def test_simulated_error_is_reported_and_close_to_expected() -> None:
    _fp, report = choose_fixed_point(*_scaled(1.0), simulate=1)
    assert report.simulated_error is not None and report.simulated_error < 5e-3
