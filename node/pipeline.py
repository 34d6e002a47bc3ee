"""The job action of a hospital node: what happens to a completed study.

``rules -> (infer: de-identify + vault -> public preprocessing -> encrypted inference -> SR ->
C-STORE to each destination) | (forward_deidentified: profile -> C-STORE) | discard``

Every step writes its result into the job's own folder (``<job dir>/steps/``) with
temp-file + fsync + rename before the next step starts, and a step whose result is already there
is not done again. A crash at any point therefore resumes at the first step without a result;
the SR's UIDs are derived from the study and model version with a keyed hash, so a resend after
a crash replaces the SR in PACS instead of adding a second one.

What leaves the node: only ciphertexts and a random job token go to the vendor (the inference
worker reads the de-identified copies, never the originals); SRs go to the destinations the rule
names; de-identified copies go to research destinations. The audit ledger and the logs see
pseudonyms and hashes only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from durable_io import atomic_write
from node.audit import AuditKind, AuditLedger
from node.config import NodeConfig
from node.config.routes import ForwardAction, InferAction
from node.deid import BurnedInPolicy, BurnedInRule, Deidentifier, DeidKeys
from node.jobs import Job, JobError, JobStore
from node.metrics import NodeMetrics
from node.netsettings import destination_settings
from node.pseudonym import Pseudonymizer
from node.rules import RuleMatch, evaluate, series_selected
from node.sr import as_outputs, build_result_objects, write_dataset_atomic
from node.vault import IdentifierVault
from scp import StorageSender
from secure_infer import Manifest, preprocess_for_manifest

__all__ = ["InferenceBackend", "InferenceOutcome", "Pipeline", "StepStore"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceOutcome:
    """What the pipeline keeps of one encrypted inference (no PHI: hashes, figures)."""

    probabilities: list[list[float]]
    model_version: str
    context_sha256: str
    request_sha256: list[str]
    response_sha256: list[str]
    bytes_up: int
    bytes_down: int
    timings: dict[str, float]
    parameters: dict[str, str]


class InferenceBackend(Protocol):
    """How the pipeline reaches a vendor peer (``secure_infer.client.VendorClient`` in
    production; see :func:`node.vendors.vendor_backend`)."""

    def manifest(self, model: str) -> Manifest: ...

    def infer(self, model: str, batch: np.ndarray) -> InferenceOutcome: ...


class StepStore:
    """Results of a job's steps as small JSON files, each written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.path(name).read_text())
        except FileNotFoundError:
            return None
        return data

    def put(self, name: str, data: Mapping[str, Any]) -> None:
        text = json.dumps(data, sort_keys=True)
        atomic_write(self.path(name), text.encode("utf-8"), mode=0o666)


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _calling_ae(ds: Dataset) -> str | None:
    """The AE title that sent the study: our SCP records it in each file's meta information
    as Source Application Entity Title (0002,0016)."""
    meta = getattr(ds, "file_meta", None)
    value = meta.get("SourceApplicationEntityTitle") if meta is not None else None
    return str(value).strip() or None if value else None


def _first_frame(ds: Dataset) -> np.ndarray:
    arr = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise JobError(f"pixel data of shape {arr.shape} is not one greyscale frame")
    return np.asarray(arr)


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
        audit: AuditLedger | None = None,
        metrics: NodeMetrics | None = None,
        jobs: JobStore | None = None,
    ) -> None:
        self.cfg = cfg
        self.pseudonyms = pseudonyms
        self.deid_keys = deid_keys
        self.vault = vault
        self.sender = sender
        self.backends = backends
        self.uid_key = uid_key
        self.audit = audit
        # always a registry: a pipeline without an endpoint just counts into its own
        self.metrics = metrics if metrics is not None else NodeMetrics()
        self.jobs = jobs

    # ------------------------------------------------------------------ helpers

    def _audit(self, kind: str, **details: Any) -> None:
        if self.audit is not None:
            self.audit.append(kind, details)

    def _timed(self, step: str) -> AbstractContextManager[None]:
        return self.metrics.time_step(step)

    def _instance_files(self, job: Job) -> list[Path]:
        """This job's instances, plus those of earlier finished jobs of the same study.

        Images that arrive after a study's completion timer fired make a second job; with the
        earlier images included, its result covers the whole study and (same keyed SR UID)
        replaces the first result instead of describing only the late images.
        """
        files: dict[str, Path] = {}
        earlier = self.jobs.earlier_done(job) if self.jobs is not None else []
        for other in [*earlier, job]:
            for path in other.paths:
                if path.exists():
                    files[path.name] = path  # same name = same SOP instance; newest wins
        return list(files.values())

    def _headers(self, job: Job) -> list[tuple[Path, Dataset]]:
        out: list[tuple[Path, Dataset]] = []
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
        steps = StepStore(job.dir / "steps")
        headers = self._headers(job)
        if steps.get("received") is None:
            self._audit(AuditKind.STUDY_RECEIVED, study=job.study, instances=len(headers))
            steps.put("received", {"instances": len(headers)})
        calling_ae = _calling_ae(headers[0][1])
        with self._timed("rules"):
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
        headers: list[tuple[Path, Dataset]],
        match: RuleMatch,
        calling_ae: str | None,
    ) -> None:
        action = match.action
        tag = f"r{match.index}"
        if steps.get(f"{tag}-matched") is None:
            kind = (
                "infer" if action.infer else
                "forward_deidentified" if action.forward_deidentified else "discard"
            )  # fmt: skip
            self._audit(AuditKind.RULE_MATCHED, study=job.study, rule=match.name, action=kind)
            self.metrics.rule_decision(kind)
            steps.put(f"{tag}-matched", {"rule": match.name, "action": kind})
        selected = [
            (p, ds) for p, ds in headers if series_selected(action, ds, calling_ae)[0]
        ]
        if action.infer is not None:
            self._infer(job, steps, tag, action.infer, selected)
        elif action.forward_deidentified is not None:
            self._forward(job, steps, tag, action.forward_deidentified, selected)
        elif steps.get(f"{tag}-discarded") is None:
            self._audit(AuditKind.DISCARDED, study=job.study, rule=match.name)
            steps.put(f"{tag}-discarded", {})

    # ------------------------------------------------------------------ infer

    def _infer(
        self,
        job: Job,
        steps: StepStore,
        tag: str,
        action: InferAction,
        selected: list[tuple[Path, Dataset]],
    ) -> None:
        if not selected:
            log.info("study %s: rule %s selected no series for inference", job.study, tag)
            return
        work = job.dir / "work" / tag
        # 1. de-identify: the inference worker only ever reads these copies
        deid_dir = work / "deid"
        if steps.get(f"{tag}-deid") is None:
            with self._timed("deid"):
                deid = Deidentifier(
                    self.cfg.deid.options,
                    self.deid_keys,
                    burned_in=BurnedInPolicy(rule=BurnedInRule.ALLOW),
                )
                deid_dir.mkdir(parents=True, exist_ok=True)
                names: list[str] = []
                study_pseudonym = ""
                for n, (path, _) in enumerate(selected):
                    result = deid.deidentify(pydicom.dcmread(path))
                    if result.dataset is None:  # cannot happen with ALLOW
                        raise JobError(f"de-identification refused: {result.blocked_reason}")
                    name = f"{n:05d}.dcm"
                    write_dataset_atomic(result.dataset, deid_dir / name)
                    names.append(name)
                    if not study_pseudonym:
                        study_pseudonym = result.study_pseudonym
                        self.vault.store(study_pseudonym, result.identifiers)
            self._audit(
                AuditKind.DEIDENTIFIED, study=job.study, instances=len(names),
                deid_study=study_pseudonym, purpose="inference",
            )  # fmt: skip
            steps.put(
                f"{tag}-deid",
                {"files": names, "sources": [p.name for p, _ in selected],
                 "study_pseudonym": study_pseudonym},
            )  # fmt: skip
        deid_state = steps.get(f"{tag}-deid") or {}
        backend = self.backends(action.vendor)
        manifest = backend.manifest(action.model)
        # 2. preprocess + 3. encrypted inference
        inferred = steps.get(f"{tag}-inference")
        if inferred is None:
            with self._timed("preprocess"):
                batch = np.stack(
                    [self._preprocess(deid_dir / name, manifest) for name in deid_state["files"]]
                )
            outcome = backend.infer(action.model, batch)
            for step in ("encrypt", "vendor", "decrypt"):
                if step in outcome.timings:
                    self.metrics.observe_step(step, outcome.timings[step])
            self.metrics.vendor_traffic(sent=outcome.bytes_up, received=outcome.bytes_down)
            self._audit(
                AuditKind.INFERENCE_REQUESTED, study=job.study, model=action.model,
                model_version=outcome.model_version, context_hash=outcome.context_sha256,
                ciphertext_hashes=outcome.request_sha256, images=len(batch),
            )  # fmt: skip
            self._audit(
                AuditKind.RESULT_RECEIVED, study=job.study, model=action.model,
                model_version=outcome.model_version, response_hashes=outcome.response_sha256,
            )  # fmt: skip
            inferred = {
                "probabilities": outcome.probabilities,
                "model_version": outcome.model_version,
                "parameters": outcome.parameters,
                "timings": outcome.timings,
                "bytes_up": outcome.bytes_up,
                "bytes_down": outcome.bytes_down,
            }
            steps.put(f"{tag}-inference", inferred)
        # 4. SR into the original study (identity re-linked and checked through the vault)
        sr_dir = work / "sr"
        sr_state = steps.get(f"{tag}-sr")
        if sr_state is None:
            with self._timed("sr_build"):
                by_name = {p.name: p for p, _ in selected}
                originals = [
                    pydicom.dcmread(by_name[name], stop_before_pixels=True)
                    for name in deid_state["sources"]
                ]
                self._check_relink(deid_state["study_pseudonym"], originals[0])
                outputs = self._outputs(manifest, originals, inferred["probabilities"])
                objects = build_result_objects(
                    manifest,
                    outputs,
                    originals,
                    uid_key=self.uid_key,
                    settings=action.sr_settings(self.cfg.sr),
                    algorithm_parameters=inferred["parameters"],
                )
                sr_dir.mkdir(parents=True, exist_ok=True)
                files = []
                for i, ds in enumerate(objects):
                    name = f"result-{i}.dcm"
                    write_dataset_atomic(ds, sr_dir / name)
                    files.append(name)
            sr_state = {"files": files}
            steps.put(f"{tag}-sr", sr_state)
        # 5. deliver to every destination (each one once)
        for dest in action.destinations:
            self._deliver(job, steps, f"{tag}-deliver-{dest}", dest,
                          [sr_dir / f for f in sr_state["files"]], kind="sr")  # fmt: skip

    @staticmethod
    def _preprocess(path: Path, manifest: Manifest) -> np.ndarray:
        ds = pydicom.dcmread(path)
        return preprocess_for_manifest(
            _first_frame(ds),
            manifest,
            rescale_slope=float(ds.get("RescaleSlope", 1.0) or 1.0),
            rescale_intercept=float(ds.get("RescaleIntercept", 0.0) or 0.0),
            photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
        )

    def _check_relink(self, study_pseudonym: str, original: Dataset) -> None:
        """The vault must give back this study's identity; anything else is a mix-up."""
        record = self.vault.relink(study_pseudonym)
        if record.get("StudyInstanceUID") != str(original.StudyInstanceUID):
            raise JobError("identifier vault does not re-link this result to its study")

    @staticmethod
    def _outputs(
        manifest: Manifest, originals: Sequence[Dataset], probs: Sequence[Sequence[float]]
    ) -> Any:
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

    # ------------------------------------------------------------------ forward

    def _forward(
        self,
        job: Job,
        steps: StepStore,
        tag: str,
        action: ForwardAction,
        selected: list[tuple[Path, Dataset]],
    ) -> None:
        out_dir = job.dir / "work" / tag / "forward"
        state = steps.get(f"{tag}-forward")
        if state is None:
            options = list(
                self.cfg.deid.profiles[action.profile] if action.profile else self.cfg.deid.options
            )
            options += [o for o in action.options if o not in options]
            deid = Deidentifier(
                options,
                self.deid_keys,
                burned_in=self.cfg.deid.burned_in.to_policy(),
                safe_private=self.cfg.deid.allow_list(),
            )
            out_dir.mkdir(parents=True, exist_ok=True)
            files, blocked = [], 0
            with self._timed("deid"):
                for n, (path, _) in enumerate(selected):
                    result = deid.deidentify(pydicom.dcmread(path))
                    if result.dataset is None:
                        blocked += 1
                        self._audit(
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
            state = {"files": files, "blocked": blocked}
            steps.put(f"{tag}-forward", state)
        self._deliver(job, steps, f"{tag}-deliver-{action.destination}", action.destination,
                      [out_dir / f for f in state["files"]], kind="forward")  # fmt: skip

    # ------------------------------------------------------------------ delivery

    def _deliver(
        self, job: Job, steps: StepStore, step: str, dest: str, files: list[Path], kind: str
    ) -> None:
        if steps.get(step) is not None or not files:
            return
        t0 = time.perf_counter()
        try:
            report = self.sender.send(destination_settings(self.cfg, dest), files)
        except Exception:
            self.metrics.retry("deliver")
            if kind == "sr":
                self.metrics.sr_delivered(ok=False)
            raise
        self.metrics.observe_step("deliver" if kind == "sr" else "forward",
                                  time.perf_counter() - t0)  # fmt: skip
        if kind == "sr":
            self.metrics.sr_delivered(ok=True)
        self._audit(
            AuditKind.SR_DELIVERED if kind == "sr" else AuditKind.FORWARDED,
            study=job.study, destination=dest, instances=report.sent,
            sha256=[_sha256_file(f) for f in files],
        )  # fmt: skip
        steps.put(step, {"sent": report.sent})
        log.info("study %s: %d %s object(s) delivered to %s", job.study, report.sent, kind, dest)
