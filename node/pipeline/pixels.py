"""DICOM file -> model input: the one conversion production inference and validation share.

Validation must measure the preprocessing production uses, so both call :func:`preprocess_file`:
the first frame, which must be one greyscale frame, through the manifest's public
preprocessing with the file's rescale and photometric interpretation. Every reason a file
cannot become the model's input is a :class:`secure_infer.PreprocessError` (validation lists
them by type; the pipeline's infer step records it as a ``JobError`` with its message, which
names shapes, dtypes and values, never a header value).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset

from secure_infer import Manifest, PreprocessError, preprocess_for_manifest

__all__ = ["first_frame", "preprocess_file"]


def first_frame(ds: Dataset) -> np.ndarray:
    """The first frame of ``ds``'s pixel data; :class:`PreprocessError` unless one greyscale
    frame."""
    arr = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise PreprocessError(f"pixel data of shape {arr.shape} is not one greyscale frame")
    return np.asarray(arr)


def preprocess_file(path: Path, manifest: Manifest) -> npt.NDArray[np.float32]:
    """The model input of the DICOM file ``path`` (first frame) for ``manifest``."""
    ds = pydicom.dcmread(path)
    return preprocess_for_manifest(
        first_frame(ds),
        manifest,
        rescale_slope=float(ds.get("RescaleSlope", 1.0) or 1.0),
        rescale_intercept=float(ds.get("RescaleIntercept", 0.0) or 0.0),
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
    )
