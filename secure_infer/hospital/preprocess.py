"""The manifest's public preprocessing, applied by the hospital before encryption.

A pure function of a pixel array and a few scalars (rescale slope/intercept, photometric
interpretation) taken from the DICOM header by the caller; it never sees a dataset, so no
identifier can reach it and it stays trivially testable. Order (as documented in
:class:`secure_infer.manifest.Preprocessing`):

1. modality rescale ``v = stored * slope + intercept``;
2. window: the DICOM linear VOI function (PS3.3 C.11.2.1.2.1) onto [0, 1], or min-max scaling
   when the manifest has no window;
3. MONOCHROME1 inversion ``1 - v`` (after windowing, as a display would do, so a manifest window
   means the same thing for MONOCHROME1 and MONOCHROME2 images);
4. resize to the model's rows x columns: area averaging (Pillow BOX) when shrinking both axes,
   bilinear otherwise;
5. normalize ``(v - mean) / std`` and clip to the manifest input range, because the CKKS plan is
   sized for inputs within that range;
6. replicate the grey channel if the model takes more than one channel.

Resizing uses Pillow (a declared dependency) on float32 images: its BOX filter is exact area
averaging for any ratio, which numpy alone gives only for integer factors.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image

from secure_infer.errors import InferenceError
from secure_infer.manifest import InputSpec, Manifest, Preprocessing, Window

__all__ = [
    "PreprocessError",
    "apply_window",
    "min_max",
    "preprocess",
    "preprocess_for_manifest",
    "resize",
]

_GREYSCALE = ("MONOCHROME1", "MONOCHROME2")

F64 = npt.NDArray[np.float64]


class PreprocessError(InferenceError, ValueError):
    """A pixel array cannot be preprocessed for the model (shape, values, photometry)."""

    code = "bad_input"
    http_status = 422


def apply_window(v: F64, window: Window) -> F64:
    """DICOM linear VOI window onto [0, 1] (PS3.3 C.11.2.1.2.1, output range 0..1).

    Width 1 (or less) is a threshold at the center, as the standard's formula degenerates to.
    """
    c, w = float(window.center), float(window.width)
    if w <= 1.0:
        return (v > c - 0.5).astype(np.float64)
    return np.clip((v - (c - 0.5)) / (w - 1.0) + 0.5, 0.0, 1.0)


def min_max(v: F64) -> F64:
    """Scale to [0, 1] by the image's own minimum and maximum (a constant image gives zeros)."""
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return np.zeros_like(v)
    return (v - lo) / (hi - lo)


def resize(v: F64, rows: int, cols: int) -> F64:
    """Resize a 2-D image: area averaging when shrinking both axes, bilinear otherwise."""
    if v.shape == (rows, cols):
        return v
    shrink = v.shape[0] >= rows and v.shape[1] >= cols
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    img = Image.fromarray(np.ascontiguousarray(v, dtype=np.float32))
    out = img.resize((cols, rows), resample=method)
    return np.asarray(out, dtype=np.float64).reshape(rows, cols)


def preprocess(
    pixels: npt.ArrayLike,
    spec: Preprocessing,
    input_spec: InputSpec,
    *,
    rescale_slope: float = 1.0,
    rescale_intercept: float = 0.0,
    photometric: str = "MONOCHROME2",
) -> npt.NDArray[np.float32]:
    """Turn one greyscale frame ``[rows, cols]`` into the model input ``[C, H, W]`` float32.

    Raises
    ------
    PreprocessError
        not a non-empty 2-D numeric array, non-finite values, a photometric interpretation other
        than MONOCHROME1/2, or a size that differs from the model's with no resize declared.
    """
    arr = np.asarray(pixels)
    if arr.ndim != 2 or arr.size == 0:
        raise PreprocessError(
            f"expected one greyscale frame [rows, cols], got an array of shape {arr.shape}"
        )
    if not (np.issubdtype(arr.dtype, np.number) and not np.iscomplexobj(arr)):
        raise PreprocessError(f"pixel data must be real numbers, got dtype {arr.dtype}")
    if photometric not in _GREYSCALE:
        raise PreprocessError(
            f"photometric interpretation {photometric!r} not supported; expected one of "
            + ", ".join(_GREYSCALE)
        )
    if not (np.isfinite(rescale_slope) and np.isfinite(rescale_intercept)) or rescale_slope == 0:
        raise PreprocessError("rescale slope must be finite and non-zero, intercept finite")
    v = arr.astype(np.float64) * float(rescale_slope) + float(rescale_intercept)
    if not np.isfinite(v).all():
        raise PreprocessError("pixel data contains non-finite values")

    v = apply_window(v, spec.window) if spec.window is not None else min_max(v)
    if photometric == "MONOCHROME1" and spec.photometric_invert_monochrome1:
        v = 1.0 - v

    channels, rows, cols = input_spec.shape
    target = spec.resize if spec.resize is not None else (rows, cols)
    if tuple(target) != (rows, cols):
        raise PreprocessError(
            f"manifest resize {tuple(target)} differs from the model input {rows}x{cols}"
        )
    if spec.resize is None and v.shape != (rows, cols):
        raise PreprocessError(
            f"image is {v.shape[0]}x{v.shape[1]} but the model expects {rows}x{cols} and the "
            "manifest declares no resize"
        )
    v = resize(v, rows, cols)

    v = (v - spec.normalize.mean) / spec.normalize.std
    lo, hi = input_spec.range
    v = np.clip(v, lo, hi)
    return np.broadcast_to(v, (channels, rows, cols)).astype(np.float32)


def preprocess_for_manifest(
    pixels: npt.ArrayLike,
    manifest: Manifest,
    *,
    rescale_slope: float = 1.0,
    rescale_intercept: float = 0.0,
    photometric: str = "MONOCHROME2",
) -> npt.NDArray[np.float32]:
    """:func:`preprocess` with the manifest's own preprocessing and input specification."""
    return preprocess(
        pixels,
        manifest.preprocessing,
        manifest.input,
        rescale_slope=rescale_slope,
        rescale_intercept=rescale_intercept,
        photometric=photometric,
    )
