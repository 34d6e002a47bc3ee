"""Synthetic chest-radiograph-like phantoms with and without a lesion (NON-CLINICAL).

These pictures only *look like* a frontal chest radiograph in broad strokes (body outline, two
dark lung fields, a bright mediastinum/heart shadow, spine, ribs, noise); they are drawn from a
seeded numpy generator so every test and the demo model's training run see exactly the same data.
A positive phantom carries one round opacity (random radius, position inside a lung field and
contrast). Nothing here is, or is derived from, patient data; a model trained on it has no
clinical meaning whatsoever.

Geometry is defined in normalized coordinates, so the same phantom can be rendered at 64x64 for
training or at 256/512 pixels (as 12-bit stored values with DICOM-like rescale and window
attributes) to build synthetic DICOM studies; windowing and area-resizing such a large rendering
with the demo manifest's preprocessing gives back an image close to the 64x64 rendering.

Hand-written with numpy rather than a phantom library: the shapes are a few ellipses and arcs,
and determinism across platforms matters more than realism.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

__all__ = [
    "DicomLikePixels",
    "PhantomParams",
    "dicom_like_phantom",
    "labelled_set",
    "phantom_params",
    "render_phantom",
]

FloatArray = npt.NDArray[np.float32]

#: Stored-value mapping for the DICOM-like rendering: intensity f in [0, 1] is stored as
#: ``STORED_LOW + f * (STORED_HIGH - STORED_LOW)`` in 12 bits; the window attributes cover exactly
#: that span, so windowing inverts the mapping.
STORED_LOW = 200
STORED_HIGH = 3800
WINDOW_CENTER = (STORED_LOW + STORED_HIGH) / 2.0
WINDOW_WIDTH = float(STORED_HIGH - STORED_LOW)


@dataclass(frozen=True)
class PhantomParams:
    """Everything random about one phantom, drawn once from the seed (resolution independent)."""

    body_axes: tuple[float, float]
    lung_dx: float
    lung_dy: float
    lung_axes: tuple[float, float]
    heart_center: tuple[float, float]
    heart_axes: tuple[float, float]
    rib_offset: float
    rib_spacing: float
    rib_curvature: float
    gain: float
    offset: float
    gradient: tuple[float, float]
    noise_sigma: float
    lesion: tuple[float, float, float, float] | None  # (u, v, radius, contrast)


def _inside_ellipse(
    u: npt.NDArray[np.float64], v: npt.NDArray[np.float64],
    cu: float, cv: float, au: float, av: float,
) -> npt.NDArray[np.float64]:
    """Soft (anti-aliased) ellipse indicator, so renderings at different sizes agree."""
    r = np.sqrt(((u - cu) / au) ** 2 + ((v - cv) / av) ** 2)
    return np.clip((1.0 - r) * 25.0 + 0.5, 0.0, 1.0)


def _lung_centers(p: PhantomParams) -> list[tuple[float, float]]:
    return [(-0.40 + p.lung_dx, -0.08 + p.lung_dy), (0.40 + p.lung_dx, -0.08 + p.lung_dy)]


def phantom_params(rng: np.random.Generator, lesion: bool) -> PhantomParams:
    """Draw one phantom's anatomy jitter, acquisition variation and (optional) lesion."""
    body_axes = (float(rng.uniform(0.80, 0.95)), float(rng.uniform(0.95, 1.05)))
    lung_axes = (float(rng.uniform(0.24, 0.31)), float(rng.uniform(0.50, 0.62)))
    p = PhantomParams(
        body_axes=body_axes,
        lung_dx=float(rng.uniform(-0.04, 0.04)),
        lung_dy=float(rng.uniform(-0.05, 0.05)),
        lung_axes=lung_axes,
        heart_center=(float(rng.uniform(0.02, 0.12)), float(rng.uniform(0.22, 0.32))),
        heart_axes=(float(rng.uniform(0.20, 0.28)), float(rng.uniform(0.28, 0.36))),
        rib_offset=float(rng.uniform(-0.05, 0.05)),
        rib_spacing=float(rng.uniform(0.14, 0.17)),
        rib_curvature=float(rng.uniform(0.3, 0.6)),
        gain=float(rng.uniform(0.9, 1.1)),
        offset=float(rng.uniform(-0.05, 0.05)),
        gradient=(float(rng.uniform(-0.05, 0.05)), float(rng.uniform(-0.05, 0.05))),
        noise_sigma=float(rng.uniform(0.01, 0.04)),
        lesion=None,
    )
    # The lesion is always drawn, and used only for positives: a phantom's anatomy, noise and
    # the rest of its set then do not depend on its label.
    (cu0, cv0), (cu1, cv1) = _lung_centers(p)
    au, av = p.lung_axes
    side = int(rng.integers(0, 2))
    cu, cv = (cu0, cv0) if side == 0 else (cu1, cv1)
    # Uniform point in the inner 75% of the chosen lung ellipse.
    ang = rng.uniform(0.0, 2.0 * np.pi)
    rad = 0.75 * np.sqrt(rng.uniform(0.0, 1.0))
    u = cu + rad * au * float(np.cos(ang))
    v = cv + rad * av * float(np.sin(ang))
    radius = float(rng.uniform(0.07, 0.15))
    contrast = float(rng.uniform(0.12, 0.30))
    if not lesion:
        return p
    return replace(p, lesion=(float(u), float(v), radius, contrast))


def _render_clean(p: PhantomParams, size: int) -> npt.NDArray[np.float64]:
    """Noise-free intensity image in [0, 1] (bright = attenuating, as MONOCHROME2)."""
    c = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    u, v = np.meshgrid(c, c)  # u: left->right, v: top->bottom
    img = np.full((size, size), 0.05)
    body = _inside_ellipse(u, v, 0.0, 0.08, *p.body_axes)
    img += 0.50 * body
    lungs = np.zeros_like(img)
    for cu, cv in _lung_centers(p):
        lungs = np.maximum(lungs, _inside_ellipse(u, v, cu, cv, *p.lung_axes))
    img -= 0.28 * lungs * body
    heart = _inside_ellipse(u, v, *p.heart_center, *p.heart_axes)
    img += 0.22 * heart * lungs + 0.05 * heart
    spine = np.clip((0.09 - np.abs(u)) * 40.0 + 0.5, 0.0, 1.0) * body
    img += 0.12 * spine
    # Ribs: thin arcs bending downwards away from the spine, visible over the lung fields.
    ribs = np.zeros_like(img)
    for k in range(8):
        v0 = -0.62 + p.rib_offset + k * p.rib_spacing
        curve = v0 + p.rib_curvature * (np.abs(u) - 0.1) ** 2
        ribs = np.maximum(ribs, np.clip((0.025 - np.abs(v - curve)) * 40.0 + 0.5, 0.0, 1.0))
    ribs *= (np.abs(u) > 0.1) * body
    img += 0.10 * ribs
    if p.lesion is not None:
        lu, lv, r, contrast = p.lesion
        d = np.sqrt((u - lu) ** 2 + (v - lv) ** 2)
        img += contrast / (1.0 + np.exp((d - r) / (0.18 * r)))
    img = img * p.gain + p.offset + p.gradient[0] * u + p.gradient[1] * v
    return img


def render_phantom(p: PhantomParams, size: int = 64, noise_seed: int = 0) -> FloatArray:
    """Render ``p`` as a ``size`` x ``size`` float32 image in [0, 1] with seeded noise.

    The quantum-like noise is drawn on a 64x64 grid and replicated (nearest neighbour) to
    ``size``, plus a faint per-pixel component: area-downsampling a large rendering to 64x64 then
    gives about the same image as rendering at 64x64, which is what the demo model was trained on.
    """
    img = _render_clean(p, size)
    noise_rng = np.random.default_rng(noise_seed)
    coarse = noise_rng.normal(0.0, p.noise_sigma, size=(64, 64))
    idx = (np.arange(size) * 64) // size
    img = img + coarse[np.ix_(idx, idx)]
    if size != 64:
        img = img + noise_rng.normal(0.0, 0.01, size=img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def labelled_set(seed: int, n: int, size: int = 64) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """A label-balanced set of ``n`` phantoms: images [n, 1, size, size] float32 and labels [n].

    Labels alternate positive/negative in a seeded shuffle, so exactly ``n // 2`` (or ``n // 2``
    + 1 when ``n`` is odd) are negative; the same seed always gives the same set.
    """
    rng = np.random.default_rng(seed)
    labels = np.array([i % 2 for i in range(n)], dtype=np.int64)
    rng.shuffle(labels)
    images = np.empty((n, 1, size, size), dtype=np.float32)
    for i in range(n):
        p = phantom_params(rng, bool(labels[i]))
        images[i, 0] = render_phantom(p, size, noise_seed=int(rng.integers(0, 2**63 - 1)))
    return images, labels


@dataclass(frozen=True)
class DicomLikePixels:
    """A large phantom as stored pixel values plus the attributes a DICOM writer needs."""

    pixels: npt.NDArray[np.uint16]
    bits_stored: int
    photometric: str
    rescale_slope: float
    rescale_intercept: float
    window_center: float
    window_width: float


def dicom_like_phantom(
    seed: int,
    lesion: bool,
    size: int = 512,
    monochrome1: bool = False,
    rescale_intercept: float = 0.0,
) -> DicomLikePixels:
    """Render one phantom as 12-bit stored values (uint16) with DICOM-like attributes.

    Intensities map linearly onto stored values [200, 3800]; ``rescale_intercept`` is subtracted
    from the stored values (and reported as RescaleIntercept) to exercise the rescale step.
    With ``monochrome1`` the values are mirrored about the window center (bright = low value), as
    MONOCHROME1 requires; window center/width refer to the rescaled (modality) values.
    """
    rng = np.random.default_rng(seed)
    p = phantom_params(rng, lesion)
    f = render_phantom(p, size, noise_seed=int(rng.integers(0, 2**63 - 1))).astype(np.float64)
    modality = STORED_LOW + f * (STORED_HIGH - STORED_LOW)
    if monochrome1:
        modality = 2.0 * WINDOW_CENTER - modality
    stored = np.rint(modality - rescale_intercept)
    if stored.min() < 0 or stored.max() > 4095:
        raise ValueError("rescale_intercept pushes stored values outside 12 bits")
    return DicomLikePixels(
        pixels=stored.astype(np.uint16),
        bits_stored=12,
        photometric="MONOCHROME1" if monochrome1 else "MONOCHROME2",
        rescale_slope=1.0,
        rescale_intercept=float(rescale_intercept),
        window_center=WINDOW_CENTER,
        window_width=WINDOW_WIDTH,
    )
