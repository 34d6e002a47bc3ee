"""The job action of a hospital node: what happens to a completed study.

``rules -> (infer: de-identify + vault -> public preprocessing -> encrypted inference -> SR ->
C-STORE to each destination) | (forward_deidentified: profile -> C-STORE) | discard``

Each step lives in its own module (:mod:`~node.pipeline.deid`, :mod:`~node.pipeline.infer`,
:mod:`~node.pipeline.sr`, :mod:`~node.pipeline.deliver`, :mod:`~node.pipeline.forward`) and
returns a typed result that this module stores in the job's own folder (``<job dir>/steps/``,
:class:`~node.pipeline.store.StepStore`) before the next step starts; a step whose result is
already there is not done again. A crash at any point therefore resumes at the first step
without a result; the SR's UIDs are derived from the study, model version and covered images
with a keyed hash, so a resend after a crash keeps its UID instead of adding a second SR, and a
result amended for late images is a new SR superseding the first (docs/sr.md).

What leaves the node: only ciphertexts and a random job token go to the vendor (the inference
worker reads the de-identified copies, never the originals); SRs go to the destinations the rule
names; de-identified copies go to research destinations. The audit ledger and the logs see
pseudonyms and hashes only.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from node.audit import AuditKind, AuditLedger
from node.config import NodeConfig
from node.config.routes import ForwardAction, InferAction
from node.deid import DeidKeys
from node.jobs import Job, JobError, JobStore
from node.metrics import NodeMetrics
from node.pauses import Pauses
from node.pipeline.context import StepContext
from node.pipeline.deid import Deidentified, deidentify_for_inference
from node.pipeline.deliver import Delivered, DeliveryKind, deliver
from node.pipeline.forward import Forwarded, deidentify_for_export
from node.pipeline.infer import InferenceBackend, Inferred, infer_encrypted
from node.pipeline.sr import SrBuilt, build_sr
from node.pipeline.store import StepResult, StepStore
from node.pseudonym import Pseudonymizer
from node.rules import RuleMatch, evaluate, series_selected
from node.vault import IdentifierVault
from scp import StorageSender

__all__ = ["Discarded", "Pipeline", "Received", "RuleMatched"]

log = logging.getLogger(__name__)

Headers = list[tuple[Path, Dataset]]

# Test hook, for tests/faults/test_kill_steps.py only: with BLINDREAD_TEST_HOOKS=1 *and*
# BLINDREAD_FAULT_KILL_AT=<boundary> in the environment, the node SIGKILLs itself when a job
# reaches that step boundary, so the fault suite can crash it exactly there. Without
# BLINDREAD_TEST_HOOKS=1 the variable is refused (a warning, no effect); nothing else reads it.
FAULT_KILL_AT = "BLINDREAD_FAULT_KILL_AT"
TEST_HOOKS = "BLINDREAD_TEST_HOOKS"
KILL_BOUNDARIES = (
    "claimed",  # the job was claimed and started; no step result stored yet
    "deid",  # de-identified copies and their step record written; nothing sent to the vendor
    "sr",  # SR files built and recorded; nothing sent to a destination
    "sent",  # a destination acknowledged the results; its deliver record not yet written
)


def _kill_point_from_env() -> str | None:
    """The boundary named by the test hook, or ``None`` (read once, when the pipeline is made)."""
    at = os.environ.get(FAULT_KILL_AT)
    if not at:
        return None
    if os.environ.get(TEST_HOOKS) != "1":
        log.warning("%s is set but %s is not 1: test hook refused", FAULT_KILL_AT, TEST_HOOKS)
        return None
    if at not in KILL_BOUNDARIES:
        log.warning("%s=%r is not one of %s: test hook refused", FAULT_KILL_AT, at,
                    ", ".join(KILL_BOUNDARIES))  # fmt: skip
        return None
    log.warning("TEST HOOK ACTIVE: this process kills itself at step boundary %r", at)
    return at


@dataclass(frozen=True)
class Received(StepResult):
    """The study's arrival was audited (once per job)."""

    step = "received"

    instances: int


@dataclass(frozen=True)
class RuleMatched(StepResult):
    """A rule's match was audited and counted (once per job and rule)."""

    step = "matched"

    rule: str
    action: str


@dataclass(frozen=True)
class Discarded(StepResult):
    """A ``discard`` rule's decision was audited."""

    step = "discarded"


def _calling_ae(ds: Dataset) -> str | None:
    """The AE title that sent the study: our SCP records it in each file's meta information
    as Source Application Entity Title (0002,0016)."""
    meta = getattr(ds, "file_meta", None)
    value = meta.get("SourceApplicationEntityTitle") if meta is not None else None
    return str(value).strip() or None if value else None


class Pipeline:
    """Callable job action (``node.runner.JobAction``) running the routing rules' actions.

    Parameters
    ----------
    cfg
        The node's config (routes, destinations, deid, sr).
    backends
        ``vendor name -> InferenceBackend``; created lazily by the caller's factory.
    uid_key
        Key for the SR's deterministic UIDs (the node's pseudonym key).
    jobs
        The node's job store: a study's earlier finished jobs (images that arrived before a
        late one) are part of its result.
    """

    def __init__(
        self,
        cfg: NodeConfig,
        *,
        pseudonyms: Pseudonymizer,
        deid_keys: DeidKeys,
        vault: IdentifierVault,
        sender: StorageSender,
        backends: Callable[[str], InferenceBackend],
        uid_key: bytes,
        jobs: JobStore,
        audit: AuditLedger | None = None,
        metrics: NodeMetrics | None = None,
        pauses: Pauses | None = None,
    ) -> None:
        self.cfg = cfg
        self.pauses = pauses  # destinations an operator paused hold their deliveries back
        self.pseudonyms = pseudonyms
        self.backends = backends
        self.jobs = jobs
        # always a registry: a pipeline without an endpoint just counts into its own
        self.metrics = metrics if metrics is not None else NodeMetrics()
        self.ctx = StepContext(
            cfg=cfg,
            deid_keys=deid_keys,
            vault=vault,
            sender=sender,
            uid_key=uid_key,
            metrics=self.metrics,
            audit=audit,
        )
        self._kill_at = _kill_point_from_env()

    def _boundary(self, name: str) -> None:
        """Test hook (see :data:`FAULT_KILL_AT`): SIGKILL this process at boundary ``name``."""
        if self._kill_at == name:
            log.warning("test hook: SIGKILL at step boundary %r", name)
            os.kill(os.getpid(), signal.SIGKILL)

    # ------------------------------------------------------------------ the job's files

    def _instance_files(self, job: Job) -> list[Path]:
        """This job's instances, plus those of earlier finished jobs of the same study.

        Images that arrive after a study's completion timer fired make a second job; with the
        earlier images included, its result covers the whole study; it is an amended SR (new
        UID, same series, the earlier SR as predecessor) rather than one of the late images.
        """
        files: dict[str, Path] = {}
        for other in [*self.jobs.earlier_done(job), job]:
            for path in other.paths:
                if path.exists():
                    files[path.name] = path  # same name = same SOP instance; newest wins
        return list(files.values())

    def _earlier_results(self, job: Job) -> list[Path]:
        """Result folders of the study's earlier finished jobs (every rule): an SR there that
        the new one amends is named as its predecessor."""
        return [
            folder
            for other in self.jobs.earlier_done(job)
            for folder in sorted((other.dir / "work").glob("*/sr"))
        ]

    def _headers(self, job: Job) -> Headers:
        out: Headers = []
        for path in self._instance_files(job):
            try:
                out.append((path, pydicom.dcmread(path, stop_before_pixels=True)))
            except Exception as exc:  # a spooled file is always valid DICOM; say so if not
                raise JobError(
                    f"spooled file {path.name} is unreadable: {type(exc).__name__}"
                ) from None
        if not out:
            raise JobError("job has no instances")
        return out

    # ------------------------------------------------------------------ the action

    def __call__(self, job: Job) -> None:
        self._boundary("claimed")
        steps = StepStore(job.dir / "steps")
        headers = self._headers(job)
        if steps.get(Received) is None:
            self.ctx.record(AuditKind.STUDY_RECEIVED, study=job.study, instances=len(headers))
            steps.put(Received(instances=len(headers)))
        calling_ae = _calling_ae(headers[0][1])
        with self.ctx.timed("rules"):
            evaluation = evaluate(self.cfg.routes, headers[0][1], calling_ae)
        if not evaluation.matches:
            self.metrics.rule_decision("none")
            log.info("study %s: no rule matched; nothing to do", job.study)
            return
        for match in evaluation.matches:
            self._run_match(job, steps, headers, match, calling_ae)

    def _run_match(
        self,
        job: Job,
        steps: StepStore,
        headers: Headers,
        match: RuleMatch,
        calling_ae: str | None,
    ) -> None:
        action = match.action
        tag = f"r{match.index}"
        if steps.get(RuleMatched, tag) is None:
            kind = (
                "infer" if action.infer else
                "forward_deidentified" if action.forward_deidentified else "discard"
            )  # fmt: skip
            self.ctx.record(AuditKind.RULE_MATCHED, study=job.study, rule=match.name, action=kind)
            self.metrics.rule_decision(kind)
            steps.put(RuleMatched(rule=match.name, action=kind), tag)
        selected = [
            (p, ds) for p, ds in headers if series_selected(action, ds, calling_ae)[0]
        ]
        if action.infer is not None:
            self._infer(job, steps, tag, action.infer, selected)
        elif action.forward_deidentified is not None:
            self._forward(job, steps, tag, action.forward_deidentified, selected)
        elif steps.get(Discarded, tag) is None:
            self.ctx.record(AuditKind.DISCARDED, study=job.study, rule=match.name)
            steps.put(Discarded(), tag)

    def _infer(
        self, job: Job, steps: StepStore, tag: str, action: InferAction, selected: Headers
    ) -> None:
        if not selected:
            log.info("study %s: rule %s selected no series for inference", job.study, tag)
            return
        ctx = self.ctx
        work = job.dir / "work" / tag
        deid_dir, sr_dir = work / "deid", work / "sr"
        # 1. de-identify: the inference worker only ever reads these copies
        deid = steps.get(Deidentified, tag) or steps.put(
            deidentify_for_inference(ctx, job, selected, deid_dir), tag
        )
        self._boundary("deid")
        backend = self.backends(action.vendor)
        manifest = backend.manifest(action.model)
        # 2. preprocess + 3. encrypted inference
        inferred = steps.get(Inferred, tag) or steps.put(
            infer_encrypted(ctx, job, backend, action.model, manifest, deid_dir, deid), tag
        )
        # 4. SR into the original study (identity re-linked and checked through the vault)
        built = steps.get(SrBuilt, tag) or steps.put(
            build_sr(ctx, action, manifest, [p for p, _ in selected], deid, inferred, sr_dir,
                     self._earlier_results(job)),
            tag,
        )  # fmt: skip
        self._boundary("sr")
        # 5. deliver to every destination (each one once)
        for dest in action.destinations:
            self._deliver(job, steps, tag, dest, [sr_dir / f for f in built.files], "sr")

    def _forward(
        self, job: Job, steps: StepStore, tag: str, action: ForwardAction, selected: Headers
    ) -> None:
        out_dir = job.dir / "work" / tag / "forward"
        forwarded = steps.get(Forwarded, tag) or steps.put(
            deidentify_for_export(self.ctx, job, action, selected, out_dir), tag
        )
        self._deliver(job, steps, tag, action.destination,
                      [out_dir / f for f in forwarded.files], "forward")  # fmt: skip

    def _deliver(
        self,
        job: Job,
        steps: StepStore,
        tag: str,
        dest: str,
        files: list[Path],
        kind: DeliveryKind,
    ) -> None:
        if files and steps.get(Delivered, tag, dest) is None:
            if self.pauses is not None:
                self.pauses.check("destination", dest)
            delivered = deliver(self.ctx, job, dest, files, kind)
            self._boundary("sent")
            steps.put(delivered, tag, dest)
