"""Step 1 of inference: de-identified copies of the selected instances, identity into the vault.

The inference worker only ever reads these copies. Burned-in annotations are allowed here: the
pixels go to the vendor only as ciphertexts and the copies never leave the node.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from node.audit import AuditKind
from node.deid import BurnedInPolicy, BurnedInRule, Deidentifier
from node.jobs import Job, JobError
from node.pipeline.context import StepContext
from node.pipeline.store import StepResult
from node.sr import write_dataset_atomic

__all__ = ["Deidentified", "deidentify_for_inference"]


@dataclass(frozen=True)
class Deidentified(StepResult):
    """The de-identified copies (``files`` in ``<rule work dir>/deid``), the names of the job
    files they were made from (same order) and the study's pseudonym (its vault key)."""

    step = "deid"

    files: tuple[str, ...]
    sources: tuple[str, ...]
    study_pseudonym: str


def deidentify_for_inference(
    ctx: StepContext, job: Job, selected: Sequence[tuple[Path, Dataset]], out_dir: Path
) -> Deidentified:
    """De-identify ``selected`` into ``out_dir`` and store the study's identity in the vault."""
    with ctx.timed("deid"):
        deid = Deidentifier(
            ctx.cfg.deid.options,
            ctx.deid_keys,
            burned_in=BurnedInPolicy(rule=BurnedInRule.ALLOW),
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        names: list[str] = []
        study_pseudonym = ""
        for n, (path, _) in enumerate(selected):
            result = deid.deidentify(pydicom.dcmread(path))
            if result.dataset is None:  # cannot happen with ALLOW
                raise JobError(f"de-identification refused: {result.blocked_reason}")
            name = f"{n:05d}.dcm"
            write_dataset_atomic(result.dataset, out_dir / name)
            names.append(name)
            if not study_pseudonym:
                study_pseudonym = result.study_pseudonym
                ctx.vault.store(study_pseudonym, result.identifiers)
    ctx.record(
        AuditKind.DEIDENTIFIED, study=job.study, instances=len(names),
        deid_study=study_pseudonym, purpose="inference",
    )  # fmt: skip
    return Deidentified(
        files=tuple(names),
        sources=tuple(p.name for p, _ in selected),
        study_pseudonym=study_pseudonym,
    )
