"""Step 4 of inference: the result SR (and optional summary image) in the original study.

The study's identity comes back through the vault and is checked against the job's own files;
the SR's UIDs are a keyed hash of the study and model version, so a resend after a crash (or
the job of late images) replaces the SR in PACS instead of adding a second one.
"""

from __future__ import annotations

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


def build_sr(
    ctx: StepContext,
    action: InferAction,
    manifest: Manifest,
    sources: Sequence[Path],
    deid: Deidentified,
    inferred: Inferred,
    out_dir: Path,
) -> SrBuilt:
    """Build the result objects for the job files ``sources`` into ``out_dir``."""
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
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        files = []
        for i, ds in enumerate(objects):
            name = f"result-{i}.dcm"
            write_dataset_atomic(ds, out_dir / name)
            files.append(name)
    return SrBuilt(files=tuple(files))
