"""The vendor peer: a Starlette ASGI app served by uvicorn over HTTPS with mutual TLS.

The TLS layer refuses any client without a certificate signed by the configured client CA
(``ssl.CERT_REQUIRED``); every refused handshake is logged (peer address and a fixed reason,
rate-limited) and counted (:mod:`secure_infer.vendor._handshake`, which does the TLS layer in
place of the loop for that reason). The verified certificate's subject CN is the hospital's
identity and namespaces its stored contexts. uvicorn does not put the peer certificate into the
ASGI scope, so :class:`_MtlsH11Protocol` adds the ASGI TLS extension
(``scope["extensions"]["tls"]``) per connection.

Protocol: see :mod:`secure_infer.wire`; ciphertext lists use :mod:`secure_infer.framing`. Every
bad input is a 4xx ``{"error": code, "detail": ...}`` from the :mod:`secure_infer.errors` tree
(mapped in one place, :mod:`secure_infer.vendor._http`) and the server keeps serving. The server
logs job tokens, hashes, sizes and timings only: no request can contain an identifier, and none
is ever logged. Each answered inference is appended to the vendor's signed hash chain
(:mod:`secure_infer.chain`, with the hospital's keyed hash) before the response leaves.

Models are served from a :class:`~secure_infer.vendor._registry.Registry` (several versions side
by side; ``/v1/models/name@version/...`` pins one, a bare name gets the current one), replaced
whole by :meth:`VendorServer.reload` on SIGHUP, each new model checked before it goes live.
Each hospital is held to the access policy (:mod:`secure_infer.vendor._access`: permitted
models, stored contexts, requests per minute, the CRL) before any work is done for it.

"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from secure_infer.chain import HashChain
from secure_infer.errors import (
    CiphertextError,
    InferenceError,
    ModelNotFoundError,
    UnknownContextError,
)
from secure_infer.framing import MEDIA_TYPE, decode_frames, encode_frames, frames_sha256
from secure_infer.modelref import ModelRef, parse_model_ref
from secure_infer.vendor._access import AccessPolicy, RateLimiter, RevocationList
from secure_infer.vendor._handshake import TlsRefusals, tls_protocol_factory
from secure_infer.vendor._http import EXCEPTION_HANDLERS
from secure_infer.vendor._identity import HospitalIds, load_chain_key
from secure_infer.vendor._metrics import VendorMetrics, VendorMetricsMiddleware, metrics_endpoint
from secure_infer.vendor._pool import EvalPool
from secure_infer.vendor._ray_pool import RayEvalPool, RaySettings
from secure_infer.vendor._registry import Refused, Registry, ServedModel, build_registry
from secure_infer.vendor._store import ContextStore, hospital_namespace
from secure_infer.vendor._twopc_sessions import TwoPcSessions, TwoPcSettings
from secure_infer.vendor.certs import cert_common_name, cert_fingerprint
from secure_infer.wire import (
    API_PREFIX,
    H_CHAIN,
    H_CONTEXT,
    H_EVALUATE_SECONDS,
    H_JOB,
    H_MODEL_VERSION,
    H_QUEUE_SECONDS,
    H_SERVER_SECONDS,
    AccessDeniedError,
    BadRequestError,
    RateLimitedError,
    ServerBusyError,
    ServerTimeoutError,
    TooLargeError,
    UnauthenticatedError,
    check_job_token,
    check_sha256,
)

__all__ = [
    "ServerSettings",
    "TlsFiles",
    "VendorServer",
    "build_app",
    "build_ssl_context",
    "serve",
    "settings_from_config",
]


AnyPool = EvalPool | RayEvalPool  # the evaluation backend: local processes or Ray actors

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]
]


@dataclass(frozen=True)
class TlsFiles:
    """Server certificate/key and the CA that signs hospital client certificates."""

    cert: Path
    key: Path
    client_ca: Path


@dataclass(frozen=True)
class ServerSettings:
    """Everything the vendor server needs besides TLS (built from :mod:`.config`)."""

    manifests: tuple[Path, ...]
    state_dir: Path
    max_request_bytes: int = 64 * 1024 * 1024
    max_context_bytes: int = 256 * 1024 * 1024
    max_frames: int = 1024
    workers: int = 1
    queue_size: int = 4
    read_timeout: float = 60.0
    evaluate_timeout: float = 300.0
    context_cache: int = 8
    # registry (versions, retirement, the check before a model goes live)
    pins: tuple[tuple[str, str], ...] = ()
    retired: tuple[str, ...] = ()
    check: str = "encrypted"
    check_tolerance: float = 1e-3
    # access control (None: every hospital may use every model, no limits)
    access: AccessPolicy | None = None
    crl: Path | None = None
    client_ca: Path | None = None
    chain_anchor: Path | None = None
    # the config file re-read on SIGHUP (None: reload re-reads these settings only)
    config_path: Path | None = None
    twopc: TwoPcSettings | None = None  # models served with the two-party (Cheetah) engine
    backend: str = "local"
    """``local`` (process pool on this machine) or ``ray`` (actors on a cluster)."""
    ray: RaySettings | None = None
    contexts_dir: Path | None = None
    """Context store shared by several front ends; default ``<state_dir>/contexts``."""


def _make_pool(
    settings: ServerSettings, manifests: Sequence[Path], store_root: Path
) -> AnyPool:
    """The evaluation backend the config asks for (Ray is imported only when it starts)."""
    args = (
        manifests,
        store_root,
        settings.workers,
        settings.queue_size,
        settings.context_cache,
    )
    if settings.backend == "ray":
        return RayEvalPool(*args, ray_settings=settings.ray)
    return EvalPool(*args)


def build_ssl_context(tls: TlsFiles) -> ssl.SSLContext:
    """TLS >= 1.2 server context that requires a client certificate from ``tls.client_ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    ctx.load_verify_locations(cafile=str(tls.client_ca))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@dataclass(frozen=True)
class _Hospital:
    cn: str
    fingerprint: str
    hid: str = ""  # keyed hash of the CN: the chain's and the metrics' name for it

    @property
    def namespace(self) -> str:
        return hospital_namespace(self.cn)

    @property
    def short(self) -> str:
        return self.fingerprint[:12]


_REPLAY_CACHE = 64


@dataclass(frozen=True)
class _Answered:
    """A recent answer, replayed when a client retries the same job (e.g. after a lost reply)."""

    request_sha256: str
    body: bytes
    headers: dict[str, str]


class JobReusedError(InferenceError):
    """A job token was sent again with a different request."""

    code = "job_token_reused"
    http_status = 409


class VendorServer:
    """State shared by the request handlers: models, context store, pool, chain."""

    def __init__(self, settings: ServerSettings, tls: TlsFiles | None = None) -> None:
        from secure_infer.twopc.party import LinkTls

        self.settings = settings
        settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.registry, refused = self._build(settings, None)
        if refused and not self.registry.models:
            raise ValueError("no model could be served: " + "; ".join(
                f"{r.model or r.manifest}: {r.reason}" for r in refused))
        self.refused: list[Refused] = refused
        self.reloads = 0
        self._reloading: asyncio.Lock | None = None
        self.store = ContextStore(settings.contexts_dir or settings.state_dir / "contexts")
        key_dir = settings.state_dir / "keys"
        self.ids = HospitalIds.load(key_dir)
        self.chain = HashChain(
            settings.state_dir / "chain.jsonl", load_chain_key(key_dir),
            anchor=settings.chain_anchor,
        )
        self.access = settings.access or AccessPolicy()
        self.limiter = RateLimiter()
        self.crl = self._crl(settings)
        self.metrics = VendorMetrics()
        self.metrics.registry_loaded(self.registry, self.refused)
        self._answered: OrderedDict[tuple[str, str], _Answered] = OrderedDict()
        # job tokens being evaluated now: a client's retry of a slow request must not be
        # evaluated (and chained) a second time while the first is still running
        self._in_flight: set[tuple[str, str]] = set()
        self.pool = self._new_pool(self.registry)
        # two-party sessions: the link uses the HTTPS server's certificate; the hospital's
        # certificate must chain to the CA that signs hospital certificates
        self.twopc: TwoPcSessions | None = None
        self._twopc_jobs: set[tuple[str, str]] = set()
        if settings.twopc is not None and settings.twopc.models:
            if tls is None:
                raise ValueError("two-party models need the server's TLS files")
            self.twopc = TwoPcSessions(settings.twopc, LinkTls(tls.cert, tls.key, tls.client_ca))

    # -- registry ------------------------------------------------------------------------
    @staticmethod
    def _build(
        settings: ServerSettings, previous: Registry | None
    ) -> tuple[Registry, list[Refused]]:
        from secure_infer.vendor._admin import read_overlay

        overlay = read_overlay(settings.state_dir)
        manifests = [*settings.manifests, *(Path(m) for m in overlay.added)]
        return build_registry(
            manifests,
            pins={**dict(settings.pins), **overlay.current},
            retired=(*settings.retired, *overlay.retired),
            previous=previous,
            encrypted_check=settings.check == "encrypted",
            tolerance=settings.check_tolerance,
        )

    @staticmethod
    def _crl(settings: ServerSettings) -> RevocationList | None:
        if settings.crl is None:
            return None
        if settings.client_ca is None:
            raise ValueError("a CRL needs the client CA that signs it (tls.client_ca)")
        return RevocationList(settings.crl, settings.client_ca)

    def _new_pool(self, registry: Registry) -> AnyPool:
        return _make_pool(self.settings, registry.manifests(), self.store.root)

    @property
    def models(self) -> dict[str, Any]:
        """``name@version`` -> VendorModel of every live model."""
        return {k: m.vm for k, m in self.registry.models.items()}

    def resolve(self, text: str) -> ServedModel:
        """The live model a request names (``name`` or ``name@version``); 400 / 404."""
        try:
            ref = parse_model_ref(text)
        except ValueError as exc:
            raise BadRequestError(str(exc), code="bad_model_reference") from None
        return self.registry.resolve(ref)

    def model(self, name: str) -> Any:
        """The VendorModel a request names (kept for routes that need the model only)."""
        return self.resolve(name).vm

    async def reload(self) -> dict[str, Any]:
        """Re-read the config (if any) and the admin overlay; check every new or changed
        model; swap registry and worker pool at once. A model that fails stays out (logged);
        a failure to read the config keeps everything as it is. Returns the status written to
        ``registry-status.json``. One reload at a time; requests are served throughout."""
        from secure_infer.vendor._admin import write_status

        if self._reloading is None:
            self._reloading = asyncio.Lock()
        async with self._reloading:
            self.reloads += 1
            try:
                settings = self.settings
                if settings.config_path is not None:
                    fresh = await anyio.to_thread.run_sync(
                        lambda: settings_from_config(settings.config_path)  # type: ignore[arg-type]
                    )
                    # what a reload changes; limits, workers and state_dir need a restart
                    settings = dataclasses.replace(
                        settings,
                        **{k: getattr(fresh, k) for k in _RELOADED},
                    )
                new_crl = self._crl(settings)
                registry, refused = await anyio.to_thread.run_sync(
                    lambda: self._build(settings, self.registry)
                )
            except (InferenceError, OSError, ValueError) as exc:
                log.error("reload failed, nothing changed: %s", exc)
                status = self.status(error=str(exc))
                write_status(self.settings.state_dir, status)
                return status
            old_pool = self.pool
            if _builds(registry) != _builds(self.registry):  # workers load the models anew
                pool = self._new_pool(registry)
                await pool.start()
            else:
                pool = old_pool
            self.settings, self.registry, self.refused = settings, registry, refused
            self.access = settings.access or AccessPolicy()
            self.crl = new_crl
            self.pool = pool
            self.metrics.registry_loaded(registry, refused)
            log.info("registry generation %d live: %s%s", registry.generation,
                     ", ".join(sorted(registry.models)) or "no model",
                     f"; {len(refused)} refused" if refused else "")
            if pool is not old_pool:
                asyncio.get_running_loop().create_task(self._retire_pool(old_pool))
            status = self.status()
            write_status(self.settings.state_dir, status)
            return status

    async def _retire_pool(self, pool: AnyPool) -> None:
        """Stop a replaced pool once the requests it still runs are done."""
        deadline = time.monotonic() + self.settings.evaluate_timeout
        while pool.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        pool.shutdown()

    def status(self, error: str | None = None) -> dict[str, Any]:
        """What ``registry-status.json`` and ``vendor models list`` show."""
        out: dict[str, Any] = {
            "reload": self.reloads,
            "generation": self.registry.generation,
            "models": self.registry.listing(),
            "refused": [
                {"manifest": r.manifest, "model": r.model, "reason": r.reason,
                 "kept_previous": r.kept_previous}
                for r in self.refused
            ],
        }
        if error is not None:
            out["error"] = error
        return out

    def recall(self, namespace: str, job: str) -> _Answered | None:
        """The answer already given to this hospital's job token, if recent."""
        return self._answered.get((namespace, job))

    def begin(self, namespace: str, job: str) -> None:
        """Mark the job token as being evaluated; a second request under it meanwhile is told
        to come back (503 + Retry-After), by when the first one's answer is in the replay
        cache. Called from the event loop only (no await between check and add)."""
        key = (namespace, job)
        if key in self._in_flight:
            raise ServerBusyError(
                "this job token's request is still being evaluated; retry later", retry_after=2
            )
        self._in_flight.add(key)

    def end(self, namespace: str, job: str) -> None:
        self._in_flight.discard((namespace, job))

    def remember(self, namespace: str, job: str, answered: _Answered) -> None:
        self._answered[(namespace, job)] = answered
        while len(self._answered) > _REPLAY_CACHE:
            self._answered.popitem(last=False)



_RELOADED = ("manifests", "pins", "retired", "check", "check_tolerance", "access", "crl",
             "client_ca")
"""The settings a reload (SIGHUP) takes from the config file."""


def _builds(registry: Registry) -> dict[str, Any]:
    """Each live model's build (its files' stamps): a changed one needs new workers."""
    return {k: (m.manifest_path, m.stamp) for k, m in registry.models.items()}


# ------------------------------------------------------------------------ helpers
def _hospital(request: Request) -> _Hospital:
    """The verified client certificate's hospital; 403 ``certificate_revoked`` if on the CRL."""
    tls = request.scope.get("extensions", {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        raise UnauthenticatedError("no verified client certificate")
    der = ssl.PEM_cert_to_DER_cert(chain[0])
    srv: VendorServer = request.app.state.vendor
    cn = cert_common_name(der)
    if srv.crl is not None:
        try:
            srv.crl.check(der)
        except AccessDeniedError as exc:
            srv.metrics.refused(srv.ids.label(cn), exc.code)
            raise
    return _Hospital(cn, cert_fingerprint(der), srv.ids.of(cn))


def _permitted(srv: VendorServer, hosp: _Hospital, ref_text: str) -> ServedModel:
    """The model a request names, if this hospital may use it (404 / 403, reason counted)."""
    served = srv.resolve(ref_text)
    try:
        srv.access.check_model(hosp.cn, served.ref)
    except AccessDeniedError as exc:
        srv.metrics.refused(srv.ids.label(hosp.cn), exc.code)
        raise
    return served


def _rate(srv: VendorServer, hosp: _Hospital) -> None:
    """Spend one of this hospital's requests per minute (429 ``rate_limited``)."""
    try:
        rules = srv.access.rules(hosp.cn)
        srv.limiter.take(hosp.cn, rules.requests_per_minute)
    except (AccessDeniedError, RateLimitedError) as exc:
        srv.metrics.refused(srv.ids.label(hosp.cn), exc.code)
        raise


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    """Read at most ``limit`` bytes within ``timeout``; drain (bounded) and raise 413 beyond it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n_declared = int(declared)
        except ValueError:
            raise BadRequestError("Content-Length is not an integer") from None
        if n_declared > 4 * limit:
            # too big to drain politely: answer now, uvicorn closes the connection
            raise TooLargeError(f"body of {n_declared} bytes exceeds the limit of {limit}")
    chunks: list[bytes] = []
    total = 0
    too_large = False
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    too_large = True
                    chunks.clear()
                    if total > 4 * limit:
                        break
                    continue
                chunks.append(chunk)
    except TimeoutError:
        raise ServerTimeoutError(f"request body not received within {timeout:g} s") from None
    if too_large:
        raise TooLargeError(f"body exceeds the limit of {limit} bytes")
    return b"".join(chunks)


# ------------------------------------------------------------------------ handlers
def _srv(request: Request) -> VendorServer:
    srv: VendorServer = request.app.state.vendor
    return srv


async def health(request: Request) -> Response:
    srv = _srv(request)
    _hospital(request)
    return JSONResponse(
        {
            "status": "ok",
            "models": len(srv.registry.models),
            "in_flight": srv.pool.in_flight,
            "capacity": srv.pool.capacity,
            "chain_head": srv.chain.head,
            "twopc_sessions": srv.twopc.active if srv.twopc else 0,
            "limits": {
                "max_request_bytes": srv.settings.max_request_bytes,
                "max_context_bytes": srv.settings.max_context_bytes,
                "max_frames": srv.settings.max_frames,
            },
        }
    )


async def healthz(request: Request) -> Response:
    """Liveness for orchestration (same mutual TLS): 200 while the worker pool runs."""
    srv = _srv(request)
    ok = srv.pool.capacity > 0
    return JSONResponse({"status": "ok" if ok else "unhealthy"}, status_code=200 if ok else 503)


async def list_models(request: Request) -> Response:
    srv = _srv(request)
    hosp = _hospital(request)
    rules = srv.access.rules(hosp.cn)
    twopc = []
    if srv.twopc is not None:
        twopc = [
            {"name": m.name, "version": m.version, "program_sha256": srv.twopc.hashes.get(n)}
            for n, m in srv.twopc.models.items()
        ]
    return JSONResponse(
        {
            "models": [
                m for m in srv.registry.listing()
                if rules.permits(ModelRef(m["name"], m["version"]))
            ],
            # the two-party engine's models and their public program hashes
            "twopc": twopc,
        }
    )


async def manifest(request: Request) -> Response:
    srv = _srv(request)
    hosp = _hospital(request)
    served = _permitted(srv, hosp, request.path_params["name"])
    vm, prefix = served.vm, served.prefix
    return JSONResponse(
        {
            "manifest": vm.manifest.public().model_dump(mode="json"),
            "spec": vm.spec.to_json(),
            "prefix_sha256": hashlib.sha256(prefix).hexdigest() if prefix else None,
        }
    )


async def prefix(request: Request) -> Response:
    """The public prefix network (ONNX) of a split model; the hospital runs it in clear."""
    srv = _srv(request)
    hosp = _hospital(request)
    served = _permitted(srv, hosp, request.path_params["name"])
    vm, data = served.vm, served.prefix
    if data is None:
        raise ModelNotFoundError(
            f"model '{vm.manifest.name}' has no public prefix network", code="no_prefix"
        )
    return Response(data, media_type="application/octet-stream")


async def put_context(request: Request) -> Response:
    srv = _srv(request)
    hosp = _hospital(request)
    name = request.query_params.get("model")
    if not name:
        raise BadRequestError(
            "query parameter 'model' is required (the context is checked against it)"
        )
    served = _permitted(srv, hosp, name)
    _rate(srv, hosp)
    claimed = request.headers.get(H_CONTEXT)
    if claimed is not None:
        check_sha256(claimed, f"header {H_CONTEXT}")
    data = await _read_body(request, srv.settings.max_context_bytes, srv.settings.read_timeout)
    sha = hashlib.sha256(data).hexdigest()
    if claimed is not None and claimed != sha:
        raise BadRequestError(
            f"body SHA-256 {sha[:12]}.. differs from {H_CONTEXT} {claimed[:12]}.."
        )
    if not srv.store.has(hosp.namespace, sha):
        try:
            srv.access.check_context_quota(hosp.cn, srv.store.count(hosp.namespace))
        except AccessDeniedError as exc:
            srv.metrics.refused(srv.ids.label(hosp.cn), exc.code)
            raise
    # validated against the requested model even when already stored (it may be another's)
    (sha, created), _ = await srv.pool.submit(
        "upload", served.key, hosp.namespace, data, timeout=srv.settings.evaluate_timeout
    )
    log.info(
        "context %s.. (%d bytes) from hospital %s stored for model %s",
        sha[:12],
        len(data),
        hosp.short,
        served.key,
    )
    return JSONResponse({"sha256": sha, "created": created, "bytes": len(data)})


async def get_context(request: Request) -> Response:
    srv = _srv(request)
    hosp = _hospital(request)
    sha = check_sha256(request.path_params["sha"], "context hash in the path")
    size = srv.store.size(hosp.namespace, sha)
    if size is None:
        raise UnknownContextError("no such context for this hospital")
    if request.method == "HEAD":
        return Response(status_code=200, headers={"Content-Length": "0"})
    return JSONResponse({"sha256": sha, "bytes": size})


async def _evaluate_split(
    srv: VendorServer,
    model: str,
    hosp: _Hospital,
    ctx_sha: str,
    inputs: list[bytes],
    pool: AnyPool | None = None,
) -> tuple[list[bytes], float, float]:
    """Evaluate ``inputs``, split across idle workers when there are several.

    Ciphertexts are independent, so a batch is cut into contiguous parts evaluated in parallel
    (one pool slot each) and the outputs are concatenated in order. Returns
    ``(outputs, evaluate_seconds, queue_seconds)`` (the slowest part's figures).
    """
    pool = pool or srv.pool  # the pool of the registry the request was resolved in
    parts = max(1, min(pool.workers, len(inputs), pool.free_slots))
    bounds = [(len(inputs) * i // parts, len(inputs) * (i + 1) // parts) for i in range(parts)]
    results = await asyncio.gather(
        *(
            pool.submit(
                "evaluate",
                model,
                hosp.namespace,
                ctx_sha,
                inputs[a:b],
                timeout=srv.settings.evaluate_timeout,
            )
            for a, b in bounds
        ),
        return_exceptions=True,
    )
    outputs: list[bytes] = []
    eval_s = queue_s = 0.0
    for r in results:
        if isinstance(r, BaseException):
            raise r
        (part, part_eval), part_queue = r
        outputs.extend(part)
        eval_s, queue_s = max(eval_s, part_eval), max(queue_s, part_queue)
    return outputs, eval_s, queue_s


def _refuse_answered_job(srv: VendorServer, job: str, req_sha: str) -> None:
    """Refuse a job token the chain already holds, when its answer is no longer in memory.

    The chain indexes every token it holds (loaded on start), so this holds across restarts
    and beyond the in-memory replay cache: another request under the same token is
    ``job_token_reused``; the same request is too (the answer, ciphertexts of several MB, is
    not kept on disk and is not computed twice, so the chain keeps one entry per token): the
    hospital sends it again under a new token.
    """
    known = srv.chain.request_of(job)
    if known is None:
        return
    if known != req_sha:
        raise JobReusedError("this job token was already used for another request")
    raise JobReusedError(
        "this job token was already answered and the answer is no longer kept (vendor"
        " restarted or the answer aged out); send the request again with a new job token"
    )


async def infer(request: Request) -> Response:
    """``POST /v1/models/{ref}/infer``, counted per model, version and (keyed) hospital."""
    srv = _srv(request)
    hosp = _hospital(request)
    served = _permitted(srv, hosp, request.path_params["name"])
    pool = srv.pool  # the registry's pool at resolution time (a reload may swap it meanwhile)
    labels = (served.vm.manifest.name, served.vm.manifest.version, srv.ids.label(hosp.cn))
    t0 = time.monotonic()
    try:
        _rate(srv, hosp)
        response = await _infer(request, srv, hosp, served, pool)
    except InferenceError as exc:
        srv.metrics.model_error(*labels, exc.code, time.monotonic() - t0)
        raise
    srv.metrics.model_request(
        *labels,
        time.monotonic() - t0,
        int(request.headers.get("content-length") or 0),
        len(response.body),
    )
    return response


async def _infer(
    request: Request, srv: VendorServer, hosp: _Hospital, served: ServedModel, pool: AnyPool
) -> Response:
    vm = served.vm
    job = check_job_token(request.headers.get(H_JOB))
    ctx_sha = check_sha256(request.headers.get(H_CONTEXT), f"header {H_CONTEXT}")
    body = await _read_body(request, srv.settings.max_request_bytes, srv.settings.read_timeout)
    inputs = decode_frames(body, srv.settings.max_frames)
    if not inputs:
        raise BadRequestError("no ciphertexts in the request")
    req_sha = frames_sha256(body)
    seen = srv.recall(hosp.namespace, job)
    if seen is not None:
        if seen.request_sha256 != req_sha:
            raise JobReusedError("this job token was already used for another request")
        log.info("infer job=%s replayed (retry of an answered request)", job)
        return Response(seen.body, media_type=MEDIA_TYPE, headers=seen.headers)
    _refuse_answered_job(srv, job, req_sha)
    limit = int(getattr(vm.spec, "max_ciphertexts", len(inputs)))
    if len(inputs) > limit:
        raise CiphertextError(
            f"expected 1..{limit} ciphertexts, got {len(inputs)}", code="wrong_count"
        )
    srv.begin(hosp.namespace, job)  # 503 while the same token is being evaluated
    try:
        t_body = time.monotonic()
        outputs, eval_s, queue_s = await _evaluate_split(
            srv, served.key, hosp, ctx_sha, inputs, pool
        )
        out_body = encode_frames(outputs)
        resp_sha = frames_sha256(out_body)
        entry = await anyio.to_thread.run_sync(
            lambda: srv.chain.append(
                job=job,
                hospital=hosp.hid,
                model=vm.manifest.name,
                model_version=vm.manifest.version,
                context_sha256=ctx_sha,
                request_sha256=req_sha,
                response_sha256=resp_sha,
            )
        )
        server_s = time.monotonic() - t_body
        srv.metrics.observe_infer(len(body), len(out_body), eval_s, queue_s)
        log.info(
            "infer job=%s model=%s ctx=%s.. hospital=%s in=%d/%dB out=%d/%dB"
            " queue=%.3fs eval=%.3fs",
            job,
            served.key,
            ctx_sha[:12],
            hosp.short,
            len(inputs),
            len(body),
            len(outputs),
            len(out_body),
            queue_s,
            eval_s,
        )
        headers = {
            H_JOB: job,
            H_MODEL_VERSION: vm.manifest.version,
            H_CHAIN: entry["entry_hash"],
            H_EVALUATE_SECONDS: f"{eval_s:.6f}",
            H_QUEUE_SECONDS: f"{queue_s:.6f}",
            H_SERVER_SECONDS: f"{server_s:.6f}",
        }
        srv.remember(hosp.namespace, job, _Answered(req_sha, out_body, headers))
    finally:
        srv.end(hosp.namespace, job)
    return Response(out_body, media_type=MEDIA_TYPE, headers=headers)


async def open_twopc_session(request: Request) -> Response:
    """Open a two-party (Cheetah) session: start its worker, answer its link and session key.

    Body: ``{"version", "job", "program_sha256", "link_port"}``. The vendor's worker connects
    to ``link_port`` at the address this HTTPS request came from (never to an address the
    request names), and listens on the link address it answers. Refused before any worker
    starts: an unknown model or version, a malformed or reused job token, a program hash that
    is not the vendor's (409 ``program_mismatch``), all sessions busy (503).
    """
    srv = _srv(request)
    hosp = _hospital(request)
    name = request.path_params["name"]
    if srv.twopc is None:
        raise ModelNotFoundError(
            f"model '{name}' is not served with the two-party engine (none is)"
        )
    srv.twopc.model(name)
    raw = await _read_body(request, 64 * 1024, srv.settings.read_timeout)
    try:
        body = json.loads(raw)
        if not isinstance(body, dict):
            raise ValueError
    except ValueError:
        raise BadRequestError("the body must be a JSON object") from None
    job = check_job_token(body.get("job"))
    program_sha = check_sha256(body.get("program_sha256"), "program_sha256")
    version = body.get("version")
    port = body.get("link_port")
    if not isinstance(version, str) or not version:
        raise BadRequestError("version must be the model version (a string)")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise BadRequestError("link_port must be a TCP port (1..65535)")
    client = request.client
    if client is None:
        raise BadRequestError("the peer address of this connection is unknown")
    key = (hosp.namespace, job)
    if key in srv._twopc_jobs or srv.chain.request_of(job) is not None:
        raise JobReusedError("this job token was already used")
    srv._twopc_jobs.add(key)  # before the await: a concurrent request under it is refused
    try:
        answer = await srv.twopc.open(
            name, version, program_sha, f"{client.host}:{port}", hosp.short
        )
    except BaseException:
        srv._twopc_jobs.discard(key)  # refused or failed: the hospital may retry under it
        raise
    log.info(
        "2pc job=%s model=%s hospital=%s session=%s..", job, name, hosp.short, answer["session"][:8]
    )
    return JSONResponse(answer, status_code=201)


async def abort_twopc_session(request: Request) -> Response:
    """End a session whose hospital party failed (kills its worker now); 204, or 404 when this
    hospital has no such running session."""
    srv = _srv(request)
    hosp = _hospital(request)
    sid = request.path_params["sid"]
    if srv.twopc is None or not await srv.twopc.abort(sid, hosp.short):
        raise ModelNotFoundError("no such running two-party session", code="unknown_session")
    return Response(status_code=204)


def build_app(server: VendorServer) -> Starlette:
    """The ASGI app; the lifespan starts the worker pool and stops it on shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await server.pool.start()
        if server.twopc is not None:
            await server.twopc.start()
        models = sorted([*server.models, *(server.twopc.models if server.twopc else ())])
        log.info("vendor server ready: models %s", ", ".join(models))
        _install_reload(server)
        try:
            yield
        finally:
            if server.twopc is not None:
                await server.twopc.shutdown()
            server.pool.shutdown()

    p = API_PREFIX
    app = Starlette(
        routes=[
            Route(f"{p}/health", health, methods=["GET"]),
            Route(f"{p}/models", list_models, methods=["GET"]),
            Route(p + "/models/{name}/manifest", manifest, methods=["GET"]),
            Route(p + "/models/{name}/prefix", prefix, methods=["GET"]),
            Route(p + "/models/{name}/infer", infer, methods=["POST"]),
            Route(p + "/models/{name}/2pc/sessions", open_twopc_session, methods=["POST"]),
            Route(
                p + "/models/{name}/2pc/sessions/{sid}", abort_twopc_session, methods=["DELETE"]
            ),
            Route(f"{p}/contexts", put_context, methods=["PUT"]),
            Route(p + "/contexts/{sha}", get_context, methods=["GET", "HEAD"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        exception_handlers=dict(EXCEPTION_HANDLERS),
        lifespan=lifespan,
    )
    app.state.vendor = server
    app.add_middleware(VendorMetricsMiddleware, metrics=server.metrics)
    return app


def _install_reload(server: VendorServer) -> None:
    """SIGHUP reloads the registry (and access policy, CRL); ``vendor models ...`` sends it.

    Writes ``vendor.pid`` and a first ``registry-status.json`` for the admin commands."""
    import signal

    from secure_infer.vendor._admin import write_pid, write_status

    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[Any]] = set()

    def on_hup() -> None:
        log.info("SIGHUP: reloading models, access policy and CRL")
        task = loop.create_task(server.reload())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    write_status(server.settings.state_dir, server.status())
    write_pid(server.settings.state_dir)


def settings_from_config(path: Path) -> ServerSettings:
    """The :class:`ServerSettings` of a vendor config file (serve and SIGHUP reload alike)."""
    from secure_infer.vendor._access import HospitalRules
    from secure_infer.vendor.config import load_vendor_config

    cfg = load_vendor_config(path)
    lim, reg = cfg.limits, cfg.registry
    access = None
    if cfg.access is not None:

        def rules(sec: Any) -> HospitalRules:
            return HospitalRules(tuple(sec.models), sec.max_contexts, sec.requests_per_minute)

        access = AccessPolicy(
            {cn: rules(sec) for cn, sec in cfg.access.hospitals.items()},
            None if cfg.access.default is None else rules(cfg.access.default),
            enforced=True,
        )
    return ServerSettings(
        manifests=cfg.manifest_paths(),
        state_dir=cfg.state_dir,
        max_request_bytes=lim.max_request_bytes,
        max_context_bytes=lim.max_context_bytes,
        max_frames=lim.max_frames,
        workers=lim.workers,
        queue_size=lim.queue_size,
        read_timeout=lim.read_timeout_seconds,
        evaluate_timeout=lim.evaluate_timeout_seconds,
        context_cache=lim.context_cache,
        pins=tuple(sorted(reg.current.items())),
        retired=reg.retired,
        check=reg.check,
        check_tolerance=reg.check_tolerance,
        access=access,
        crl=cfg.tls.crl,
        client_ca=cfg.tls.client_ca,
        chain_anchor=cfg.chain_anchor,
        config_path=Path(path),
    )


# ------------------------------------------------------------------------ uvicorn glue
def _mtls_protocol_class() -> type[Any]:
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class _MtlsH11Protocol(H11Protocol):
        """h11 protocol that exposes the verified peer certificate as the ASGI TLS extension."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            sslobj = transport.get_extra_info("ssl_object")
            der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
            tls: dict[str, Any] = {
                "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
                "client_cert_error": None,
                "tls_version": None,
                "cipher_suite": None,
            }
            if sslobj is not None:
                cipher = sslobj.cipher()
                tls["cipher_suite"] = cipher[0] if cipher else None
                tls["tls_version"] = sslobj.version()
            inner: ASGIApp = self.app

            async def app(scope: Scope, receive: Any, send: Any) -> None:
                ext = dict(scope.get("extensions") or {})
                ext["tls"] = tls
                scope["extensions"] = ext
                await inner(scope, receive, send)

            self.app = app

    return _MtlsH11Protocol


def serve(
    settings: ServerSettings,
    tls: TlsFiles,
    host: str,
    port: int,
    log_level: str = "info",
    max_connections: int = 64,
) -> None:
    """Run the vendor server until SIGTERM/SIGINT."""
    import uvicorn

    ssl_ctx = build_ssl_context(tls)  # fail fast on unreadable TLS files, before compiling
    server = VendorServer(settings, tls)
    app = build_app(server)
    # TLS is done by our protocol wrapper, not by the loop (uvicorn's config.ssl stays None),
    # so that a refused handshake is logged and counted (see _handshake)
    refusals = TlsRefusals(server.metrics.tls_refusal)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=tls_protocol_factory(_mtls_protocol_class(), ssl_ctx, refusals),
        ws="none",
        lifespan="on",
        log_level=log_level.lower(),
        access_log=False,
        limit_concurrency=max_connections,
        timeout_keep_alive=15,
        timeout_graceful_shutdown=10,
        server_header=False,
    )

    class _Server(uvicorn.Server):
        def _log_started_message(self, listeners: Any) -> None:
            # uvicorn would say http://: the loop does no TLS, our protocol wrapper does
            for sock in listeners:
                addr = sock.getsockname()
                log.info("vendor server listening on https://%s:%d (mutual TLS)", *addr[:2])

    _Server(config).run()
