"""The hospital's client of a vendor peer (HTTPS with mutual TLS, the vendor's CA pinned).

Flow of :meth:`VendorClient.infer`: fetch the public manifest and PlanSpec (cached), open the
:class:`~secure_infer.hospital.session.HospitalSession` for them (its secret key stays in
``key_dir``, mode 0600), upload the public context unless the vendor already has its hash (HEAD
first), encrypt the preprocessed batch, POST it with a fresh random job token and nothing else,
decrypt the outputs and apply the manifest's final activation in clear. Nothing decrypted is
ever sent back (the IND-CPA^D caveat of CKKS, see docs/threat-model.md).


``model_name`` is ``name`` (the vendor's current version) or ``name@version`` (pinned; the
manifest the vendor answers with must be that version).

Retries: 503 and 429 (honouring Retry-After) and connection failures are retried with exponential
backoff up to ``max_attempts``; a certificate verification failure is not (it will not heal).
Use from the node (one client per configured vendor, reused across jobs)::

    settings = cfg.vendors["acme"].client_settings()
    with VendorClient(settings, cfg.node.keys / "ckks" / "acme") as vendor:
        result = vendor.infer(model_name, preprocessed_batch)   # [N, C, H, W]
    # record result.exchanges (job, request/response SHA-256, chain entry) in the audit ledger

A retried POST keeps its job token: the vendor replays its recent answer to the same job and
request instead of evaluating again (one chain entry per job); a job token sent with a different
request is refused (409 ``job_token_reused``).
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import numpy as np
import tenacity

from secure_infer.errors import InferenceError
from secure_infer.framing import MEDIA_TYPE, decode_frames, encode_frames, frames_sha256
from secure_infer.manifest import Manifest
from secure_infer.wire import (
    API_PREFIX,
    H_CHAIN,
    H_CONTEXT,
    H_EVALUATE_SECONDS,
    H_JOB,
    H_MODEL_VERSION,
    H_QUEUE_SECONDS,
    H_SERVER_SECONDS,
    new_job_token,
)

__all__ = [
    "ClientSettings",
    "Exchange",
    "InferenceResult",
    "VendorClient",
    "VendorError",
    "VendorUnavailableError",
    "apply_activations",
]

log = logging.getLogger(__name__)


class VendorError(InferenceError):
    """The vendor answered with a JSON error; ``code``/``http_status`` are the vendor's."""

    def __init__(self, message: str, code: str, http_status: int) -> None:
        super().__init__(message, code)
        self.http_status = http_status


class VendorUnavailableError(InferenceError):
    """The vendor could not be reached or stayed busy for every attempt."""

    code = "vendor_unavailable"
    http_status = 503


@dataclass(frozen=True)
class ClientSettings:
    """How to reach one vendor (built from node.config.inference.VendorPeerSection)."""

    url: str
    client_cert: Path
    client_key: Path
    ca: Path
    connect_timeout: float = 10.0
    timeout: float = 300.0
    max_attempts: int = 5
    initial_backoff: float = 1.0
    max_backoff: float = 60.0


@dataclass(frozen=True)
class Exchange:
    """One infer request/response, as both parties' hash chains record it."""

    job: str
    request_sha256: str
    response_sha256: str
    chain_entry: str
    bytes_up: int
    bytes_down: int
    images: int


@dataclass
class InferenceResult:
    """Decrypted outputs of one batch with the figures benchmarks and the audit ledger need.

    A batch larger than one request may carry (the plan's ``max_ciphertexts`` or the vendor's
    ``max_request_bytes``) is sent as several requests, one :class:`Exchange` each; ``timings``
    are summed over them.
    """

    probabilities: np.ndarray
    logits: np.ndarray
    model: str
    model_version: str
    context_sha256: str
    exchanges: list[Exchange]
    context_bytes_uploaded: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def job(self) -> str:
        """Job token of the first request (see ``exchanges`` for all)."""
        return self.exchanges[0].job

    @property
    def request_sha256(self) -> str:
        return self.exchanges[0].request_sha256

    @property
    def response_sha256(self) -> str:
        return self.exchanges[0].response_sha256

    @property
    def chain_entry(self) -> str:
        return self.exchanges[0].chain_entry

    @property
    def bytes_up(self) -> int:
        return sum(e.bytes_up for e in self.exchanges)

    @property
    def bytes_down(self) -> int:
        return sum(e.bytes_down for e in self.exchanges)


def apply_activations(manifest: Manifest, logits: np.ndarray) -> np.ndarray:
    """The manifest's final activations, in clear at the hospital: sigmoid per output, softmax
    across all outputs declared ``softmax``, identity for ``none``."""
    z = np.asarray(logits, dtype=np.float64)
    out = z.copy()
    soft = [o.index for o in manifest.outputs if o.activation == "softmax"]
    for o in manifest.outputs:
        if o.activation == "sigmoid":
            out[:, o.index] = 1.0 / (1.0 + np.exp(-z[:, o.index]))
    if soft:
        s = z[:, soft]
        e = np.exp(s - s.max(axis=1, keepdims=True))
        out[:, soft] = e / e.sum(axis=1, keepdims=True)
    return out


def _is_cert_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _ssl_context(s: ClientSettings) -> ssl.SSLContext:
    # cafile given => only that CA is trusted (system roots are not loaded): CA pinning
    ctx = ssl.create_default_context(cafile=str(s.ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(s.client_cert), str(s.client_key))
    return ctx


class _RetryableError(InferenceError):
    """One try failed in a way worth retrying (503, 429 or a transport error)."""

    def __init__(self, last: str, reason: str, retry_after: float | None = None) -> None:
        super().__init__(last)
        self.last = last
        self.reason = reason
        self.retry_after = retry_after


class VendorClient:
    """A connection (pool) to one vendor; one instance per vendor, reused across jobs."""

    def __init__(
        self,
        settings: ClientSettings,
        key_dir: Path,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        """``on_retry(reason)`` is called before each retry (``reason``: ``connect``,
        ``timeout``, ``busy`` or ``transport``), so a caller can count them in its metrics
        without this package knowing about them."""
        self.settings = settings
        self.key_dir = key_dir
        self.on_retry = on_retry
        self._http = httpx.Client(
            base_url=settings.url + API_PREFIX,
            verify=_ssl_context(settings),
            timeout=httpx.Timeout(settings.timeout, connect=settings.connect_timeout),
            headers={"User-Agent": "blindread-client/1"},
        )
        self._models: dict[str, tuple[Manifest, Any]] = {}
        self._prefixes: dict[str, Any] = {}
        self._sessions: dict[str, Any] = {}
        self._uploaded: set[tuple[str, str]] = set()
        self._limits: dict[str, Any] | None = None

    def __enter__(self) -> VendorClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ---------------------------------------------------------------- transport
    def _send(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> tuple[httpx.Response, float, float]:
        """Send with retries; returns (response with body read, t_headers, t_done).

        The retry schedule is tenacity's (``stop_after_attempt`` + exponential wait from
        ``initial_backoff`` capped at ``max_backoff``; a 503's Retry-After, capped too, wins),
        not a hand-kept loop. Only :class:`_RetryableError` is retried: a certificate verification
        failure raises :class:`VendorUnavailableError` at once (it will not heal)."""
        s = self.settings
        backoff = tenacity.wait_exponential(
            multiplier=s.initial_backoff, min=s.initial_backoff, max=s.max_backoff
        )

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome is not None else None
            if isinstance(exc, _RetryableError) and exc.retry_after is not None:
                return min(exc.retry_after, s.max_backoff)
            return float(backoff(state))

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            assert isinstance(exc, _RetryableError)
            log.info("vendor %s %s: %s; retry %d in %.1f s", method, path, exc.last,
                     state.attempt_number, state.upcoming_sleep)  # fmt: skip
            if self.on_retry is not None:
                try:
                    self.on_retry(exc.reason)
                except Exception:  # a metric must never break the request
                    log.exception("on_retry callback failed")

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(s.max_attempts),
            wait=wait,
            retry=tenacity.retry_if_exception_type(_RetryableError),
            before_sleep=before_sleep,
            sleep=time.sleep,
            reraise=True,
        )
        try:
            return retrying(self._send_once, method, path, content, headers, params)
        except _RetryableError as exc:
            raise VendorUnavailableError(
                f"{method} {path} failed after {s.max_attempts} attempts: {exc.last}"
            ) from None

    def _send_once(
        self,
        method: str,
        path: str,
        content: bytes | None,
        headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
    ) -> tuple[httpx.Response, float, float]:
        """One try; :class:`_RetryableError` for a 503 or a transport failure."""
        s = self.settings
        try:
            req = self._http.build_request(
                method, path, content=content, headers=headers, params=params
            )
            resp = self._http.send(req, stream=True)
            t_headers = time.perf_counter()
            try:
                resp.read()
            finally:
                resp.close()
            t_done = time.perf_counter()
        except httpx.TransportError as exc:
            if _is_cert_failure(exc):
                raise VendorUnavailableError(
                    f"TLS certificate verification failed for {s.url}: {exc}"
                ) from exc
            reason = (
                "connect"
                if isinstance(exc, httpx.ConnectError)
                else "timeout"
                if isinstance(exc, httpx.TimeoutException)
                else "transport"
            )
            raise _RetryableError(f"{type(exc).__name__}: {exc}", reason) from exc
        if resp.status_code in (429, 503):  # busy, or this hospital's rate limit
            ra = resp.headers.get("Retry-After")
            reason = "busy" if resp.status_code == 503 else "rate_limited"
            raise _RetryableError(f"{resp.status_code} {self._error_code(resp)}", reason,
                             float(ra) if ra is not None and ra.isdigit() else None)  # fmt: skip
        return resp, t_headers, t_done

    @staticmethod
    def _error_code(resp: httpx.Response) -> str:
        try:
            return str(resp.json().get("error", "?"))
        except ValueError:
            return "?"

    @staticmethod
    def _raise_for(resp: httpx.Response) -> None:
        if resp.status_code < 400:
            return
        try:
            body = resp.json()
            code, detail = str(body.get("error")), str(body.get("detail"))
        except ValueError:
            code, detail = "http_error", resp.text[:200]
        raise VendorError(
            f"vendor answered {resp.status_code} {code}: {detail}", code, resp.status_code
        )

    def _json(self, path: str) -> Any:
        resp, _, _ = self._send("GET", path)
        self._raise_for(resp)
        return resp.json()

    # ---------------------------------------------------------------- API
    def post_json(self, path: str, body: Mapping[str, Any]) -> Any:
        """POST a JSON body under the API prefix (retried like every request); the JSON answer.

        Used by the two-party engine (:mod:`secure_infer.hospital.twopc`) to open a session.
        """
        import json

        resp, _, _ = self._send(
            "POST",
            path,
            content=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        self._raise_for(resp)
        return resp.json()

    def delete(self, path: str) -> None:
        """DELETE under the API prefix (once, no retries); errors are raised."""
        resp = self._http.delete(path)
        self._raise_for(resp)

    def health(self) -> dict[str, Any]:
        """The vendor's /v1/health document."""
        out: dict[str, Any] = self._json("/health")
        return out

    def models(self) -> list[dict[str, str]]:
        """Names and versions of the models the vendor serves."""
        return list(self._json("/models")["models"])

    def model_info(self, name: str) -> tuple[Manifest, Any]:
        """The public manifest and PlanSpec of ``name`` (cached per client)."""
        if name not in self._models:
            from secure_infer.modelref import parse_model_ref
            from secure_infer.spec import PlanSpec

            try:
                ref = parse_model_ref(name)
            except ValueError as exc:
                raise InferenceError(str(exc), code="bad_model_reference") from None
            doc = self._json(f"/models/{name}/manifest")
            manifest = Manifest.model_validate(doc["manifest"])
            if manifest.onnx is not None:
                raise InferenceError("vendor manifest names a private model file; refusing it")
            if manifest.name != ref.name or ref.version not in (None, manifest.version):
                raise InferenceError(
                    f"asked for model {ref} but the vendor answered with"
                    f" {manifest.name}@{manifest.version}"
                )
            self._models[name] = (manifest, PlanSpec.from_json(doc["spec"]))
            if manifest.prefix_onnx:
                self._prefixes[name] = self._load_prefix(name, doc.get("prefix_sha256"))
        return self._models[name]

    def _load_prefix(self, name: str, sha256: str | None) -> Any:
        """Download the public prefix network, check its hash, open it with onnxruntime."""
        import onnxruntime as ort

        resp, _, _ = self._send("GET", f"/models/{name}/prefix")
        self._raise_for(resp)
        data = resp.content
        if not sha256 or hashlib.sha256(data).hexdigest() != sha256:
            raise InferenceError("the vendor's public prefix network does not match its hash")
        return ort.InferenceSession(data, providers=["CPUExecutionProvider"])

    def run_prefix(self, name: str, x: np.ndarray) -> np.ndarray:
        """Split mode: the public prefix network in clear at the hospital (identity if none)."""
        self.model_info(name)
        sess = self._prefixes.get(name)
        if sess is None:
            return np.asarray(x, dtype=np.float64)
        feed = {sess.get_inputs()[0].name: np.asarray(x, dtype=np.float32)}
        out = sess.run(None, feed)[0]
        return np.asarray(out, dtype=np.float64).reshape(len(out), -1)

    def session(self, name: str) -> Any:
        """The HospitalSession of ``name``; its secret key lives in ``key_dir/<name>`` (0600)."""
        if name not in self._sessions:
            from secure_infer.hospital.session import HospitalSession

            _, spec = self.model_info(name)
            self._sessions[name] = HospitalSession.create(spec, self.key_dir / name)
        return self._sessions[name]

    def ensure_context(self, name: str) -> tuple[str, int]:
        """Upload our public context for ``name`` unless the vendor has it; (sha, bytes sent)."""
        sess = self.session(name)
        sha: str = sess.context_sha256()
        if (name, sha) in self._uploaded:
            return sha, 0
        head, _, _ = self._send("HEAD", f"/contexts/{sha}")
        if head.status_code == 200:
            self._uploaded.add((name, sha))
            return sha, 0
        if head.status_code != 404:
            self._raise_for(head)
        data: bytes = sess.public_context_bytes()
        resp, _, _ = self._send(
            "PUT",
            "/contexts",
            content=data,
            params={"model": name},
            headers={H_CONTEXT: sha, "Content-Type": "application/octet-stream"},
        )
        self._raise_for(resp)
        if resp.json().get("sha256") != sha:
            raise InferenceError("vendor stored our context under a different hash")
        self._uploaded.add((name, sha))
        log.info("uploaded public context %s.. (%d bytes) for model %s", sha[:12], len(data), name)
        return sha, len(data)

    def infer_frames(
        self, name: str, context_sha: str, frames: Sequence[bytes], job: str | None = None
    ) -> tuple[httpx.Response, float, float, float, bytes]:
        """POST already-encrypted frames; returns (response, t_send, t_headers, t_done, body)."""
        body = encode_frames(frames)
        t_send = time.perf_counter()
        resp, t_headers, t_done = self._send(
            "POST",
            f"/models/{name}/infer",
            content=body,
            headers={
                H_JOB: job or new_job_token(),
                H_CONTEXT: context_sha,
                "Content-Type": MEDIA_TYPE,
            },
        )
        return resp, t_send, t_headers, t_done, body

    def _max_request_bytes(self) -> int | None:
        if self._limits is None:
            self._limits = dict(self.health().get("limits") or {})
        value = self._limits.get("max_request_bytes")
        return int(value) if value else None

    def _chunks(self, frames: Sequence[bytes], spec: Any) -> list[tuple[int, int]]:
        """``(start, stop)`` ciphertext ranges that each fit one request."""
        step = max(1, int(getattr(spec, "max_ciphertexts", len(frames)) or len(frames)))
        limit = self._max_request_bytes()
        if limit and frames:
            per_frame = max(len(f) for f in frames) + 4
            step = max(1, min(step, (limit - 8) // per_frame))
        return [(i, min(i + step, len(frames))) for i in range(0, len(frames), step)]

    def infer(self, name: str, x: np.ndarray) -> InferenceResult:
        """Encrypted inference of the preprocessed batch ``x`` ([N, C, H, W])."""
        t0 = time.perf_counter()
        manifest, spec = self.model_info(name)
        sess = self.session(name)
        sha, ctx_bytes = self.ensure_context(name)
        arr = self.run_prefix(name, np.asarray(x, dtype=np.float64))
        n_images = int(arr.shape[0])
        t_enc = time.perf_counter()
        frames = sess.encrypt(arr)
        timings = dict.fromkeys(
            ("upload", "queue", "evaluate", "server", "download", "decrypt"), 0.0
        )
        timings["encrypt"] = time.perf_counter() - t_enc
        per = max(1, int(getattr(spec, "images_per_ciphertext", 1)))
        exchanges: list[Exchange] = []
        logits_parts: list[np.ndarray] = []
        version = ""
        for start, stop in self._chunks(frames, spec):
            chunk = frames[start:stop]
            k = min(len(chunk) * per, n_images - start * per)
            job = new_job_token()
            resp, t_send, t_headers, t_done, body = self.infer_frames(name, sha, chunk, job)
            if resp.status_code == 400 and self._error_code(resp) == "unknown_context":
                # the vendor lost our context (state wiped): upload again and retry once
                self._uploaded.discard((name, sha))
                sha, more = self.ensure_context(name)
                ctx_bytes += more
                resp, t_send, t_headers, t_done, body = self.infer_frames(name, sha, chunk, job)
            self._raise_for(resp)
            if resp.headers.get(H_JOB) != job:
                raise InferenceError("vendor answered for another job token")
            outputs = decode_frames(resp.content)
            t_dec = time.perf_counter()
            logits_parts.append(np.asarray(sess.decrypt(outputs, k)))
            timings["decrypt"] += time.perf_counter() - t_dec
            server_s = float(resp.headers.get(H_SERVER_SECONDS, "0"))
            timings["upload"] += max(0.0, t_headers - t_send - server_s)
            timings["queue"] += float(resp.headers.get(H_QUEUE_SECONDS, "0"))
            timings["evaluate"] += float(resp.headers.get(H_EVALUATE_SECONDS, "0"))
            timings["server"] += server_s
            timings["download"] += t_done - t_headers
            version = resp.headers.get(H_MODEL_VERSION, "")
            exchanges.append(
                Exchange(
                    job=job,
                    request_sha256=frames_sha256(body),
                    response_sha256=frames_sha256(resp.content),
                    chain_entry=resp.headers.get(H_CHAIN, ""),
                    bytes_up=len(body),
                    bytes_down=len(resp.content),
                    images=k,
                )
            )
        logits = np.concatenate(logits_parts, axis=0)
        t_act = time.perf_counter()
        probs = apply_activations(manifest, logits)
        t_end = time.perf_counter()
        timings["decrypt"] += t_end - t_act
        timings["total"] = t_end - t0
        timings["total_without_setup"] = t_end - t_enc
        return InferenceResult(
            probabilities=probs,
            logits=logits,
            model=name,
            model_version=version,
            context_sha256=sha,
            exchanges=exchanges,
            context_bytes_uploaded=ctx_bytes,
            timings=timings,
        )
