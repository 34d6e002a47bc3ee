"""The REST API, ``/api/v1``: JSON over :class:`~node.api.ops.Operations`.

Reading needs a ``viewer`` or ``operator``; acting (POST) an ``operator`` and the CSRF rule
of :mod:`node.api.guard`. Errors are ``{"error": code, "detail": text}`` with 400 (bad
parameter), 401 (no or wrong credentials), 403 (role or CSRF), 404, 409 (the job's state does
not allow it). The schema (:mod:`node.api.openapi`) is served at ``/api/v1/openapi.json``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from node.api.guard import Caller, Guard
from node.api.openapi import schema
from node.api.ops import ActionResult, Operations

__all__ = ["PREFIX", "api_routes"]

PREFIX = "/api/v1"

Handler = Callable[[Request, Caller], Response]


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


def _result(r: ActionResult) -> JSONResponse:
    if r.ok:
        return JSONResponse({"ok": True, "message": r.message})
    code = {404: "not_found", 409: "conflict"}.get(r.status, "failed")
    return _error(r.status, code, r.message)


def api_routes(ops: Operations, guard: Guard) -> list[Route]:
    def guarded(fn: Handler, *, act: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            caller = guard.caller(request)
            if caller is None:
                return JSONResponse(
                    {"error": "unauthorized", "detail": "log in (console session or HTTP Basic)"},
                    status_code=401, headers={"WWW-Authenticate": 'Basic realm="blindread"'},
                )
            if act and not caller.operator:
                return _error(403, "forbidden", "this action needs the operator role")
            if act and not guard.csrf_ok(caller, request):
                return _error(403, "csrf", "missing or wrong X-CSRF-Token header")
            from starlette.concurrency import run_in_threadpool

            try:
                return await run_in_threadpool(fn, request, caller)
            except ValueError as exc:
                return _error(400, "bad_request", str(exc))

        return endpoint

    def jobs(request: Request, caller: Caller) -> Response:
        q = request.query_params
        limit = int(q.get("limit", "200"))
        if not 1 <= limit <= 1000:
            raise ValueError("limit must be 1-1000")
        return JSONResponse(ops.jobs(q.get("state") or None, q.get("study") or None, limit))

    def job(request: Request, caller: Caller) -> Response:
        found = ops.job(int(request.path_params["job_id"]))
        if found is None:
            return _error(404, "not_found", "no such job")
        return JSONResponse(found)

    def job_action(name: str) -> Handler:
        def act(request: Request, caller: Caller) -> Response:
            job_id = int(request.path_params["job_id"])
            return _result(getattr(ops, name)(job_id, caller.user))

        return act

    def peer_action(kind: str, paused: bool) -> Handler:
        def act(request: Request, caller: Caller) -> Response:
            return _result(ops.set_paused(kind, request.path_params["name"], paused, caller.user))

        return act

    def peers(kind: str) -> Handler:
        def read(request: Request, caller: Caller) -> Response:
            return JSONResponse([p for p in ops.peers() if p["kind"] == kind])

        return read

    def rules(request: Request, caller: Caller) -> Response:
        found = ops.rules_dry_run(request.path_params["study"])
        if found is None:
            return _error(404, "not_found", "no spooled or job files for this study")
        return JSONResponse(found)

    def export(request: Request, caller: Caller) -> Response:
        since = float(request.query_params.get("since", str(time.time() - 86400)))
        return PlainTextResponse(ops.audit_export(since), media_type="application/x-ndjson")

    async def openapi(request: Request) -> Response:
        return JSONResponse(schema())

    def simple(fn: Callable[[], Any]) -> Handler:
        return lambda request, caller: JSONResponse(fn())

    p = PREFIX
    return [
        Route(f"{p}/openapi.json", openapi, methods=["GET"]),
        Route(f"{p}/dashboard", guarded(simple(ops.dashboard)), methods=["GET"]),
        Route(f"{p}/health", guarded(simple(ops.health)), methods=["GET"]),
        Route(f"{p}/jobs", guarded(jobs), methods=["GET"]),
        Route(f"{p}/jobs/requeue-failed",
              guarded(lambda r, c: _result(ops.requeue_failed(c.user)), act=True),
              methods=["POST"]),
        Route(p + "/jobs/{job_id:int}", guarded(job), methods=["GET"]),
        Route(p + "/jobs/{job_id:int}/retry", guarded(job_action("retry"), act=True),
              methods=["POST"]),
        Route(p + "/jobs/{job_id:int}/cancel", guarded(job_action("cancel"), act=True),
              methods=["POST"]),
        Route(f"{p}/studies", guarded(simple(ops.studies_in_progress)), methods=["GET"]),
        Route(p + "/studies/{study}/complete",
              guarded(lambda r, c: _result(ops.force_complete(r.path_params["study"], c.user)),
                      act=True), methods=["POST"]),
        Route(p + "/studies/{study}/rules", guarded(rules), methods=["GET"]),
        Route(f"{p}/quarantine", guarded(simple(ops.quarantine)), methods=["GET"]),
        Route(f"{p}/destinations", guarded(peers("destination")), methods=["GET"]),
        Route(f"{p}/vendors", guarded(peers("vendor")), methods=["GET"]),
        *[
            Route(p + f"/{kind}s/{{name}}/{verb}", guarded(peer_action(kind, verb == "pause"),
                                                          act=True), methods=["POST"])
            for kind in ("destination", "vendor") for verb in ("pause", "resume")
        ],
        Route(f"{p}/audit/verify", guarded(simple(ops.audit_verify)), methods=["GET"]),
        Route(f"{p}/audit/export", guarded(export), methods=["GET"]),
    ]
