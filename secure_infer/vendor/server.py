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
is ever logged. Each answered inference is appended to the vendor's hash chain
(:mod:`secure_infer.chain`) before the response leaves.

"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
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
from secure_infer.vendor._handshake import TlsRefusals, tls_protocol_factory
from secure_infer.vendor._http import EXCEPTION_HANDLERS
from secure_infer.vendor._metrics import VendorMetrics, VendorMetricsMiddleware, metrics_endpoint
from secure_infer.vendor._pool import EvalPool
from secure_infer.vendor._ray_pool import RayEvalPool, RaySettings
from secure_infer.vendor._store import ContextStore, hospital_namespace
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
    BadRequestError,
    ServerBusyError,
    ServerTimeoutError,
    TooLargeError,
    UnauthenticatedError,
    check_job_token,
    check_sha256,
)

__all__ = ["ServerSettings", "TlsFiles", "VendorServer", "build_app", "build_ssl_context", "serve"]

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
    backend: str = "local"
    """``local`` (process pool on this machine) or ``ray`` (actors on a cluster)."""
    ray: RaySettings | None = None
    contexts_dir: Path | None = None
    """Context store shared by several front ends; default ``<state_dir>/contexts``."""


def _make_pool(settings: ServerSettings, store_root: Path) -> EvalPool | RayEvalPool:
    """The evaluation backend the config asks for (Ray is imported only when it starts)."""
    args = (
        settings.manifests,
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

    def __init__(self, settings: ServerSettings) -> None:
        from secure_infer.vendor.model import VendorModel

        self.settings = settings
        self.models: dict[str, Any] = {}
        self.prefixes: dict[str, bytes] = {}
        for path in settings.manifests:
            vm = VendorModel.load(path)
            if vm.manifest.name in self.models:
                raise ValueError(f"model '{vm.manifest.name}' is listed twice ({path})")
            self.models[vm.manifest.name] = vm
            if vm.manifest.prefix_onnx:  # public: the hospital runs it in clear
                self.prefixes[vm.manifest.name] = (
                    Path(path).parent / vm.manifest.prefix_onnx
                ).read_bytes()
        settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.store = ContextStore(settings.contexts_dir or settings.state_dir / "contexts")
        self.chain = HashChain(settings.state_dir / "chain.jsonl")
        self.metrics = VendorMetrics()
        self._answered: OrderedDict[tuple[str, str], _Answered] = OrderedDict()
        # job tokens being evaluated now: a client's retry of a slow request must not be
        # evaluated (and chained) a second time while the first is still running
        self._in_flight: set[tuple[str, str]] = set()
        self.pool = _make_pool(settings, self.store.root)

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

    def model(self, name: str) -> Any:
        try:
            return self.models[name]
        except KeyError:
            raise ModelNotFoundError(
                f"model '{name}' is not served; known: {', '.join(sorted(self.models))}"
            ) from None


# ------------------------------------------------------------------------ helpers
def _hospital(request: Request) -> _Hospital:
    tls = request.scope.get("extensions", {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        raise UnauthenticatedError("no verified client certificate")
    der = ssl.PEM_cert_to_DER_cert(chain[0])
    return _Hospital(cert_common_name(der), cert_fingerprint(der))


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
            "models": len(srv.models),
            "in_flight": srv.pool.in_flight,
            "capacity": srv.pool.capacity,
            "chain_head": srv.chain.head,
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
    _hospital(request)
    return JSONResponse(
        {
            "models": [
                {"name": m.manifest.name, "version": m.manifest.version}
                for m in srv.models.values()
            ]
        }
    )


async def manifest(request: Request) -> Response:
    srv = _srv(request)
    _hospital(request)
    vm = srv.model(request.path_params["name"])
    prefix = srv.prefixes.get(vm.manifest.name)
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
    _hospital(request)
    vm = srv.model(request.path_params["name"])
    data = srv.prefixes.get(vm.manifest.name)
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
    srv.model(name)
    claimed = request.headers.get(H_CONTEXT)
    if claimed is not None:
        check_sha256(claimed, f"header {H_CONTEXT}")
    data = await _read_body(request, srv.settings.max_context_bytes, srv.settings.read_timeout)
    sha = hashlib.sha256(data).hexdigest()
    if claimed is not None and claimed != sha:
        raise BadRequestError(
            f"body SHA-256 {sha[:12]}.. differs from {H_CONTEXT} {claimed[:12]}.."
        )
    # validated against the requested model even when already stored (it may be another's)
    (sha, created), _ = await srv.pool.submit(
        "upload", name, hosp.namespace, data, timeout=srv.settings.evaluate_timeout
    )
    log.info(
        "context %s.. (%d bytes) from hospital %s stored for model %s",
        sha[:12],
        len(data),
        hosp.short,
        name,
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
    srv: VendorServer, model: str, hosp: _Hospital, ctx_sha: str, inputs: list[bytes]
) -> tuple[list[bytes], float, float]:
    """Evaluate ``inputs``, split across idle workers when there are several.

    Ciphertexts are independent, so a batch is cut into contiguous parts evaluated in parallel
    (one pool slot each) and the outputs are concatenated in order. Returns
    ``(outputs, evaluate_seconds, queue_seconds)`` (the slowest part's figures).
    """
    parts = max(1, min(srv.pool.workers, len(inputs), srv.pool.free_slots))
    bounds = [(len(inputs) * i // parts, len(inputs) * (i + 1) // parts) for i in range(parts)]
    results = await asyncio.gather(
        *(
            srv.pool.submit(
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
    srv = _srv(request)
    hosp = _hospital(request)
    vm = srv.model(request.path_params["name"])
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
            srv, vm.manifest.name, hosp, ctx_sha, inputs
        )
        out_body = encode_frames(outputs)
        resp_sha = frames_sha256(out_body)
        entry = await anyio.to_thread.run_sync(
            lambda: srv.chain.append(
                job=job,
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
            vm.manifest.name,
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


def build_app(server: VendorServer) -> Starlette:
    """The ASGI app; the lifespan starts the worker pool and stops it on shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await server.pool.start()
        log.info("vendor server ready: models %s", ", ".join(sorted(server.models)))
        try:
            yield
        finally:
            server.pool.shutdown()

    p = API_PREFIX
    app = Starlette(
        routes=[
            Route(f"{p}/health", health, methods=["GET"]),
            Route(f"{p}/models", list_models, methods=["GET"]),
            Route(p + "/models/{name}/manifest", manifest, methods=["GET"]),
            Route(p + "/models/{name}/prefix", prefix, methods=["GET"]),
            Route(p + "/models/{name}/infer", infer, methods=["POST"]),
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
    server = VendorServer(settings)
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
