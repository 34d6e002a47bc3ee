"""Issue #14: the console's login, sessions, roles and CSRF (browser flow in
tests/integration/test_console_browser.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from node.api.auth import hash_password
from node.app import build_service, http_routes, pauses_of
from node.metrics import MetricsServer, NodeMetrics
from tests.support.nodeutil import node_config

PW = "console password 1"


@pytest.fixture()
def console(tmp_path: Path) -> Any:
    cfg = node_config(
        tmp_path,
        metrics={"enabled": True},
        console={"enabled": True, "users": [
            {"name": "op", "password_hash": hash_password(PW), "role": "operator"},
            {"name": "view", "password_hash": hash_password(PW), "role": "viewer"},
        ]},
        destinations={"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 1}},
    )  # fmt: skip
    metrics = NodeMetrics()
    svc = build_service(cfg, lambda job: None, metrics=metrics)
    pauses = pauses_of(cfg)
    server = MetricsServer(metrics.registry, routes=http_routes(cfg, svc, metrics, pauses))
    with TestClient(server.app, base_url="https://testserver") as client:
        yield client, pauses
    svc.store.close()


def _login(client: TestClient, user: str, password: str = PW) -> str:
    form = client.get("/console/login").text
    token = re.search(r'name="csrf" value="([^"]+)"', form)
    assert token is not None
    r = client.post("/console/login", data={"csrf": token.group(1), "user": user,
                                            "password": password}, follow_redirects=False)
    return str(r.headers["location"])


def _csrf(page: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    assert m is not None
    return m.group(1)


def test_console_needs_a_session(console: Any) -> None:
    client, _ = console
    r = client.get("/console/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    assert "Wrong user name or password" in client.get(_login(client, "op", "nope")).text
    r = client.post("/console/login", data={"csrf": "forged", "user": "op", "password": PW},
                    follow_redirects=False)  # fmt: skip
    assert "expired" in client.get(r.headers["location"]).text  # login CSRF refused


def test_operator_acts_with_token_only_and_viewer_not_at_all(console: Any) -> None:
    client, pauses = console
    assert _login(client, "op") == "/console/"
    page = client.get("/console/")
    assert page.status_code == 200 and "script-src" not in page.headers["content-security-policy"]
    assert "default-src 'none'" in page.headers["content-security-policy"]
    r = client.post("/console/destinations/pacs/pause", data={"csrf": "wrong"})
    assert r.status_code == 403 and not pauses.is_paused("destination", "pacs")
    r = client.post("/console/destinations/pacs/pause", data={"csrf": _csrf(page.text)})
    assert r.status_code == 200 and "destination pacs paused" in r.text
    assert pauses.is_paused("destination", "pacs")
    # log out: the session is gone on the server, not only in the browser
    sid = client.cookies.get("blindread_session")
    client.post("/console/logout", data={"csrf": _csrf(r.text)})
    client.cookies.set("blindread_session", sid or "")
    assert client.get("/console/", follow_redirects=False).status_code == 303

    client.cookies.clear()
    assert _login(client, "view") == "/console/"
    page = client.get("/console/")
    assert 'id="resume-pacs"' not in page.text  # no buttons for a viewer
    r = client.post("/console/destinations/pacs/resume", data={"csrf": _csrf(page.text)})
    assert r.status_code == 403 and pauses.is_paused("destination", "pacs")


def test_pages_render_escaped(console: Any) -> None:
    client, _ = console
    _login(client, "op")
    for path in ("/console/jobs", "/console/quarantine", "/console/audit", "/console/rules",
                 "/console/jobs?state=failed"):  # fmt: skip
        assert client.get(path).status_code == 200, path
    r = client.get("/console/jobs?study=%3Cscript%3Ex")
    assert "<script>x" not in r.text and "&lt;script&gt;x" in r.text
    assert client.get("/console/jobs/999").status_code == 404


def test_password_guessing_is_throttled(console: Any) -> None:
    client, _ = console
    for _ in range(4):
        assert "Wrong user name" in client.get(_login(client, "op", "guess")).text
    assert "Too many wrong passwords" in client.get(_login(client, "op", "guess")).text
    # locked now: even the right password is refused for a while, and so is HTTP Basic
    assert "Too many wrong passwords" in client.get(_login(client, "op")).text
    assert client.get("/api/v1/jobs", auth=("op", PW)).status_code == 401
    assert _login(client, "view") == "/console/"  # other users are not locked
