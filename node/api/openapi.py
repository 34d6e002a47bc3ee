"""The OpenAPI 3.1 description of ``/api/v1`` (served at ``/api/v1/openapi.json``).

Written out rather than generated: Starlette has no schema generator without extra packages,
and the API is small. ``tests/node/test_api.py`` validates it (openapi-spec-validator) and
checks that it names exactly the routes :func:`node.api.routes.api_routes` serves.
"""

from __future__ import annotations

from typing import Any

from node import __version__

__all__ = ["schema"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(s: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": s}}}


def _get(summary: str, s: dict[str, Any], params: list[dict[str, Any]] | None = None,
         not_found: bool = False) -> dict[str, Any]:  # fmt: skip
    responses: dict[str, Any] = {"200": _json(s), "401": _ref_resp("Error")}
    if not_found:
        responses["404"] = _ref_resp("Error")
    return {"get": {"summary": summary, "parameters": params or [], "responses": responses}}


def _post(summary: str, params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"post": {
        "summary": summary,
        "parameters": [*(params or []), {"name": "X-CSRF-Token", "in": "header",
                                         "required": True, "schema": {"type": "string"}}],
        "responses": {"200": _json(_ref("ActionResult")), "401": _ref_resp("Error"),
                      "403": _ref_resp("Error"), "404": _ref_resp("Error"),
                      "409": _ref_resp("Error")},
    }}  # fmt: skip


def _ref_resp(name: str) -> dict[str, Any]:
    return _json(_ref(name), "error")


def _path(name: str, type_: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": type_}}


def _query(name: str, type_: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": type_}}


_STR = {"type": "string"}
_JOB = {
    "type": "object",
    "required": ["id", "study", "state", "attempts", "error", "advice"],
    "properties": {
        "id": {"type": "integer"}, "study": {**_STR, "description": "keyed pseudonym"},
        "state": {"enum": ["claiming", "queued", "running", "done", "failed"]},
        "attempts": {"type": "integer"}, "max_attempts": {"type": "integer"},
        "instances": {"type": "integer"}, "created_at": _STR, "updated_at": _STR,
        "next_attempt_at": _STR,
        "error": {**_STR, "description": "what failed (no PHI)"},
        "advice": {**_STR, "description": "what to do about it"},
    },
}  # fmt: skip
_PEER = {
    "type": "object",
    "properties": {
        "kind": {"enum": ["destination", "vendor"]}, "name": _STR, "address": _STR,
        "paused": {"type": "boolean"}, "reachable": {"type": ["boolean", "null"]},
        "reason": _STR, "checked_at": _STR,
    },
}  # fmt: skip


def schema() -> dict[str, Any]:
    job_id = [_path("job_id", "integer")]
    study = [_path("study")]
    name = [_path("name")]
    paths: dict[str, Any] = {
        "/api/v1/openapi.json": {"get": {"summary": "this document",
                                         "responses": {"200": _json({"type": "object"})}}},
        "/api/v1/dashboard": _get("throughput, queue depth, failures, health",
                                  _ref("Dashboard")),
        "/api/v1/health": _get("the /healthz report", _ref("Health")),
        "/api/v1/jobs": _get("jobs, newest first", {"type": "array", "items": _ref("Job")},
                             [_query("state"), _query("study"), _query("limit", "integer")]),
        "/api/v1/jobs/{job_id}": _get("a job with its steps", _ref("JobDetail"), job_id, True),
        "/api/v1/jobs/{job_id}/retry": _post("requeue a failed job", job_id),
        "/api/v1/jobs/{job_id}/cancel": _post("cancel a queued job (to quarantine)", job_id),
        "/api/v1/jobs/requeue-failed": _post("requeue every failed job"),
        "/api/v1/studies": _get("studies in progress with their completion timers",
                                {"type": "array", "items": _ref("StudyInProgress")}),
        "/api/v1/studies/{study}/complete": _post("force-complete a study now", study),
        "/api/v1/studies/{study}/rules": _get("rules dry-run on a spooled study",
                                              _ref("RulesDryRun"), study, True),
        "/api/v1/quarantine": _get("failed jobs, files in quarantine",
                                   {"type": "array", "items": _ref("Job")}),
        "/api/v1/destinations": _get("destinations with reachability",
                                     {"type": "array", "items": _ref("Peer")}),
        "/api/v1/vendors": _get("vendors with reachability",
                                {"type": "array", "items": _ref("Peer")}),
        "/api/v1/audit/verify": _get("verify the audit ledger", _ref("AuditVerify")),
        "/api/v1/audit/export": {"get": {
            "summary": "audit entries since a time (JSON lines)",
            "parameters": [_query("since", "number")],
            "responses": {"200": {"description": "OK", "content": {
                "application/x-ndjson": {"schema": _STR}}}, "401": _ref_resp("Error")},
        }},
    }  # fmt: skip
    for kind in ("destination", "vendor"):
        paths[f"/api/v1/{kind}s/{{name}}/pause"] = _post(f"pause a {kind}", name)
        paths[f"/api/v1/{kind}s/{{name}}/resume"] = _post(f"resume a {kind}", name)
    return {
        "openapi": "3.1.0",
        "info": {"title": "BlindRead node API", "version": __version__,
                 "description": "Admin operations of a BlindRead hospital node (docs/console.md)."
                 " Studies appear only as keyed pseudonyms."},
        "components": {
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic"},
                                "session": {"type": "apiKey", "in": "cookie",
                                            "name": "blindread_session"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "detail"],
                          "properties": {"error": _STR, "detail": _STR}},
                "ActionResult": {"type": "object", "required": ["ok", "message"],
                                 "properties": {"ok": {"type": "boolean"}, "message": _STR}},
                "Job": _JOB,
                "JobDetail": {"allOf": [_JOB, {"type": "object", "properties": {
                    "steps": {"type": "array", "items": {"type": "object", "properties": {
                        "step": _STR, "finished_at": _STR, "seconds": {"type": "number"}}}},
                    "running_seconds": {"type": ["number", "null"]}}}]},
                "StudyInProgress": {"type": "object", "properties": {
                    "study": _STR, "first_received_at": _STR, "last_received_at": _STR,
                    "completes_at": _STR, "completes_in_seconds": {"type": "number"}}},
                "Peer": _PEER,
                "Health": {"type": "object", "required": ["status", "checks"], "properties": {
                    "status": {"enum": ["ok", "degraded", "unhealthy"]},
                    "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
                    "reasons": {"type": "object", "additionalProperties": _STR}}},
                "Dashboard": {"type": "object", "properties": {
                    "jobs": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "queue_depth": {"type": "integer"}, "done_last_24h": {"type": "integer"},
                    "failed": {"type": "integer"}, "studies_in_progress": {"type": "integer"},
                    "instances_received": {"type": "number"},
                    "mean_total_seconds": {"type": ["number", "null"]},
                    "health": _ref("Health"),
                    "peers": {"type": "array", "items": _ref("Peer")}}},
                "RulesDryRun": {"type": "object", "properties": {
                    "study": _STR, "instances": {"type": "integer"},
                    "matches": {"type": "array", "items": {"type": "object", "properties": {
                        "rule": _STR, "index": {"type": "integer"}, "action": _STR}}}}},
                "AuditVerify": {"type": "object", "properties": {
                    "ok": {"type": ["boolean", "null"]}, "message": _STR,
                    "entries": {"type": "integer"}}},
            },
        },
        "security": [{"basic": []}, {"session": []}],
        "paths": paths,
    }  # fmt: skip
