"""The shipped NON-CLINICAL demo model: phantoms, ONNX graph, numpy/onnxruntime agreement,
held-out accuracy/AUROC, manifest, and the DICOM-like path through the public preprocessing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from secure_infer.demo.evaluate import (
    DEFAULT_MODEL_DIR,
    auroc,
    compare_decisions,
    heldout_metrics,
    heldout_set,
    onnx_predict,
)
from secure_infer.demo.model import forward, load_onnx_weights
from secure_infer.demo.phantoms import (
    dicom_like_phantom,
    labelled_set,
    phantom_params,
    render_phantom,
)
from secure_infer.demo.train import TRAIN_SEED, VAL_SEED, TrainConfig, demo_manifest, train
from secure_infer.hospital.preprocess import preprocess_for_manifest
from secure_infer.manifest import load_manifest

MODEL_DIR: Path = DEFAULT_MODEL_DIR
ONNX_PATH = MODEL_DIR / "model.onnx"

# Measured on the shipped model (README.md): accuracy 0.970, AUROC 0.994 on 500 held-out phantoms.
ACCURACY_FLOOR = 0.95
AUROC_FLOOR = 0.985


# --- phantoms -------------------------------------------------------------------------------

def test_phantoms_are_deterministic_and_balanced() -> None:
    x1, y1 = labelled_set(7, 40)
    x2, y2 = labelled_set(7, 40)
    x3, _ = labelled_set(8, 40)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    assert x1.shape == (40, 1, 64, 64) and x1.dtype == np.float32
    assert y1.sum() == 20
    assert x1.min() >= 0.0 and x1.max() <= 1.0


def test_lesion_is_a_local_bright_opacity_inside_a_lung() -> None:
    rng = np.random.default_rng(5)
    p = phantom_params(rng, lesion=True)
    assert p.lesion is not None
    lu, lv, r, contrast = p.lesion
    clean = replace(p, lesion=None)
    assert phantom_params(np.random.default_rng(5), lesion=False) == clean
    diff = render_phantom(p, 64, noise_seed=1) - render_phantom(clean, 64, noise_seed=1)
    row, col = np.unravel_index(np.argmax(diff), diff.shape)
    # the brightest change is at the lesion centre (pixel grid in [-1, 1] coordinates)
    assert abs((col + 0.5) / 32 - 1 - lu) < 2 / 32 and abs((row + 0.5) / 32 - 1 - lv) < 2 / 32
    assert diff.max() == pytest.approx(contrast * p.gain, abs=0.08)
    far = np.hypot(*np.meshgrid((np.arange(64) + 0.5) / 32 - 1 - lu,
                                (np.arange(64) + 0.5) / 32 - 1 - lv)) > 3 * r
    assert np.abs(diff[far]).max() < 1e-3


def test_seeds_of_splits_are_disjoint() -> None:
    from secure_infer.demo.evaluate import HELDOUT_SEED

    assert len({TRAIN_SEED, VAL_SEED, HELDOUT_SEED}) == 3


def test_dicom_like_phantom_matches_64px_rendering_after_preprocessing() -> None:
    seed = 11
    manifest = demo_manifest()
    for mono1, intercept in [(False, 0.0), (True, -100.0)]:
        d = dicom_like_phantom(seed, lesion=True, size=256, monochrome1=mono1,
                               rescale_intercept=intercept)
        again = dicom_like_phantom(seed, lesion=True, size=256, monochrome1=mono1,
                                   rescale_intercept=intercept)
        np.testing.assert_array_equal(d.pixels, again.pixels)
        assert d.pixels.dtype == np.uint16 and d.pixels.max() < 2**d.bits_stored
        assert d.photometric == ("MONOCHROME1" if mono1 else "MONOCHROME2")
        x = preprocess_for_manifest(d.pixels, manifest, rescale_slope=d.rescale_slope,
                                    rescale_intercept=d.rescale_intercept,
                                    photometric=d.photometric)
        rng = np.random.default_rng(seed)
        p = phantom_params(rng, True)
        ref = render_phantom(p, 64, noise_seed=int(rng.integers(0, 2**63 - 1)))
        assert np.abs(x[0] - ref).mean() < 0.01


# --- the shipped ONNX model -----------------------------------------------------------------

def test_onnx_graph_is_the_contract_architecture() -> None:
    model = onnx.load(str(ONNX_PATH))
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    g = model.graph
    assert [n.op_type for n in g.node] == [
        "Conv", "Mul", "Flatten", "Gemm", "Mul", "Gemm", "Sigmoid"]
    assert [i.name for i in g.input] == ["image"] and [o.name for o in g.output] == ["prob"]
    dims = [d.dim_param or d.dim_value for d in g.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 1, 64, 64]
    out_dims = [d.dim_param or d.dim_value for d in g.output[0].type.tensor_type.shape.dim]
    assert out_dims == ["N", 1]
    w = load_onnx_weights(ONNX_PATH)
    assert w.conv_w.shape == (4, 1, 8, 8) and w.fc1_w.shape == (32, 256)
    assert w.fc2_w.shape == (1, 32)
    conv = next(n for n in g.node if n.op_type == "Conv")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
    assert attrs["strides"] == [8, 8] and attrs["kernel_shape"] == [8, 8]


def test_onnxruntime_equals_numpy_forward_and_activations_are_bounded() -> None:
    x, _ = heldout_set(100)
    ort_prob = onnx_predict(ONNX_PATH)(x)
    f = forward(load_onnx_weights(ONNX_PATH), x)
    np.testing.assert_allclose(ort_prob, f.prob[:, 0], atol=1e-5)
    # modest pre-square magnitudes keep CKKS precision high
    assert np.abs(f.conv).max() < 10 and np.abs(f.fc1).max() < 10


def test_heldout_accuracy_and_auroc() -> None:
    ev = heldout_metrics(MODEL_DIR)
    assert ev.n == 500 and ev.threshold == 0.5
    assert ev.accuracy >= ACCURACY_FLOOR
    assert ev.auroc >= AUROC_FLOOR
    assert min(ev.sensitivity, ev.specificity) >= 0.9


def test_manifest_matches_model() -> None:
    m = load_manifest(MODEL_DIR / "manifest.yaml")
    assert m == demo_manifest()  # the shipped file is what train.py writes
    assert m.onnx == "model.onnx" and (MODEL_DIR / m.onnx).is_file()
    model = onnx.load(str(ONNX_PATH))
    n_out = model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    assert len(m.outputs) == n_out == 1
    o = m.outputs[0]
    assert (o.name, o.index, o.activation, o.threshold, o.level) == (
        "lesion", 0, "sigmoid", 0.5, "study")
    assert (o.finding.scheme, o.finding.value, o.finding.meaning) == ("SCT", "52988006", "Lesion")
    assert m.not_for_primary_diagnosis and "NON-CLINICAL" in m.intended_use
    assert m.input.shape == (1, 64, 64) and m.input.range == (0.0, 1.0)
    assert m.public().onnx is None


def test_model_works_through_the_dicom_like_path() -> None:
    manifest = load_manifest(MODEL_DIR / "manifest.yaml")
    xs, ys = [], []
    for i in range(40):
        lesion = bool(i % 2)
        d = dicom_like_phantom(5000 + i, lesion=lesion, size=256, monochrome1=i % 4 == 3)
        xs.append(preprocess_for_manifest(d.pixels, manifest, photometric=d.photometric))
        ys.append(lesion)
    prob = onnx_predict(ONNX_PATH)(np.stack(xs))
    assert ((prob >= 0.5) == np.array(ys)).mean() >= 0.85


# --- evaluation helpers ---------------------------------------------------------------------

def test_auroc_against_pairwise_definition() -> None:
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    rng = np.random.default_rng(3)
    s = rng.integers(0, 10, 200).astype(float)  # many ties
    y = rng.integers(0, 2, 200)
    pos, neg = s[y == 1], s[y == 0]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert auroc(s, y) == pytest.approx(pairwise)
    with pytest.raises(ValueError, match="at least one positive"):
        auroc([0.1, 0.2], [1, 1])


def test_compare_decisions_detects_disagreement() -> None:
    ref = onnx_predict(ONNX_PATH)
    same = compare_decisions(ref, n=100, batch=32)
    assert same.disagreements == 0 and same.max_abs_diff == 0.0
    assert same.candidate_accuracy == same.reference_accuracy
    flipped = compare_decisions(lambda x: 1.0 - ref(x), n=100)
    assert flipped.disagreements > 50 and flipped.max_abs_diff > 0.5
    with pytest.raises(ValueError, match="probabilities for 100 images"):
        compare_decisions(lambda x: ref(x)[:-1], n=100)


def test_training_is_deterministic() -> None:
    cfg = TrainConfig(n_train=200, n_val=100, epochs=2, batch=50)
    a, b = train(cfg), train(cfg)
    for k, v in a.weights.arrays().items():
        np.testing.assert_array_equal(v, b.weights.arrays()[k])
    assert 0.0 < a.threshold < 1.0
