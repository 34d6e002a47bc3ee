"""Issue #14: the REST API (``/api/v1``): roles, CSRF, jobs with readable errors, actions, and
an OpenAPI document that validates and names exactly the routes served."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate
from starlette.routing import Route
from starlette.testclient import TestClient

from node.api.auth import hash_password, verify_password
from node.app import build_service, http_routes, pauses_of
from node.jobs import Job, JobError
from node.metrics import MetricsServer, NodeMetrics
from node.service import NodeService
from scp import SenderSettings
from tests.support.nodeutil import node_config
from tests.support.synthetic import synthetic_ct_study

PW = {"admin": "correct horse battery", "watcher": "viewer password 1"}


def _basic(user: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{PW[user]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _spool_study(svc: NodeService, uid_seed: int = 0) -> str:
    ds = synthetic_ct_study(1, seed=uid_seed)[0]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    svc.spool.store(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), buf.getvalue())
    key = svc.spool.study_key(str(ds.StudyInstanceUID))
    svc.monitor.touch(key)
    return key


@pytest.fixture()
def api(tmp_path: Path) -> Any:
    cfg = node_config(
        tmp_path,
        metrics={"enabled": True},
        console={"enabled": True, "users": [
            {"name": "admin", "password_hash": hash_password(PW["admin"]), "role": "operator"},
            {"name": "watcher", "password_hash": hash_password(PW["watcher"])},
        ]},
        destinations={"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 1}},
        sender={"max_attempts": 2, "initial_backoff_seconds": 0.01},
    )  # fmt: skip
    outcome: dict[str, Exception | None] = {"raise": JobError("destination pacs refused")}

    def action(job: Job) -> None:
        err = outcome["raise"]
        if err is not None:
            raise err

    metrics = NodeMetrics()
    svc = build_service(cfg, action, metrics=metrics)
    svc.runner.retry = SenderSettings(max_attempts=1)
    routes = http_routes(cfg, svc, metrics, pauses_of(cfg))
    server = MetricsServer(metrics.registry, health=svc.health, routes=routes)
    with TestClient(server.app) as client:
        yield client, svc, outcome, routes
    svc.store.close()


def test_passwords_are_scrypt_hashes() -> None:
    stored = hash_password("s3cret password")
    assert stored.startswith("scrypt$16384$8$1$") and "s3cret" not in stored
    assert verify_password("s3cret password", stored)
    assert not verify_password("s3cret passwore", stored)
    assert not verify_password("x", "scrypt$garbage")


def test_roles_and_csrf(api: Any) -> None:
    client, _, _, _ = api
    assert client.get("/api/v1/jobs").status_code == 401
    bad = {"Authorization": "Basic " + base64.b64encode(b"admin:wrong").decode()}
    assert client.get("/api/v1/jobs", headers=bad).status_code == 401
    assert client.get("/api/v1/jobs", headers=_basic("watcher")).json() == []
    viewer = {**_basic("watcher"), "X-CSRF-Token": "1"}
    r = client.post("/api/v1/jobs/requeue-failed", headers=viewer)
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    r = client.post("/api/v1/jobs/requeue-failed", headers=_basic("admin"))
    assert r.status_code == 403 and r.json()["error"] == "csrf"
    r = client.post("/api/v1/jobs/requeue-failed", headers={**_basic("admin"), "X-CSRF-Token": "1"})
    assert r.status_code == 200 and r.json()["ok"]
    assert client.get("/api/v1/jobs?state=nope", headers=_basic("admin")).status_code == 400


def test_job_failure_is_readable_and_actions_work(api: Any) -> None:
    client, svc, outcome, _ = api
    op = {**_basic("admin"), "X-CSRF-Token": "x"}
    key = _spool_study(svc)
    studies = client.get("/api/v1/studies", headers=op).json()
    assert [s["study"] for s in studies] == [key] and studies[0]["completes_in_seconds"] > 0
    dry = client.get(f"/api/v1/studies/{key}/rules", headers=op).json()
    assert dry == {"study": key, "instances": 1, "matches": []}
    assert client.post(f"/api/v1/studies/{key}/complete", headers=op).json()["ok"]
    assert client.post(f"/api/v1/studies/{key}/complete", headers=op).status_code == 404
    assert client.get("/api/v1/studies", headers=op).json() == []
    (job,) = svc.store.list()
    svc.runner.run_once()
    shown = client.get(f"/api/v1/jobs/{job.id}", headers=op).json()
    assert shown["state"] == "failed" and shown["study"] == key
    assert shown["error"] == "JobError: destination pacs refused"
    assert "then retry the job" in shown["advice"]
    assert [j["id"] for j in client.get("/api/v1/quarantine", headers=op).json()] == [job.id]
    # retry: queued again with its files out of quarantine; a second retry conflicts
    assert client.post(f"/api/v1/jobs/{job.id}/retry", headers=op).json()["ok"]
    assert client.post(f"/api/v1/jobs/{job.id}/retry", headers=op).status_code == 409
    assert (svc.store.get(job.id) or job).state == "queued"
    # cancel a queued job: failed, in quarantine, with the operator named
    assert client.post(f"/api/v1/jobs/{job.id}/cancel", headers=op).json()["ok"]
    cancelled = client.get(f"/api/v1/jobs/{job.id}", headers=op).json()
    assert cancelled["state"] == "failed" and "cancelled by operator admin" in cancelled["error"]
    assert (svc.store.get(job.id) or job).dir.parent == svc.paths.quarantine
    # the destination is fixed: requeue all failed, the job runs and its steps show
    outcome["raise"] = None
    assert "1 failed job(s)" in client.post("/api/v1/jobs/requeue-failed", headers=op).json()[
        "message"]
    done = svc.runner.run_once()
    assert done is not None and done.state == "done"
    assert client.get("/api/v1/jobs?state=done", headers=op).json()[0]["id"] == job.id
    dash = client.get("/api/v1/dashboard", headers=op).json()
    assert dash["jobs"]["done"] == 1 and dash["done_last_24h"] == 1 and dash["failed"] == 0


def test_pause_and_resume_a_destination(api: Any) -> None:
    client, _, _, _ = api
    op = {**_basic("admin"), "X-CSRF-Token": "x"}
    assert client.post("/api/v1/destinations/pacs/pause", headers=op).json()["ok"]
    (peer,) = client.get("/api/v1/destinations", headers=op).json()
    assert peer["name"] == "pacs" and peer["paused"] is True
    assert client.post("/api/v1/destinations/nope/pause", headers=op).status_code == 404
    assert client.post("/api/v1/destinations/pacs/resume", headers=op).json()["ok"]
    assert client.get("/api/v1/destinations", headers=op).json()[0]["paused"] is False
    assert client.get("/api/v1/vendors", headers=op).json() == []


def test_openapi_document_is_valid_and_complete(api: Any) -> None:
    client, _, _, routes = api
    doc = client.get("/api/v1/openapi.json").json()
    validate(doc)
    served = set()
    for r in routes:
        if isinstance(r, Route) and r.path.startswith("/api/v1"):
            for method in r.methods or ():
                if method != "HEAD":
                    served.add((r.path.replace(":int", ""), method.lower()))
    documented = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert served == documented


def test_console_and_api_are_off_unless_configured(tmp_path: Path) -> None:
    cfg = node_config(tmp_path, metrics={"enabled": True})
    svc = build_service(cfg, lambda job: None)
    assert http_routes(cfg, svc, NodeMetrics(), pauses_of(cfg)) == []
    svc.store.close()
    from node.config import ConfigError

    with pytest.raises(ConfigError, match=r"needs at least one entry in console\.users"):
        node_config(tmp_path, metrics={"enabled": True}, console={"enabled": True})
    with pytest.raises(ConfigError, match=r"needs metrics\.tls_cert"):
        node_config(tmp_path, metrics={"enabled": True, "host": "0.0.0.0"}, console={
            "enabled": True, "users": [{"name": "a", "password_hash": hash_password("p")}]})
