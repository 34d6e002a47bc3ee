"""The vendor's worker processes never outlive the server: not after SIGTERM (uvicorn re-raises
it after its graceful shutdown, skipping interpreter exit hooks), not after SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.test_vendor_link import VendorProcess, make_pki, write_model_package

pytestmark = pytest.mark.slow


def _children(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def _alive(pids: set[int], timeout: float = 10.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while True:
        alive = {p for p in pids if Path(f"/proc/{p}").exists()
                 and "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2]}  # fmt: skip
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_workers_die_with_the_server(tmp_path: Path, sig: signal.Signals) -> None:
    pki = make_pki(tmp_path)
    model = write_model_package(tmp_path / "models", "tiny", side=8, kernel=2, seed=1, mlp=True)
    vp = VendorProcess(tmp_path / "srv", pki, [model], workers=2)
    vp.start()
    try:
        assert vp.proc is not None
        workers = _children(vp.proc.pid)
        assert len(workers) >= 2  # the pool's workers (plus multiprocessing's helpers)
        vp.proc.send_signal(sig)
        vp.proc.wait(timeout=20)
        assert _alive(workers) == set()
    finally:
        vp.stop()
