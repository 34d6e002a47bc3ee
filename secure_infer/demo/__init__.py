"""NON-CLINICAL demo model: synthetic phantoms, numpy training, ONNX export, evaluation.

Submodules: ``phantoms`` (seeded synthetic chest-radiograph-like images), ``model`` (the fixed
architecture in numpy and its ONNX export), ``train`` (regenerates the shipped model),
``evaluate`` (held-out accuracy/AUROC and encrypted-vs-onnxruntime comparison).

Names are imported lazily (PEP 562) so that ``python -m secure_infer.demo.train`` or
``python -m secure_infer.demo.evaluate`` does not import the module it is about to run.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Comparison",
    "Evaluation",
    "auroc",
    "compare_decisions",
    "dicom_like_phantom",
    "heldout_metrics",
    "heldout_set",
    "labelled_set",
    "onnx_predict",
    "render_phantom",
]

_WHERE = {
    "Comparison": "evaluate",
    "Evaluation": "evaluate",
    "auroc": "evaluate",
    "compare_decisions": "evaluate",
    "heldout_metrics": "evaluate",
    "heldout_set": "evaluate",
    "onnx_predict": "evaluate",
    "dicom_like_phantom": "phantoms",
    "labelled_set": "phantoms",
    "render_phantom": "phantoms",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
