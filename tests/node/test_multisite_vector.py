"""The site vector and the pooled figures from sums (no federation here: tests/integration/
test_multisite.py runs the rounds). Pooled = central within 1e-3, also on concentrated scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from node.multisite import (
    LENGTH,
    VectorError,
    check_vector,
    decode,
    encode,
    pooled_figures,
    tie_bound,
)
from node.multisite.vector import ELEMENT_MAX
from node.validate.stats import (
    auroc,
    bootstrap_auroc,
    brier_score,
    calibration_bins,
    confusion_at,
)


def _sites(seed: int, sizes: list[int], prevalences: list[float], spread: float):
    rng = np.random.default_rng(seed)
    out = []
    for n, prev in zip(sizes, prevalences, strict=True):
        y = (rng.random(n) < prev).astype(int)
        y[0], y[-1] = 1, 0
        logit = rng.normal(0.0, 1.0, n) * spread + 1.2 * spread * (2 * y - 1)
        out.append((1 / (1 + np.exp(-logit)), y))
    return out


@pytest.mark.parametrize("spread", [1.0, 0.02])  # 0.02: every score within ~0.47-0.53
def test_pooled_equals_central_on_the_union(spread: float) -> None:
    sites = _sites(3, [40, 90, 160, 300, 559], [0.1, 0.3, 0.5, 0.2, 0.4], spread)
    total = sum(encode(p, y, 0.5) for p, y in sites)
    sums = decode(total, sites=len(sites))
    f = pooled_figures(sums, 0.5, bootstrap=300, seed=1)
    p = np.concatenate([s[0] for s in sites])
    y = np.concatenate([s[1] for s in sites])
    assert sums.sites == 5 and sums.cases == p.size == 1149
    assert abs(f.auroc - auroc(p, y)) < 1e-3
    assert abs(f.auroc - auroc(p, y)) <= f.auroc_tie_bound + 1e-12
    c = confusion_at(p, y, 0.5)
    assert (f.confusion.tp, f.confusion.fp, f.confusion.tn, f.confusion.fn) == (c.tp, c.fp,
                                                                                c.tn, c.fn)
    assert abs(f.brier - brier_score(p, y)) < 1e-6
    central = calibration_bins(p, y)
    assert [(b.count, round(b.mean_probability, 6), b.observed_fraction) for b in f.calibration
            ] == [(b.count, round(b.mean_probability, 6), b.observed_fraction) for b in central]
    ci = bootstrap_auroc(p, y, resamples=300, seed=1)
    assert abs(f.auroc_ci.low - ci.low) < 0.02 and abs(f.auroc_ci.high - ci.high) < 0.02
    assert f.roc.fpr[0] == 0.0 and f.roc.tpr[-1] == 1.0 and f.roc.fpr[-1] == 1.0


def test_binning_error_bound_is_honest_on_piled_scores() -> None:
    """Scores piled into one bin: the binned AUROC is off, but never by more than the bound."""
    p = np.array([0.5, 0.500001, 0.5, 0.500002, 0.9, 0.1])
    y = np.array([1, 0, 0, 1, 1, 0])
    sums = decode(encode(p, y, 0.5), 1)
    f = pooled_figures(sums, 0.5, bootstrap=10)
    err = abs(f.auroc - auroc(p, y))
    assert err > 0  # the pile is binned as ties
    assert err <= tie_bound(sums.hist_pos, sums.hist_neg) + 1e-12 == f.auroc_tie_bound + 1e-12


def test_malformed_vectors_are_refused() -> None:
    v = encode([0.2, 0.8], [0, 1], 0.5)
    assert v.shape == (LENGTH,) and v.max() <= ELEMENT_MAX
    with pytest.raises(VectorError, match="wrong shape"):
        check_vector(v[:-1])
    bad = v.copy()
    bad[0] = 2
    with pytest.raises(VectorError, match="2 contribution"):
        check_vector(bad)
    bad = v.copy()
    bad[10] += 1  # a histogram count with no case behind it
    with pytest.raises(VectorError, match=r"(positive|negative) histogram"):
        check_vector(bad)
    with pytest.raises(VectorError, match="elements must lie"):
        check_vector(np.full(LENGTH, ELEMENT_MAX + 1))
    with pytest.raises(VectorError, match="whole numbers"):
        check_vector(v.astype(float) + 0.5)
    with pytest.raises(VectorError, match="contribution"):
        decode(v, sites=2)


def test_scores_piled_next_to_one_are_still_ordered() -> None:
    """The demo model's outputs: positives in [0.99998, 1], a flipped negative among them."""
    p = np.array([0.9999804, 0.9999921, 0.9999965, 0.9999999, 1.0, 0.3765, 0.0014, 0.0045,
                  0.0055, 0.0068, 0.0133, 0.9999950, 0.9999990])
    y = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1])
    f = pooled_figures(decode(encode(p, y, 0.5), 1), 0.5, bootstrap=20)
    assert abs(f.auroc - auroc(p, y)) < 1e-3


def test_example_coordinator_config_loads_and_errors_are_precise(tmp_path: Path) -> None:

    import yaml

    from node.config import ConfigError
    from node.multisite.config import load_coordinator_config

    example = Path(__file__).parents[2] / "config" / "multisite-coordinator.example.yaml"
    cfg = load_coordinator_config(example)
    assert cfg.minimum.sites == 3 and len(cfg.sites) == 3
    data = yaml.safe_load(example.read_text())
    data["minimum"]["sites"] = 2
    data["coordinator"]["port"] = 70000
    data["sitez"] = {}
    bad = tmp_path / "c.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_coordinator_config(bad)
    text = str(err.value)
    assert "minimum.sites" in text and "coordinator.port" in text and "sitez" in text
