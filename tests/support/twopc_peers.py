"""Real processes for the two-party tests: the vendor server and a hospital party.

:class:`TwoPcVendor` runs ``python -m secure_infer.vendor serve`` with only two-party models;
:func:`hospital_main` (``python -m tests.support.twopc_peers``) runs a hospital party as its own
process, so a test can kill or stop it mid-protocol. Both always torn down.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from node.demo.localpacs import free_port, stop_process
from secure_infer.vendor import certs

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: certs.CertPair
    hospital: certs.CertPair
    rogue: certs.CertPair  # same CN, another CA
    rogue_ca: Path


def make_pki(root: Path) -> Pki:
    ca_dir, out = root / "ca", root / "tls"
    certs.create_ca(ca_dir)
    rogue_dir = root / "rogue-ca"
    certs.create_ca(rogue_dir, cn="Someone else's CA")
    return Pki(
        ca=ca_dir / "ca.crt",
        server=certs.issue_server_cert(ca_dir, out),
        hospital=certs.issue_client_cert(ca_dir, out, "hospital-a"),
        rogue=certs.issue_client_cert(rogue_dir, root / "rogue", "hospital-a"),
        rogue_ca=rogue_dir / "ca.crt",
    )


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (Linux /proc)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return out


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


class TwoPcVendor:
    """The vendor server with ``twopc.models``; a context manager."""

    def __init__(self, workdir: Path, pki: Pki, models: list[dict[str, Any]], **twopc: Any):
        self.workdir = workdir
        self.pki = pki
        self.port = free_port()
        self.config = workdir / "vendor.yaml"
        cfg = {
            "listen": {"host": "127.0.0.1", "port": self.port},
            "tls": {
                "cert": str(pki.server.cert),
                "key": str(pki.server.key),
                "client_ca": str(pki.ca),
            },
            "state_dir": str(workdir / "state"),
            "limits": {"workers": 1, "queue_size": 0},
            "twopc": {"models": models, **twopc},
            "log_level": "INFO",
        }
        workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(yaml.safe_dump(cfg))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def log(self) -> str:
        return (self.workdir / "vendor.log").read_text(errors="replace")

    def client(self, pair: certs.CertPair | None = None, ca: Path | None = None) -> httpx.Client:
        ctx = ssl.create_default_context(cafile=str(ca or self.pki.ca))
        p = pair or self.pki.hospital
        ctx.load_cert_chain(str(p.cert), str(p.key))
        return httpx.Client(base_url=self.url, verify=ctx, timeout=60)

    def health(self) -> dict[str, Any]:
        with self.client() as c:
            out: dict[str, Any] = c.get("/v1/health").json()
            return out

    def workers(self) -> list[int]:
        """The server's two-party session workers (not its CKKS pool)."""
        assert self.proc is not None
        out = []
        for pid in children(self.proc.pid):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            zombie = b"_twopc_worker" not in cmd and _state(pid) == "Z"
            if b"_twopc_worker" in cmd or zombie:
                out.append(pid)
        return out

    def __enter__(self) -> TwoPcVendor:
        self._log = open(self.workdir / "vendor.log", "ab")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "secure_infer.vendor", "serve", "--config", str(self.config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(ROOT),
        )
        deadline = time.monotonic() + 180
        with self.client() as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"vendor exited {self.proc.returncode}:\n{self.log()[-3000:]}"
                    )
                try:
                    if c.get("/v1/health").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        self.__exit__(None, None, None)
        raise TimeoutError(f"vendor did not become healthy:\n{self.log()[-3000:]}")

    def __exit__(self, *exc: object) -> None:
        stop_process(self.proc, timeout=20)
        self.proc = None
        self._log.close()

    def wait_no_workers(self, timeout: float) -> list[int]:
        """Wait until the server has no worker child left; the ones left at the deadline."""
        deadline = time.monotonic() + timeout
        left = self.workers()
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = self.workers()
        return left


# ------------------------------------------------------------------ hospital process
def hospital_command(
    vendor: TwoPcVendor, model: str, program: str, images: int, *extra: str
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tests.support.twopc_peers",
        "--url",
        vendor.url,
        "--cert",
        str(vendor.pki.hospital.cert),
        "--key",
        str(vendor.pki.hospital.key),
        "--ca",
        str(vendor.pki.ca),
        "--model",
        model,
        "--program",
        program,
        "--images",
        str(images),
        *extra,
    ]


def start_hospital(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=open(log, "ab"),
        env=env,
        cwd=str(ROOT),
    )


def read_event(proc: subprocess.Popen[bytes], want: str, timeout: float) -> dict[str, Any]:
    """Read the hospital process's JSON lines until event ``want`` (or error / exit)."""
    import selectors

    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            line = proc.stdout.readline()
            if not line:
                return {"event": "exit", "code": proc.wait()}
            ev: dict[str, Any] = json.loads(line)
            if ev["event"] in (want, "error"):
                return ev
    finally:
        sel.close()
    raise TimeoutError(f"no '{want}' from the hospital within {timeout} s")


def hospital_main(argv: list[str] | None = None) -> int:
    """A hospital party: open a session, run ``--images`` random images, report JSON lines."""
    from secure_infer.errors import InferenceError
    from secure_infer.hospital.client import ClientSettings, VendorClient
    from secure_infer.hospital.twopc import TwoPartySession
    from tests.support import twopc_nets

    ap = argparse.ArgumentParser()
    for a in ("--url", "--cert", "--key", "--ca", "--model", "--program"):
        ap.add_argument(a, required=True)
    ap.add_argument("--version", default="1")
    ap.add_argument("--images", type=int, default=1)
    ap.add_argument("--recv-timeout", type=float, default=None)
    ap.add_argument("--pause-before-image", type=float, default=0.0)
    args = ap.parse_args(argv)
    program = getattr(twopc_nets, args.program)()

    def emit(event: str, **kw: Any) -> None:
        print(json.dumps({"event": event, **kw}), flush=True)

    settings = ClientSettings(
        url=args.url,
        client_cert=Path(args.cert),
        client_key=Path(args.key),
        ca=Path(args.ca),
        max_attempts=1,
    )
    rng = np.random.default_rng(7)
    try:
        with (
            VendorClient(settings, Path(".")) as vendor,
            TwoPartySession(
                vendor, args.model, args.version, program, recv_timeout=args.recv_timeout
            ) as session,
        ):
            emit("ready", session=session.session_id, setup_seconds=session.stats.setup_seconds)
            for i in range(args.images):
                if args.pause_before_image:
                    time.sleep(args.pause_before_image)
                emit("image_start", index=i)
                x = rng.uniform(0, 1, program.input.shape).astype(np.float32)
                (out,) = session.infer(x)
                emit("image", index=i, x=x.ravel().tolist(), out=out.ravel().tolist())
    except InferenceError as exc:
        emit("error", code=exc.code, detail=str(exc))
        return 1
    emit("done")
    return 0


if __name__ == "__main__":
    sys.exit(hospital_main())
