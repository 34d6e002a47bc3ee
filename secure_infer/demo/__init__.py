"""NON-CLINICAL demo model: synthetic phantoms, numpy training, ONNX export, evaluation.

Submodules: ``phantoms`` (seeded synthetic chest-radiograph-like images), ``model`` (the fixed
architecture in numpy and its ONNX export), ``train`` (regenerates the shipped model),
``evaluate`` (held-out accuracy/AUROC and encrypted-vs-onnxruntime comparison).
"""

from __future__ import annotations

from secure_infer.demo.evaluate import (
    Comparison,
    Evaluation,
    auroc,
    compare_decisions,
    evaluate,
    heldout_set,
    onnx_predict,
)
from secure_infer.demo.phantoms import dicom_like_phantom, labelled_set, render_phantom

__all__ = [
    "Comparison",
    "Evaluation",
    "auroc",
    "compare_decisions",
    "dicom_like_phantom",
    "evaluate",
    "heldout_set",
    "labelled_set",
    "onnx_predict",
    "render_phantom",
]
