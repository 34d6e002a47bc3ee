"""The ``forward_deidentified`` action's step: de-identified copies for a research destination.

Unlike the inference copies these leave the node, so the rule's profile and options apply in
full, with the configured burned-in policy and private-tag allow list; an instance the policy
blocks is audited and left out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from node.audit import AuditKind
from node.config.routes import ForwardAction
from node.deid import Deidentifier
from node.jobs import Job
from node.pipeline.context import StepContext
from node.pipeline.store import StepResult
from node.sr import write_dataset_atomic

__all__ = ["Forwarded", "deidentify_for_export"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Forwarded(StepResult):
    """The copies to send (``files`` in ``<rule work dir>/forward``) and how many instances
    the burned-in policy blocked."""

    step = "forward"

    files: tuple[str, ...]
    blocked: int


def deidentify_for_export(
    ctx: StepContext,
    job: Job,
    action: ForwardAction,
    selected: Sequence[tuple[Path, Dataset]],
    out_dir: Path,
) -> Forwarded:
    """De-identify ``selected`` with ``action``'s profile into ``out_dir``."""
    deid_cfg = ctx.cfg.deid
    options = list(deid_cfg.profiles[action.profile] if action.profile else deid_cfg.options)
    options += [o for o in action.options if o not in options]
    deid = Deidentifier(
        options,
        ctx.deid_keys,
        burned_in=deid_cfg.burned_in.to_policy(),
        safe_private=deid_cfg.allow_list(),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    blocked = 0
    with ctx.timed("deid"):
        for n, (path, _) in enumerate(selected):
            result = deid.deidentify(pydicom.dcmread(path))
            if result.dataset is None:
                blocked += 1
                ctx.record(
                    AuditKind.EXPORT_BLOCKED, study=job.study,
                    instance=result.instance_pseudonym,
                    reason=result.blocked_reason or "blocked",
                )  # fmt: skip
                log.warning(
                    "study %s: instance %s not exported: %s",
                    job.study, result.instance_pseudonym, result.blocked_reason,
                )  # fmt: skip
                continue
            name = f"{n:05d}.dcm"
            write_dataset_atomic(result.dataset, out_dir / name)
            files.append(name)
    return Forwarded(files=tuple(files), blocked=blocked)
