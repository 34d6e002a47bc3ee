"""The web console, ``/console``: server-rendered pages over :class:`node.api.Operations`.

No script and no build step: Jinja2 templates (:mod:`node.console.templates`), forms that POST
with the session's CSRF token, a page refresh every few seconds on the dashboard and job pages.
Sessions and users: :mod:`node.api.auth`; a viewer sees everything, an operator also acts.
Cookies are ``HttpOnly``, ``SameSite=Strict`` and, behind TLS, ``Secure``; every page is sent
with a Content-Security-Policy that forbids scripts and framing.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from node.api.guard import COOKIE, Caller, Guard
from node.api.ops import ActionResult, Operations
from node.console.templates import env
from node.jobs import STATES

__all__ = ["console_routes"]

_LOGIN_COOKIE = "blindread_login_csrf"
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action"
    " 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

Page = Callable[[Request, Caller], Response]


async def _form(request: Request) -> dict[str, str]:
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


def _html(template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    return HTMLResponse(env.get_template(template).render(**ctx), status_code=status,
                        headers=_HEADERS)  # fmt: skip


def _back(path: str, message: str) -> RedirectResponse:
    return RedirectResponse(f"{path}?msg={quote(message)}", status_code=303)


def console_routes(ops: Operations, guard: Guard, *, secure_cookies: bool) -> list[Route]:
    def page(fn: Page) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            caller = guard.caller(request)
            if caller is None or caller.csrf is None:  # the console needs a session
                return RedirectResponse("/console/login", status_code=303)
            return await run_in_threadpool(fn, request, caller)

        return endpoint

    def action(
        do: Callable[[Request, Caller], ActionResult], back: Callable[[Request], str]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            caller = guard.caller(request)
            if caller is None or caller.csrf is None:
                return RedirectResponse("/console/login", status_code=303)
            form = await _form(request)
            if not guard.csrf_ok(caller, request, form.get("csrf", "")):
                return PlainTextResponse("CSRF token missing or wrong: reload the page",
                                         status_code=403)  # fmt: skip
            if not caller.operator:
                return PlainTextResponse("this action needs the operator role", status_code=403)
            result = await run_in_threadpool(do, request, caller)
            return _back(back(request), result.message)

        return endpoint

    async def login_form(request: Request) -> Response:
        token = secrets.token_urlsafe(24)
        resp = _html("login", login_csrf=token, me=None, msg=request.query_params.get("msg"))
        resp.set_cookie(_LOGIN_COOKIE, token, httponly=True, samesite="strict",
                        secure=secure_cookies, path="/console/login")  # fmt: skip
        return resp

    async def login(request: Request) -> Response:
        form = await _form(request)
        want = request.cookies.get(_LOGIN_COOKIE, "")
        if not want or not secrets.compare_digest(want, form.get("csrf", "")):
            return _back("/console/login", "The login form expired: try again.")
        name = form.get("user", "")
        user = await run_in_threadpool(guard.login, name, form.get("password", ""))
        if user is None:
            if guard.throttle.locked(name):
                return _back("/console/login", "Too many wrong passwords: wait 5 minutes.")
            return _back("/console/login", "Wrong user name or password.")
        session = guard.sessions.create(user)
        resp = RedirectResponse("/console/", status_code=303)
        resp.set_cookie(COOKIE, session.id, max_age=int(guard.sessions.lifetime), httponly=True,
                        samesite="strict", secure=secure_cookies, path="/")  # fmt: skip
        resp.delete_cookie(_LOGIN_COOKIE, path="/console/login")
        return resp

    async def logout(request: Request) -> Response:
        caller = guard.caller(request)
        form = await _form(request)
        if caller is not None and guard.csrf_ok(caller, request, form.get("csrf", "")):
            guard.sessions.drop(request.cookies.get(COOKIE))
        resp = _back("/console/login", "Logged out.")
        resp.delete_cookie(COOKIE, path="/")
        return resp

    def msg(request: Request) -> str | None:
        return request.query_params.get("msg")

    def dashboard(request: Request, caller: Caller) -> Response:
        return _html("dashboard", me=caller, msg=msg(request), refresh=3,
                     d=ops.dashboard(), studies=ops.studies_in_progress(),
                     jobs=ops.jobs(limit=10))  # fmt: skip

    def jobs(request: Request, caller: Caller) -> Response:
        state = request.query_params.get("state") or None
        study = request.query_params.get("study", "")
        if state is not None and state not in STATES:
            state = None
        return _html("jobs", me=caller, msg=msg(request), states=STATES, state=state,
                     study=study, jobs=ops.jobs(state, study or None))  # fmt: skip

    def job(request: Request, caller: Caller) -> Response:
        found = ops.job(int(request.path_params["job_id"]))
        if found is None:
            return _html("jobs", 404, me=caller, msg="no such job", states=STATES,
                         state=None, study="", jobs=[])  # fmt: skip
        refresh = 3 if found["state"] in ("queued", "running") else None
        return _html("job", me=caller, msg=msg(request), j=found, refresh=refresh)

    def quarantine(request: Request, caller: Caller) -> Response:
        return _html("quarantine", me=caller, msg=msg(request), jobs=ops.quarantine())

    def audit(request: Request, caller: Caller) -> Response:
        return _html("audit", me=caller, msg=msg(request), v=ops.audit_verify())

    def audit_export(request: Request, caller: Caller) -> Response:
        hours = float(request.query_params.get("hours", "24") or 24)
        text = ops.audit_export(time.time() - hours * 3600)
        return PlainTextResponse(text, media_type="application/x-ndjson", headers={
            **_HEADERS, "Content-Disposition": 'attachment; filename="audit.jsonl"'})  # fmt: skip

    def rules(request: Request, caller: Caller) -> Response:
        study = request.query_params.get("study", "")
        candidates = list(dict.fromkeys(
            [s["study"] for s in ops.studies_in_progress()]
            + [j["study"] for j in ops.jobs(limit=50)]
        ))  # fmt: skip
        result = ops.rules_dry_run(study) if study else None
        return _html("rules", me=caller, msg=msg(request), study=study,
                     candidates=candidates, result=result)  # fmt: skip

    def job_back(request: Request) -> str:
        return f"/console/jobs/{request.path_params['job_id']}"

    def home(request: Request) -> str:
        return "/console/"

    routes = [
        Route("/console/login", login_form, methods=["GET"]),
        Route("/console/login", login, methods=["POST"]),
        Route("/console/logout", logout, methods=["POST"]),
        Route("/console/", page(dashboard), methods=["GET"]),
        Route("/console/jobs", page(jobs), methods=["GET"]),
        Route("/console/jobs/{job_id:int}", page(job), methods=["GET"]),
        Route("/console/quarantine", page(quarantine), methods=["GET"]),
        Route("/console/audit", page(audit), methods=["GET"]),
        Route("/console/audit/export", page(audit_export), methods=["GET"]),
        Route("/console/rules", page(rules), methods=["GET"]),
        Route("/console/jobs/{job_id:int}/retry",
              action(lambda r, c: ops.retry(int(r.path_params["job_id"]), c.user), job_back),
              methods=["POST"]),
        Route("/console/jobs/{job_id:int}/cancel",
              action(lambda r, c: ops.cancel(int(r.path_params["job_id"]), c.user), job_back),
              methods=["POST"]),
        Route("/console/jobs/requeue-failed",
              action(lambda r, c: ops.requeue_failed(c.user), lambda r: "/console/quarantine"),
              methods=["POST"]),
        Route("/console/studies/{study}/complete",
              action(lambda r, c: ops.force_complete(r.path_params["study"], c.user), home),
              methods=["POST"]),
    ]  # fmt: skip
    for kind in ("destination", "vendor"):
        for verb in ("pause", "resume"):
            def do(r: Request, c: Caller, kind: str = kind, paused: bool = verb == "pause"
                   ) -> ActionResult:  # fmt: skip
                return ops.set_paused(kind, r.path_params["name"], paused, c.user)

            routes.append(Route(f"/console/{kind}s/{{name}}/{verb}", action(do, home),
                                methods=["POST"]))  # fmt: skip
    return routes
