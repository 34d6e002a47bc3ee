"""Models added, retired and reloaded without a restart (``vendor models ...`` and SIGHUP) on
the real vendor process; a model that fails its check stays out and the others keep serving."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from secure_infer.vendor._admin import read_status
from tests.integration.test_vendor_link import (
    ROOT,
    TOL,
    VendorProcess,
    client_for,
    inputs,
    make_pki,
    onnx_reference,
    raw_client,
)
from tests.secure_infer.test_vendor_registry import versioned

pytestmark = pytest.mark.slow


def models_cli(vp: VendorProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "secure_infer.vendor", "models", "--config", str(vp.config),
         "--timeout", "120", *args],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT,
        timeout=180,
    )


def _sighup(vp: VendorProcess, pid: int) -> dict[str, object]:
    before = int((read_status(vp.state_dir) or {})["reload"])
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + 60
    while True:
        status = read_status(vp.state_dir) or {}
        if int(status["reload"]) > before:  # type: ignore[call-overload]
            return status
        assert time.monotonic() < deadline, "no reload reported"
        time.sleep(0.1)


def test_add_retire_reload_without_restart(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    v1 = versioned(tmp_path / "models", "tiny", "0.1.0", seed=1)
    v2 = versioned(tmp_path / "models", "tiny", "0.2.0", seed=2)
    broken = versioned(tmp_path / "models", "broken", "1.0", seed=3)
    doc = yaml.safe_load(broken.read_text())
    doc["input"]["shape"] = [1, 4, 4]  # does not fit the model: fails to compile
    broken.write_text(yaml.safe_dump(doc))
    vp = VendorProcess(tmp_path / "srv", pki, [v1])
    vp.start()
    try:
        assert vp.proc is not None
        pid = vp.proc.pid
        x = inputs(1, 8, seed=5)
        # add a second version: checked, then live; a bare name now gets it
        res = models_cli(vp, "add", str(v2))
        assert res.returncode == 0, res.stdout + res.stderr
        assert "live     tiny@0.2.0  (current)" in res.stdout
        with client_for(vp, pki.hospital_a, tmp_path / "keys") as c:
            got = c.infer("tiny", x)
            old = c.infer("tiny@0.1.0", x)
        assert got.model_version == "0.2.0" and old.model_version == "0.1.0"
        assert np.max(np.abs(got.probabilities - onnx_reference(v2, x))) <= TOL
        # a broken model is refused with its reason; everything else keeps serving
        res = models_cli(vp, "add", str(broken))
        assert res.returncode == 1 and "REFUSED  broken@1.0" in res.stdout
        assert "input shape" in res.stdout
        assert "model broken@1.0 from" in vp.log() and "it stays out" in vp.log()
        # retire the old version: a pin of it is 404 with the versions still served
        res = models_cli(vp, "retire", "tiny@0.1.0")
        assert res.returncode == 0 and "tiny@0.1.0" not in res.stdout
        with raw_client(vp, pki.hospital_a) as rc:
            r = rc.get("/v1/models/tiny@0.1.0/manifest")
            assert r.status_code == 404 and r.json()["error"] == "version_not_found"
            assert "served versions: 0.2.0" in r.json()["detail"]
            assert rc.get("/v1/models/tiny/manifest").json()["manifest"]["version"] == "0.2.0"
        # pin the current version back... to a retired one: refused, 0.2.0 stays current
        res = models_cli(vp, "current", "tiny@0.1.0")
        assert "not live" in res.stdout
        # an edit of the config applied by SIGHUP (systemctl reload): access rules now
        cfg = yaml.safe_load(vp.config.read_text())
        cfg["access"] = {"hospitals": {"hospital-a": {"models": ["tiny@0.2.0"]}}}
        vp.config.write_text(yaml.safe_dump(cfg))
        assert "error" not in _sighup(vp, pid)
        with raw_client(vp, pki.hospital_b) as rc:
            r = rc.get("/v1/models/tiny/manifest")
            assert r.status_code == 403 and r.json()["error"] == "not_enrolled"
        with client_for(vp, pki.hospital_a, tmp_path / "keys") as c:
            again = c.infer("tiny", x)  # served throughout, by the same process
        assert again.model_version == "0.2.0" and vp.proc.pid == pid and vp.proc.poll() is None
        # a config that no longer loads changes nothing (and says why)
        vp.config.write_text("listen: {port: 0}\n")
        status = _sighup(vp, pid)
        assert "listen.port" in status["error"]
        with client_for(vp, pki.hospital_a, tmp_path / "keys") as c:
            assert c.infer("tiny", x).model_version == "0.2.0"
    finally:
        vp.stop()
