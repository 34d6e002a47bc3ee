"""Steps 2 and 3 of inference: public preprocessing, then encrypted inference at the vendor.

Only ciphertexts and a random job token leave the node (the backend, a
:class:`secure_infer.VendorClient` in production, encrypts and decrypts); the step keeps the
decrypted probabilities and PHI-free figures (hashes, bytes, timings).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from node.audit import AuditKind
from node.jobs import Job, JobError
from node.pipeline.context import StepContext
from node.pipeline.deid import Deidentified
from node.pipeline.pixels import preprocess_file
from node.pipeline.store import StepResult
from secure_infer import Manifest, PreprocessError

__all__ = ["InferenceBackend", "InferenceOutcome", "Inferred", "infer_encrypted"]


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
    """How the pipeline reaches a vendor peer (``secure_infer.VendorClient`` in production;
    see :class:`node.vendors.VendorBackends`)."""

    def manifest(self, model: str) -> Manifest: ...

    def infer(self, model: str, batch: np.ndarray) -> InferenceOutcome: ...


@dataclass(frozen=True)
class Inferred(StepResult):
    """The decrypted probabilities (one row per de-identified copy, in order) and what the SR
    states about how they were computed."""

    step = "inference"

    probabilities: tuple[tuple[float, ...], ...]
    model_version: str
    parameters: dict[str, str]
    timings: dict[str, float]
    bytes_up: int
    bytes_down: int


def _chunks(count: int, size: int) -> list[range]:
    """``range(count)`` in consecutive pieces of at most ``size``."""
    return [range(i, min(i + size, count)) for i in range(0, count, size)]


def infer_encrypted(
    ctx: StepContext,
    job: Job,
    backend: InferenceBackend,
    model: str,
    manifest: Manifest,
    deid_dir: Path,
    deid: Deidentified,
) -> Inferred:
    """Preprocess the de-identified copies and run ``model`` on them, encrypted.

    The copies go in chunks of ``node.max_images_in_memory``: a chunk is preprocessed, sent
    (one backend call, one audited request) and only its probabilities are kept before the
    next is read, so the job's memory does not grow with the study. The step's result is the
    whole study's: a crash mid-way does the step again from its first chunk (each attempt's
    requests are audited before they are sent, so the ledger still shows every request).
    """
    probabilities: list[tuple[float, ...]] = []
    timings: dict[str, float] = {}
    parameters: dict[str, str] | None = None
    model_version = ""
    bytes_up = bytes_down = 0
    preprocess_seconds = 0.0
    for chunk in _chunks(len(deid.files), ctx.cfg.node.max_images_in_memory):
        t0 = time.perf_counter()
        try:
            batch = np.stack([preprocess_file(deid_dir / deid.files[i], manifest) for i in chunk])
        except PreprocessError as exc:
            # the job record keeps JobError messages; these name shapes, dtypes and values only
            raise JobError(f"cannot preprocess an image: {exc}") from None
        finally:
            preprocess_seconds += time.perf_counter() - t0
        outcome = _infer_chunk(ctx, job, backend, model, manifest, batch)
        del batch
        if model_version and outcome.model_version != model_version:
            # one result must come from one model: the job is retried as a whole
            raise JobError(
                f"the vendor's model version changed during the study "
                f"({model_version} -> {outcome.model_version})"
            )
        model_version = outcome.model_version
        if parameters is None:
            parameters = dict(outcome.parameters)
        if len(outcome.probabilities) != len(chunk):
            raise JobError(
                f"the vendor answered {len(outcome.probabilities)} results for {len(chunk)} images"
            )
        probabilities.extend(tuple(float(p) for p in row) for row in outcome.probabilities)
        for step, seconds in outcome.timings.items():
            timings[step] = timings.get(step, 0.0) + seconds
        bytes_up += outcome.bytes_up
        bytes_down += outcome.bytes_down
    # one latency per step and job, as before the images were chunked
    ctx.metrics.observe_step("preprocess", preprocess_seconds)
    for step in ("encrypt", "vendor", "decrypt"):
        if step in timings:
            ctx.metrics.observe_step(step, timings[step])
    return Inferred(
        probabilities=tuple(probabilities),
        model_version=model_version,
        parameters=parameters or {},
        timings=timings,
        bytes_up=bytes_up,
        bytes_down=bytes_down,
    )


def _infer_chunk(
    ctx: StepContext,
    job: Job,
    backend: InferenceBackend,
    model: str,
    manifest: Manifest,
    batch: np.ndarray,
) -> InferenceOutcome:
    """One chunk through the backend, audited before it is sent and after it is answered."""
    # the intent is audited BEFORE anything is sent: a crash after the vendor served (or a
    # failure whose outcome we cannot know) still leaves one inference_requested per attempt,
    # so the ledger never shows fewer requests than the vendor's chain. Ciphertexts are made
    # inside the backend, so their hashes are not known yet: result_received carries them.
    ctx.record(
        AuditKind.INFERENCE_REQUESTED, study=job.study, model=model,
        model_version=manifest.version, context_hash=None, ciphertext_hashes=[],
        images=len(batch),
    )  # fmt: skip
    try:
        outcome = backend.infer(model, batch)
    except Exception:
        # the job runner retries the job: the vendor step failed this attempt
        ctx.metrics.retry("vendor")
        raise
    ctx.metrics.vendor_traffic(sent=outcome.bytes_up, received=outcome.bytes_down)
    ctx.record(
        AuditKind.RESULT_RECEIVED, study=job.study, model=model,
        model_version=outcome.model_version, context_hash=outcome.context_sha256,
        ciphertext_hashes=outcome.request_sha256, response_hashes=outcome.response_sha256,
        images=len(batch),
    )  # fmt: skip
    return outcome
