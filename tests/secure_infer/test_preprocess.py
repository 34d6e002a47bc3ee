"""The manifest's public preprocessing: rescale, window, inversion, resize, normalize."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from secure_infer.hospital.preprocess import (
    PreprocessError,
    apply_window,
    min_max,
    preprocess,
    resize,
)
from secure_infer.manifest import InputSpec, Preprocessing

IN64 = InputSpec(shape=(1, 64, 64), range=(0.0, 1.0))


def spec(**kw: object) -> Preprocessing:
    return Preprocessing.model_validate({"resize": [64, 64], **kw})


def test_window_follows_dicom_linear_formula() -> None:
    from secure_infer.manifest import Window

    w = Window(center=40.0, width=400.0)
    v = np.array([-1000.0, -160.5, 39.5, 239.0, 240.0, 3000.0])
    out = apply_window(v, w)
    # lower edge c - 0.5 - (w-1)/2 = -160, upper edge c - 0.5 + (w-1)/2 = 239
    expected = np.clip((v - 39.5) / 399.0 + 0.5, 0, 1)
    np.testing.assert_allclose(out, expected)
    assert out[0] == 0.0 and out[-1] == 1.0 and out[1] == 0.0
    assert out[2] == pytest.approx(0.5)
    assert out[4] == 1.0


def test_window_width_one_is_a_threshold() -> None:
    from secure_infer.manifest import Window

    out = apply_window(np.array([9.0, 9.5, 10.0, 11.0]), Window(center=10.0, width=1.0))
    assert out.tolist() == [0.0, 0.0, 1.0, 1.0]


def test_rescale_then_window_in_modality_units() -> None:
    # CT-like: stored 0..4095 with intercept -1024 -> HU; window on HU, not stored values.
    stored = np.full((64, 64), 1024 + 40, dtype=np.uint16)  # 40 HU everywhere
    stored[0, 0] = 0  # -1024 HU -> black
    out = preprocess(stored, spec(window={"center": 40, "width": 400}), IN64,
                     rescale_slope=1.0, rescale_intercept=-1024.0)
    assert out.shape == (1, 64, 64) and out.dtype == np.float32
    assert out[0, 0, 0] == 0.0
    assert out[0, 5, 5] == pytest.approx(0.5 + 0.5 / 399.0, abs=1e-6)
    # slope 2: stored 532 -> 1064 - 1024 = 40 HU, same result
    out2 = preprocess(np.full((64, 64), 532), spec(window={"center": 40, "width": 400}), IN64,
                      rescale_slope=2.0, rescale_intercept=-1024.0)
    assert out2[0, 5, 5] == pytest.approx(out[0, 5, 5])


def test_min_max_when_no_window() -> None:
    px = np.arange(64 * 64, dtype=np.float64).reshape(64, 64) + 100
    out = preprocess(px, spec(), IN64)
    assert out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_allclose(out[0], (px - 100) / (64 * 64 - 1), atol=1e-6)
    assert not min_max(np.full((3, 3), 7.0)).any()  # constant image -> zeros, no division


def test_monochrome1_is_inverted_after_windowing() -> None:
    rng = np.random.default_rng(0)
    m2 = rng.integers(200, 3800, size=(64, 64))
    m1 = 4000 - m2  # mirrored about the window center 2000
    s = spec(window={"center": 2000, "width": 3600})
    a = preprocess(m2, s, IN64, photometric="MONOCHROME2")
    b = preprocess(m1, s, IN64, photometric="MONOCHROME1")
    np.testing.assert_allclose(a, b, atol=1e-3)  # DICOM's (w-1) makes it not bit-exact
    c = preprocess(m1, s.model_copy(update={"photometric_invert_monochrome1": False}), IN64,
                   photometric="MONOCHROME1")
    np.testing.assert_allclose(c, 1.0 - b, atol=1e-6)


def test_area_resize_equals_block_mean() -> None:
    rng = np.random.default_rng(1)
    px = rng.uniform(0, 1, size=(512, 512))
    out = resize(px, 64, 64)
    blocks = px.reshape(64, 8, 64, 8).mean(axis=(1, 3))
    np.testing.assert_allclose(out, blocks, atol=1e-5)


@pytest.mark.parametrize("shape", [(512, 512), (500, 300), (32, 48), (64, 64), (1, 1)])
def test_resize_shape_and_range(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(2)
    px = rng.integers(0, 4096, size=shape).astype(np.uint16)
    out = preprocess(px, spec(window={"center": 2048, "width": 4096}), IN64)
    assert out.shape == (1, 64, 64) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_upsampling_is_bilinear_not_blocky() -> None:
    px = np.tile(np.linspace(0, 1, 32), (32, 1))
    out = resize(px, 64, 64)
    # a ramp stays monotonic and takes more distinct values than nearest-neighbour would
    assert np.all(np.diff(out[10]) >= -1e-6)
    assert len(np.unique(np.round(out[10], 6))) > 32


def test_normalize_and_clip_to_input_range() -> None:
    inp = InputSpec(shape=(3, 64, 64), range=(-1.0, 1.0))
    px = np.linspace(0, 1000, 64 * 64).reshape(64, 64)
    out = preprocess(px, spec(normalize={"mean": 0.5, "std": 0.5}), inp)
    assert out.shape == (3, 64, 64)
    assert out.min() == -1.0 and out.max() == 1.0
    np.testing.assert_array_equal(out[0], out[2])
    # a std that pushes values outside the range is clipped, not passed on to the CKKS plan
    out2 = preprocess(px, spec(normalize={"mean": 0.0, "std": 0.25}), inp)
    assert out2.max() == 1.0 and out2.min() == 0.0


@pytest.mark.parametrize(
    ("pixels", "kw", "needle"),
    [
        (np.zeros((2, 64, 64)), {}, "shape (2, 64, 64)"),
        (np.zeros((0, 64)), {}, "shape (0, 64)"),
        (np.full((64, 64), np.nan), {}, "non-finite"),
        (np.zeros((64, 64)), {"photometric": "RGB"}, "'RGB' not supported"),
        (np.zeros((64, 64)), {"rescale_slope": 0.0}, "rescale slope"),
        (np.zeros((64, 64), dtype=bool), {}, "dtype bool"),
    ],
)
def test_bad_input_is_a_precise_error(pixels: np.ndarray, kw: dict, needle: str) -> None:
    with pytest.raises(PreprocessError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        preprocess(pixels, spec(), IN64, **kw)


def test_size_mismatch_without_resize() -> None:
    with pytest.raises(PreprocessError, match="no resize") as ei:
        preprocess(np.zeros((128, 128)), Preprocessing(), IN64)
    assert ei.value.code == "bad_input"
    assert preprocess(np.zeros((64, 64)), Preprocessing(), IN64).shape == (1, 64, 64)
    with pytest.raises(PreprocessError, match="differs from the model input"):
        preprocess(np.zeros((64, 64)), Preprocessing(resize=(32, 32)), IN64)


@settings(max_examples=40, deadline=None)
@given(
    px=hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=80),
                  elements=st.floats(-1e6, 1e6)),
    windowed=st.booleans(),
    mono1=st.booleans(),
)
def test_output_always_in_range(px: np.ndarray, windowed: bool, mono1: bool) -> None:
    s = spec(window={"center": 0.0, "width": 1000.0} if windowed else None)
    out = preprocess(px, s, IN64, photometric="MONOCHROME1" if mono1 else "MONOCHROME2")
    assert out.shape == (1, 64, 64)
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
