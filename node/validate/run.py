"""Local validation before deployment: run the vendor's model, encrypted, on a labeled local set.

The path is the production one minus PACS and SR: read each labeled DICOM file, turn it into
the model's input with the pipeline's own :func:`node.pipeline.preprocess_file` (so validation
measures what production runs, greyscale-frame check included), encrypt, send ciphertexts to
the configured vendor peer (:class:`node.vendors.VendorBackends`, mutual TLS), decrypt, and
compare the probabilities with the labels (:mod:`node.validate.stats`). Nothing but ciphertexts
and the public context leaves the hospital; the report (:mod:`node.validate.report`) names
cases by keyed pseudonym and by the relative path the curator chose, never by patient name, ID
or UID.

Errors are split by who must act: :class:`ValidateUsageError` (and
:class:`node.validate.labels.LabelError`) mean the admin's input is wrong (exit 2);
:class:`ValidateInferenceError` means preprocessing or the vendor link failed (exit 1).
"""

from __future__ import annotations

import logging
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from node.audit import AuditKind, AuditLedger
from node.config import NodeConfig
from node.errors import NodeError
from node.keys import KeyFileError, load_or_create_secret
from node.pipeline import InferenceBackend, preprocess_file
from node.pseudonym import Pseudonymizer
from node.validate.labels import LabeledCase, read_labels, scan_dicom_files
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
    confusion_at,
    roc_curve,
)
from secure_infer import Manifest, OutputLabel

__all__ = [
    "CaseResult",
    "Progress",
    "ValidateInferenceError",
    "ValidateUsageError",
    "ValidationResult",
    "ValidationSettings",
    "preprocess_file",
    "run_validation",
    "select_output",
    "select_vendor",
    "summarise",
]

log = logging.getLogger(__name__)

BackendFactory = Callable[[str], InferenceBackend]


class ValidateUsageError(NodeError):
    """Bad command line, config or data set (exit code 2)."""


class ValidateInferenceError(NodeError):
    """Preprocessing or encrypted inference failed (exit code 1)."""


@dataclass(frozen=True)
class ValidationSettings:
    """What to validate and how (the command line, typed)."""

    model: str
    data_dir: Path
    labels_csv: Path
    vendor: str | None = None
    output: str | None = None
    batch: int = 8
    bootstrap: int = 2000
    seed: int = 0
    calibration_bins: int = 10


@dataclass(frozen=True)
class CaseResult:
    """One evaluated case, as it appears in the report (no identifiers, only a pseudonym)."""

    pseudonym: str
    path: str
    label: int
    probability: float

    def decision(self, threshold: float) -> int:
        return int(self.probability >= threshold)


@dataclass(frozen=True)
class ValidationResult:
    """Everything the report shows."""

    model: str
    model_version: str
    vendor: str
    output: str
    threshold: float
    cases: tuple[CaseResult, ...]
    auroc: float
    auroc_ci: BootstrapInterval
    brier: float
    confusion: Confusion
    roc: RocCurve
    calibration: tuple[CalibrationBin, ...]
    files_without_label: int
    non_dicom_files: int
    inference: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""

    @property
    def discordant(self) -> tuple[CaseResult, ...]:
        """Cases whose decision at the manifest threshold differs from the label."""
        return tuple(c for c in self.cases if c.decision(self.threshold) != c.label)


class Progress:
    """A PHI-free progress line on a text stream: counts and timing only.

    On a terminal the line is redrawn in place; otherwise a line is printed at each tenth of
    the work, at most every ``every`` seconds in between, and at the end, so logs captured by
    systemd or CI stay short.
    """

    def __init__(
        self, total: int, label: str, stream: TextIO | None = None, every: float = 5.0
    ) -> None:
        self.total = total
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
        self.done = 0
        self.t0 = time.monotonic()
        self._last = self.t0
        self._tenth = 0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        tenth = 10 * self.done // self.total if self.total else 10
        if not (self._tty or self.done >= self.total or tenth > self._tenth
                or now - self._last >= self.every):  # fmt: skip
            return
        self._tenth, self._last = tenth, now
        elapsed = now - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        width = 24
        filled = int(width * self.done / self.total) if self.total else width
        bar = "#" * filled + "-" * (width - filled)
        text = (
            f"{self.label} [{bar}] {self.done}/{self.total} images ({pct:.0f}%) "
            f"{elapsed:.1f}s elapsed, ~{eta:.0f}s left"
        )
        if self._tty:
            end = "\n" if self.done >= self.total else ""
            self.stream.write("\r" + text + end)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def select_vendor(cfg: NodeConfig, model: str, vendor: str | None) -> str:
    """The vendor peer to use: ``vendor`` if given (it must list ``model``), else the only
    configured peer whose ``models`` list contains ``model``."""
    if vendor is not None:
        if vendor not in cfg.vendors:
            known = ", ".join(sorted(cfg.vendors)) or "none"
            raise ValidateUsageError(f"--vendor: unknown vendor {vendor!r}; configured: {known}")
        listed = cfg.vendors[vendor].models
        if listed and model not in listed:
            raise ValidateUsageError(
                f"--model: vendor {vendor!r} does not list model {model!r} in "
                f"vendors.{vendor}.models (lists: {', '.join(listed)})"
            )
        return vendor
    offering = sorted(name for name, peer in cfg.vendors.items() if model in peer.models)
    if not offering:
        models = sorted({m for peer in cfg.vendors.values() for m in peer.models})
        raise ValidateUsageError(
            f"--model: no configured vendor lists model {model!r} in vendors.<name>.models; "
            f"known models: {', '.join(models) or 'none'}"
        )
    if len(offering) > 1:
        raise ValidateUsageError(
            f"--model: several vendors list {model!r} ({', '.join(offering)}); pick one with "
            "--vendor"
        )
    return offering[0]


def select_output(manifest: Manifest, name: str | None) -> OutputLabel:
    """The model output to validate: ``name``, or the manifest's only/first output."""
    if name is None:
        return manifest.outputs[0]
    for out in manifest.outputs:
        if out.name == name:
            return out
    raise ValidateUsageError(
        f"--output: model {manifest.name!r} has no output {name!r}; outputs: "
        + ", ".join(o.name for o in manifest.outputs)
    )


def _preprocess_all(
    cases: Sequence[LabeledCase], manifest: Manifest, progress: Progress
) -> npt.NDArray[np.float32]:
    """All inputs, or every file that cannot be preprocessed listed (by relative path).

    Done before any inference so a bad file stops the run before ciphertexts are sent; HE
    models take small inputs, so holding them all is cheap (e.g. 16 KiB per 64x64 image).
    """
    arrays: list[npt.NDArray[np.float32]] = []
    problems: list[str] = []
    for case in cases:
        try:
            arrays.append(preprocess_file(case.file.path, manifest))
        except Exception as exc:  # pixel decoders raise anything
            # exception texts of pixel decoders can quote header values: show only the type
            detail = str(exc) if exc.__class__.__module__.startswith("secure_infer") else ""
            problems.append(
                f"{case.file.relpath}: cannot preprocess ({type(exc).__name__}"
                + (f": {detail}" if detail else "")
                + ")"
            )
        progress.update(1)
    if problems:
        raise ValidateInferenceError(
            f"{len(problems)} file(s) cannot be preprocessed:\n" + "\n".join(problems)
        )
    return np.stack(arrays)


def summarise(
    cases: Sequence[CaseResult],
    threshold: float,
    *,
    bootstrap: int,
    seed: int,
    bins: int = 10,
) -> tuple[float, BootstrapInterval, float, Confusion, RocCurve, tuple[CalibrationBin, ...]]:
    """AUROC, its CI, Brier score, confusion at ``threshold``, ROC and calibration bins."""
    p = np.array([c.probability for c in cases], dtype=np.float64)
    y = np.array([c.label for c in cases], dtype=np.int64)
    try:
        return (
            auroc(p, y),
            bootstrap_auroc(p, y, resamples=bootstrap, seed=seed),
            brier_score(np.clip(p, 0.0, 1.0), y),
            confusion_at(p, y, threshold),
            roc_curve(p, y),
            tuple(calibration_bins(np.clip(p, 0.0, 1.0), y, bins)),
        )
    except StatsError as exc:
        raise ValidateUsageError(f"labels: {exc}") from None


def run_validation(
    cfg: NodeConfig,
    settings: ValidationSettings,
    backends: BackendFactory,
    *,
    audit: AuditLedger | None = None,
    stream: TextIO | None = None,
) -> ValidationResult:
    """Check the labels, preprocess, run encrypted inference batch by batch, compute statistics.

    ``backends`` maps a vendor name to an :class:`~node.pipeline.InferenceBackend`
    (a :class:`node.vendors.VendorBackends` in production). With ``audit``, every request to the
    vendor is recorded as in the pipeline (``inference_requested`` / ``result_received`` with
    ciphertext hashes, ``purpose: validation``) so the vendor's request chain still cross-checks,
    followed by one ``validation_completed`` entry with the headline figures.
    """
    if settings.batch < 1:
        raise ValidateUsageError("--batch must be at least 1")
    if settings.bootstrap < 1:
        raise ValidateUsageError("--bootstrap must be at least 1")
    if not settings.data_dir.is_dir():
        raise ValidateUsageError(f"{settings.data_dir}: not a directory")
    vendor = select_vendor(cfg, settings.model, settings.vendor)

    files, non_dicom = scan_dicom_files(settings.data_dir)
    cases = read_labels(settings.labels_csv, files)  # LabelError -> exit 2
    labels = {c.label for c in cases}
    if len(labels) < 2:
        only = "positive (1)" if labels == {1} else "negative (0)"
        raise ValidateUsageError(
            f"labels: all {len(cases)} cases are {only}; AUROC, sensitivity and specificity "
            "need both classes"
        )
    unlabeled = len(files) - len(cases)

    from node.app import node_paths  # the node's own layout of keys (heavy module: load late)

    try:
        pseudonym = Pseudonymizer(load_or_create_secret(node_paths(cfg).pseudonym_key))
    except (KeyFileError, OSError) as exc:
        raise ValidateUsageError(f"pseudonym key: {exc}") from exc
    try:
        # creating the client reads the TLS files; fetching the manifest opens the connection
        backend = backends(vendor)
        manifest = backend.manifest(settings.model)
    except Exception as exc:  # any vendor-link failure: exit 1
        raise ValidateInferenceError(
            f"vendor {vendor!r}: cannot fetch the manifest of {settings.model!r}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    output = select_output(manifest, settings.output)
    log.info(
        "validating model %s %s at vendor %s on %d cases (%d unlabeled DICOM files ignored)",
        manifest.name, manifest.version, vendor, len(cases), unlabeled,
    )  # fmt: skip

    x = _preprocess_all(cases, manifest, Progress(len(cases), "preprocess", stream))
    run_id = f"val-{secrets.token_hex(8)}"

    probs: list[float] = []
    bytes_up = bytes_down = 0
    seconds: dict[str, float] = {}
    versions: set[str] = set()
    parameters: dict[str, str] = {}
    progress = Progress(len(cases), "encrypted inference", stream)
    for start in range(0, len(cases), settings.batch):
        chunk = x[start : start + settings.batch]
        try:
            outcome = backend.infer(settings.model, chunk)
        except Exception as exc:  # any vendor-link failure: exit 1
            raise ValidateInferenceError(
                f"encrypted inference failed on images {start + 1}-{start + len(chunk)} of "
                f"{len(cases)}: {type(exc).__name__}: {exc}"
            ) from exc
        if audit is not None:
            common = {"purpose": "validation", "validation": run_id, "vendor": vendor,
                      "model": settings.model, "model_version": outcome.model_version}  # fmt: skip
            audit.append(
                AuditKind.INFERENCE_REQUESTED,
                {**common, "context_hash": outcome.context_sha256,
                 "ciphertext_hashes": [outcome.request_sha256], "images": len(chunk)},
            )  # fmt: skip
            audit.append(
                AuditKind.RESULT_RECEIVED, {**common, "response_hash": outcome.response_sha256}
            )
        if len(outcome.probabilities) != len(chunk):
            raise ValidateInferenceError(
                f"vendor returned {len(outcome.probabilities)} results for {len(chunk)} images"
            )
        probs.extend(float(row[output.index]) for row in outcome.probabilities)
        bytes_up += outcome.bytes_up
        bytes_down += outcome.bytes_down
        for k, v in outcome.timings.items():
            seconds[k] = seconds.get(k, 0.0) + float(v)
        versions.add(outcome.model_version)
        parameters = dict(outcome.parameters)
        progress.update(len(chunk))
    if not np.isfinite(probs).all():
        raise ValidateInferenceError("decrypted probabilities are not all finite numbers")

    results = tuple(
        CaseResult(
            pseudonym=pseudonym.instance(c.file.sop_instance_uid),
            path=c.file.relpath,
            label=c.label,
            probability=p,
        )
        for c, p in zip(cases, probs, strict=True)
    )
    area, ci, brier, conf, roc, calib = summarise(
        results, output.threshold, bootstrap=settings.bootstrap, seed=settings.seed,
        bins=settings.calibration_bins,
    )  # fmt: skip
    if audit is not None:
        audit.append(
            "validation_completed",
            {"validation": run_id, "vendor": vendor, "model": settings.model,
             "model_version": ", ".join(sorted(versions)), "output": output.name,
             "cases": len(results), "positives": sum(c.label for c in results),
             "auroc": round(area, 6), "sensitivity_counts": [conf.tp, conf.tp + conf.fn],
             "specificity_counts": [conf.tn, conf.tn + conf.fp]},
        )  # fmt: skip
    return ValidationResult(
        model=manifest.name,
        model_version=", ".join(sorted(versions)) or manifest.version,
        vendor=vendor,
        output=output.name,
        threshold=float(output.threshold),
        cases=results,
        auroc=area,
        auroc_ci=ci,
        brier=brier,
        confusion=conf,
        roc=roc,
        calibration=calib,
        files_without_label=unlabeled,
        non_dicom_files=non_dicom,
        inference={
            "batch": settings.batch,
            "batches": -(-len(cases) // settings.batch),
            "bytes_up": bytes_up,
            "bytes_down": bytes_down,
            "seconds": {k: round(v, 3) for k, v in sorted(seconds.items())},
            "he_parameters": parameters,
        },
        run_id=run_id,
    )
