"""Last step of both actions: C-STORE a step's files to one destination, once.

The SR (or a de-identified copy) is built before it is sent, and the delivery is recorded only
after the destination acknowledged every file, so a failure retries just the sending.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from node.audit import AuditKind
from node.jobs import Job
from node.netsettings import destination_settings
from node.pipeline.context import StepContext
from node.pipeline.store import StepResult

__all__ = ["Delivered", "DeliveryKind", "deliver"]

log = logging.getLogger(__name__)

DeliveryKind = Literal["sr", "forward"]
"""What is sent: result objects (``sr``) or de-identified copies (``forward``)."""


@dataclass(frozen=True)
class Delivered(StepResult):
    """How many objects the destination acknowledged."""

    step = "deliver"

    sent: int


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def deliver(
    ctx: StepContext, job: Job, dest: str, files: Sequence[Path], kind: DeliveryKind
) -> Delivered:
    """Send ``files`` to destination ``dest``; raises (and counts a retry) if it fails."""
    t0 = time.perf_counter()
    try:
        report = ctx.sender.send(destination_settings(ctx.cfg, dest), list(files))
    except Exception:
        ctx.metrics.retry("deliver")
        if kind == "sr":
            ctx.metrics.sr_delivered(ok=False)
        raise
    ctx.metrics.observe_step("deliver" if kind == "sr" else "forward",
                             time.perf_counter() - t0)  # fmt: skip
    if kind == "sr":
        ctx.metrics.sr_delivered(ok=True)
    ctx.record(
        AuditKind.SR_DELIVERED if kind == "sr" else AuditKind.FORWARDED,
        study=job.study, destination=dest, instances=report.sent,
        sha256=[_sha256_file(f) for f in files],
    )  # fmt: skip
    log.info("study %s: %d %s object(s) delivered to %s", job.study, report.sent, kind, dest)
    return Delivered(sent=report.sent)
