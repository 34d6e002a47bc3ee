"""Step 4 of inference: the result SR (and optional summary image) in the original study.

The study's identity comes back through the vault and is checked against the job's own files;
the SR's UIDs are a keyed hash of the study, the model version and the set of images it covers,
so a resend after a crash keeps its UID (the PACS keeps one copy), while the job of late images
writes an amended SR: a new UID in the same series, superseding the earlier SRs it finds in
``earlier`` (the result folders of the study's earlier jobs) by Predecessor Documents Sequence.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from node.config.routes import InferAction
from node.jobs import JobError
from node.pipeline.context import StepContext
from node.pipeline.deid import Deidentified
from node.pipeline.infer import Inferred
from node.pipeline.store import StepResult
from node.sr import ResultOutputs, as_outputs, build_result_objects, write_dataset_atomic
from secure_infer import Manifest

__all__ = ["SrBuilt", "build_sr", "result_outputs"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SrBuilt(StepResult):
    """The result objects to deliver (``files`` in ``<rule work dir>/sr``)."""

    step = "sr"

    files: tuple[str, ...]


def result_outputs(
    manifest: Manifest, originals: Sequence[Dataset], probs: Sequence[Sequence[float]]
) -> ResultOutputs:
    """Per-image probabilities; a study-level label gets the highest over the images."""
    study: dict[str, float] = {}
    images: dict[str, dict[str, float]] = {}
    for label in manifest.outputs:
        column = [float(row[label.index]) for row in probs]
        if label.level == "study":
            study[label.name] = max(column)
        else:
            for ds, p in zip(originals, column, strict=True):
                images.setdefault(str(ds.SOPInstanceUID), {})[label.name] = p
    return as_outputs(study, images)


def _check_relink(ctx: StepContext, study_pseudonym: str, original: Dataset) -> None:
    """The vault must give back this study's identity; anything else is a mix-up."""
    record = ctx.vault.relink(study_pseudonym)
    if record.get("StudyInstanceUID") != str(original.StudyInstanceUID):
        raise JobError("identifier vault does not re-link this result to its study")


def _earlier_results(folders: Sequence[Path], own: Path) -> list[Dataset]:
    """Headers of the SRs in ``folders`` (not ``own``); unreadable files are skipped."""
    found: list[Dataset] = []
    for folder in folders:
        if folder.resolve() == own.resolve() or not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.dcm")):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception as exc:  # a damaged old result only loses its predecessor reference
                log.warning("an earlier result file is unreadable (%s); not referenced as "
                            "predecessor", type(exc).__name__)  # fmt: skip
                continue
            if ds.get("Modality") == "SR":
                found.append(ds)
    return found


def build_sr(
    ctx: StepContext,
    action: InferAction,
    manifest: Manifest,
    sources: Sequence[Path],
    deid: Deidentified,
    inferred: Inferred,
    out_dir: Path,
    earlier: Sequence[Path] = (),
) -> SrBuilt:
    """Build the result objects for the job files ``sources`` into ``out_dir``.

    ``earlier`` are result folders of the study's earlier finished jobs: an SR there of the
    same model version that covers fewer images is the predecessor of this one.
    """
    with ctx.timed("sr_build"):
        by_name = {p.name: p for p in sources}
        originals = [
            pydicom.dcmread(by_name[name], stop_before_pixels=True) for name in deid.sources
        ]
        _check_relink(ctx, deid.study_pseudonym, originals[0])
        outputs = result_outputs(manifest, originals, inferred.probabilities)
        objects = build_result_objects(
            manifest,
            outputs,
            originals,
            uid_key=ctx.uid_key,
            settings=action.sr_settings(ctx.cfg.sr),
            algorithm_parameters=inferred.parameters,
            earlier_results=_earlier_results(earlier, out_dir),
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        files = []
        for i, ds in enumerate(objects):
            name = f"result-{i}.dcm"
            write_dataset_atomic(ds, out_dir / name)
            files.append(name)
    return SrBuilt(files=tuple(files))
