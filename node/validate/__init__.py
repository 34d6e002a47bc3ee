"""Local validation before deployment: the vendor's model, encrypted, on a labeled local set.

``run`` drives it (the production path minus PACS and SR, with the pipeline's own
preprocessing), ``labels`` reads the curator's CSV and DICOM folder, ``stats`` computes the
figures and ``report`` writes them (loaded on first use: it pulls in matplotlib).
"""

from __future__ import annotations

import importlib
from typing import Any

from node.validate.labels import (
    DicomFile,
    LabeledCase,
    LabelError,
    read_labels,
    scan_dicom_files,
)
from node.validate.run import (
    CaseResult,
    Progress,
    ValidateInferenceError,
    ValidateUsageError,
    ValidationResult,
    ValidationSettings,
    preprocess_file,
    run_validation,
    select_output,
    select_vendor,
    summarise,
)
from node.validate.stats import (
    BootstrapInterval,
    CalibrationBin,
    Confusion,
    RocCurve,
    StatsError,
    auroc,
    bootstrap_auroc,
    brier_score,
    calibration_bins,
    check_inputs,
    confusion_at,
    roc_curve,
    wilson_interval,
)

_REPORT = frozenset({"REPORT_FILES", "render_markdown", "report_dict", "write_report"})

__all__ = [
    "REPORT_FILES",
    "BootstrapInterval",
    "CalibrationBin",
    "CaseResult",
    "Confusion",
    "DicomFile",
    "LabelError",
    "LabeledCase",
    "Progress",
    "RocCurve",
    "StatsError",
    "ValidateInferenceError",
    "ValidateUsageError",
    "ValidationResult",
    "ValidationSettings",
    "auroc",
    "bootstrap_auroc",
    "brier_score",
    "calibration_bins",
    "check_inputs",
    "confusion_at",
    "preprocess_file",
    "read_labels",
    "render_markdown",
    "report_dict",
    "roc_curve",
    "run_validation",
    "scan_dicom_files",
    "select_output",
    "select_vendor",
    "summarise",
    "wilson_interval",
    "write_report",
]


def __getattr__(name: str) -> Any:
    if name in _REPORT:
        return getattr(importlib.import_module("node.validate.report"), name)
    raise AttributeError(f"module 'node.validate' has no attribute {name!r}")
