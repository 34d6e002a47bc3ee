"""Two-party (Cheetah) inference between real processes over the TLS link on loopback.

The vendor runs as ``python -m secure_infer.vendor serve`` with two-party models only (a tiny
conv + ReLU + MaxPool + dense net, and the 64x64 demo architecture with ReLU, both written in
JAX in tests/support/twopc_nets.py); the hospital's party runs in its own process
(:class:`~secure_infer.hospital.twopc.TwoPartySession`, or ``python -m
tests.support.twopc_peers`` when the test kills or stops it). Results are checked against a
float64 numpy reference and onnxruntime within fixed-point tolerance. Every failure case
checks that the vendor's session worker is reaped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from secure_infer.hospital._twopc_party import read_message, write_message
from secure_infer.hospital.client import ClientSettings, VendorClient, VendorError
from secure_infer.hospital.twopc import TwoPartySession
from secure_infer.twopc.party import (
    PeerLostError,
    UnknownSessionError,
    compile_program,
)
from secure_infer.twopc.program import FixedPoint
from secure_infer.wire import new_job_token
from tests.support import twopc_nets
from tests.support.twopc_peers import (
    ROOT,
    Pki,
    TwoPcVendor,
    hospital_command,
    make_pki,
    read_event,
    start_hospital,
)

pytestmark = pytest.mark.slow

RECV = 6.0  # the link's receive timeout in these tests (seconds)
TOL = 2e-3  # fixed point FM64 with 18 fraction bits on these small nets


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "tiny": twopc_nets.save_tiny_weights(d / "tiny.npz"),
        "demo64": twopc_nets.demo64_onnx(d / "demo64.onnx", seed=3),
    }


@pytest.fixture(scope="module")
def vendor(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, sources: dict[str, Path]
) -> Iterator[TwoPcVendor]:
    models = [
        {
            "name": "tiny",
            "version": "1",
            "loader": "tests.support.twopc_nets:load_tiny",
            "source": str(sources["tiny"]),
        },
        {
            "name": "demo64",
            "version": "1",
            "loader": "tests.support.twopc_nets:load_demo64",
            "source": str(sources["demo64"]),
        },
    ]
    with TwoPcVendor(
        tmp_path_factory.mktemp("vendor"),
        pki,
        models,
        recv_timeout_seconds=RECV,
        connect_timeout_seconds=30,  # party processes start slowly on a loaded machine
        max_sessions=2,
        session_timeout_seconds=300,
    ) as v:
        yield v


def client(vendor: TwoPcVendor, tmp_path: Path, pair: object = None) -> VendorClient:
    p = vendor.pki.hospital
    return VendorClient(
        ClientSettings(
            url=vendor.url, client_cert=p.cert, client_key=p.key, ca=vendor.pki.ca, max_attempts=1
        ),
        tmp_path,
    )


def assert_reaped(vendor: TwoPcVendor, within: float = 30) -> None:
    deadline = time.monotonic() + within
    left = vendor.wait_no_workers(within)
    assert left == [], f"session workers left running: {left}\n{vendor.log()[-2000:]}"
    while vendor.health()["twopc_sessions"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert vendor.health()["twopc_sessions"] == 0


# ------------------------------------------------------------------ results
def test_tiny_net_several_images_in_one_session(vendor: TwoPcVendor, tmp_path: Path) -> None:
    weights = twopc_nets.tiny_weights()
    rng = np.random.default_rng(1)
    t0 = time.monotonic()
    with (
        client(vendor, tmp_path) as vc,
        TwoPartySession(vc, "tiny", "1", twopc_nets.tiny_program()) as session,
    ):
        for _ in range(3):
            x = rng.uniform(0, 1, (1, 1, 8, 8)).astype(np.float32)
            (out,) = session.infer(x)
            ref = twopc_nets.tiny_reference(x, weights)
            assert out.shape == (1, 2)
            np.testing.assert_allclose(out, ref, atol=TOL)
        assert len(session.stats.image_seconds) == 3
    print(f"tiny: 3 images in {time.monotonic() - t0:.1f} s, stats {session.stats}")
    assert_reaped(vendor)
    assert "ended: done 3 images" in vendor.log()


def test_demo64_relu_matches_onnxruntime(
    vendor: TwoPcVendor, sources: dict[str, Path], tmp_path: Path
) -> None:
    rng = np.random.default_rng(2)
    with (
        client(vendor, tmp_path) as vc,
        TwoPartySession(vc, "demo64", "1", twopc_nets.demo64_program()) as session,
    ):
        for _ in range(2):
            x = rng.uniform(0, 1, (1, 1, 64, 64)).astype(np.float32)
            (out,) = session.infer(x)
            ref = twopc_nets.onnx_reference(sources["demo64"], x)
            np.testing.assert_allclose(out, ref, atol=5e-3)
    assert_reaped(vendor)


# ------------------------------------------------------------------ refused before any secret
def test_program_hash_mismatch_refused_before_a_worker_starts(
    vendor: TwoPcVendor, tmp_path: Path
) -> None:
    with client(vendor, tmp_path) as vc:
        other = TwoPartySession(
            vc, "tiny", "1", twopc_nets.tiny_program(), FixedPoint(fraction_bits=16)
        )
        with pytest.raises(VendorError) as err:
            other.open()
    assert err.value.http_status == 409 and err.value.code == "program_mismatch"
    assert vendor.workers() == []
    assert "program hash" in vendor.log()


def test_malformed_and_reused_job_tokens_refused(vendor: TwoPcVendor, tmp_path: Path) -> None:
    sha = compile_program(twopc_nets.tiny_program(), FixedPoint()).sha256
    body = {"version": "1", "program_sha256": sha, "link_port": 1}
    with vendor.client() as c:
        r = c.post("/v1/models/tiny/2pc/sessions", json={**body, "job": "not-a-token"})
        assert r.status_code == 400 and r.json()["error"] == "bad_request"
        r = c.post("/v1/models/nope/2pc/sessions", json={**body, "job": new_job_token()})
        assert r.status_code == 404 and r.json()["error"] == "unknown_model"
        r = c.post(
            "/v1/models/tiny/2pc/sessions", json={**body, "version": "9", "job": new_job_token()}
        )
        assert r.status_code == 404 and r.json()["error"] == "unknown_version"
    assert vendor.workers() == []


def _party_process(spec: dict[str, object], program_frames: list[bytes]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "secure_infer.hospital._twopc_party"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        cwd=str(ROOT),
    )
    assert proc.stdin is not None
    write_message(proc.stdin, [json.dumps(spec).encode(), *program_frames])
    return proc


def _open_raw(vendor: TwoPcVendor, sha: str, port: int) -> dict[str, object]:
    with vendor.client() as c:
        r = c.post(
            "/v1/models/tiny/2pc/sessions",
            json={"version": "1", "program_sha256": sha, "link_port": port, "job": new_job_token()},
        )
    assert r.status_code == 201, r.text
    answer: dict[str, object] = r.json()
    return answer


def _free_port() -> int:
    from node.demo.localpacs import free_port

    return free_port()


def test_unknown_session_key_refused_on_the_link(vendor: TwoPcVendor) -> None:
    compiled = compile_program(twopc_nets.tiny_program(), FixedPoint())
    port = _free_port()
    answer = _open_raw(vendor, compiled.sha256, port)
    p = vendor.pki.hospital
    spec = {
        "session_id": answer["session"],
        "session_key": "00" * 32,  # not the key the vendor issued
        "vendor_link": answer["link"],
        "own_link": f"127.0.0.1:{port}",
        "tls": {"cert": str(p.cert), "key": str(p.key), "ca": str(vendor.pki.ca)},
        "connect_timeout": 30,
        "recv_timeout": RECV,
        "program_sha256": compiled.sha256,
    }
    proc = _party_process(spec, compiled.to_frames())
    assert proc.stdout is not None
    msg = read_message(proc.stdout, timeout=60)
    proc.wait(timeout=30)
    assert msg[0] == b"error"
    info = json.loads(msg[1])
    assert info["code"] == UnknownSessionError.code, info
    assert_reaped(vendor)
    assert "unknown_session" in vendor.log()


def test_link_certificate_from_another_ca_refused(vendor: TwoPcVendor) -> None:
    compiled = compile_program(twopc_nets.tiny_program(), FixedPoint())
    port = _free_port()
    answer = _open_raw(vendor, compiled.sha256, port)
    rogue = vendor.pki.rogue
    spec = {
        "session_id": answer["session"],
        "session_key": answer["token"],
        "vendor_link": answer["link"],
        "own_link": f"127.0.0.1:{port}",
        "tls": {"cert": str(rogue.cert), "key": str(rogue.key), "ca": str(vendor.pki.ca)},
        "connect_timeout": 30,
        "recv_timeout": RECV,
        "program_sha256": compiled.sha256,
    }
    t0 = time.monotonic()
    proc = _party_process(spec, compiled.to_frames())
    assert proc.stdout is not None
    try:
        msg = read_message(proc.stdout, timeout=120)
    except EOFError:
        msg = [b"exit"]
    proc.wait(timeout=30)
    assert msg[0] in (b"error", b"exit") and proc.returncode != 0
    if msg[0] == b"error":
        info = json.loads(msg[1])
        assert info["code"] == PeerLostError.code and "did not join the TLS link" in info["detail"]
    assert time.monotonic() - t0 < 90
    assert_reaped(vendor, within=60)
    assert "ended: error peer_lost" in vendor.log()


def test_https_with_a_certificate_of_another_ca_refused(vendor: TwoPcVendor) -> None:
    import httpx

    with vendor.client(vendor.pki.rogue) as c, pytest.raises(httpx.TransportError):
        c.post("/v1/models/tiny/2pc/sessions", json={})
    assert vendor.workers() == []


# ------------------------------------------------------------------ peers failing mid-protocol
def test_vendor_worker_killed_mid_session(vendor: TwoPcVendor, tmp_path: Path) -> None:
    x = np.zeros((1, 1, 8, 8), np.float32)
    with client(vendor, tmp_path) as vc:
        session = TwoPartySession(vc, "tiny", "1", twopc_nets.tiny_program())
        session.open()
        session.infer(x)
        (pid,) = vendor.workers()
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(PeerLostError):
            session.infer(x)
        took = time.monotonic() - t0
        session.close()
    assert took < 10 * RECV, took
    assert_reaped(vendor)


def test_vendor_worker_stalls_mid_session(vendor: TwoPcVendor, tmp_path: Path) -> None:
    x = np.zeros((1, 1, 8, 8), np.float32)
    with client(vendor, tmp_path) as vc:
        session = TwoPartySession(vc, "tiny", "1", twopc_nets.tiny_program())
        session.open()
        session.infer(x)
        (pid,) = vendor.workers()
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            with pytest.raises(PeerLostError):
                session.infer(x)
        finally:
            took = time.monotonic() - t0
            session.close()
    assert took < 12 * RECV, took
    # the hospital aborted the session over HTTPS: the stopped worker is killed and reaped
    assert_reaped(vendor)


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_hospital_party_dies_or_stalls_mid_session(
    vendor: TwoPcVendor, tmp_path: Path, how: str
) -> None:
    cmd = hospital_command(vendor, "tiny", "tiny_program", 50)
    proc = start_hospital(cmd, tmp_path / "hospital.log")
    party_pids: list[int] = []
    try:
        ev = read_event(proc, "image", timeout=180)
        assert ev["event"] == "image", ev
        # the hospital's SPU party is the grandchild's... kill the whole hospital side
        party_pids = [
            int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        ]
        for pid in [proc.pid, *party_pids]:
            os.kill(pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        t0 = time.monotonic()
        left = vendor.wait_no_workers(15 * RECV)
        took = time.monotonic() - t0
        assert left == [], vendor.log()[-2000:]
        assert took < 15 * RECV
    finally:
        for pid in [proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        if how == "stop":
            for pid in party_pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    assert vendor.health()["twopc_sessions"] == 0
    assert "peer_lost" in vendor.log() or "worker_crashed" in vendor.log()
