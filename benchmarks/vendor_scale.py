"""Vendor scale-out load test: the Ray backend on 1, 2, 3 worker nodes beside the local pool.

For each worker count N the same load runs twice, against the vendor with the local process pool
(``scale.backend: local``, N processes) and against the vendor joined to a local Ray cluster of
N worker nodes (``scale.backend: ray``; a head of 0 CPUs and N ``ray start`` processes of one CPU
each). 8 simulated hospitals, each with its own client certificate (its own CN) and its own CKKS
keys and context (~52 MB for the demo model), run a bounded loop of requests on loopback
through the real hospital client (mutual TLS). Reported per run:

* throughput (images/s) and images/s per worker process,
* client latency p50 / p99 per request,
* coordination overhead per request: the server's time minus the evaluation time, measured on a
  quiet vendor (one request at a time; ``server - evaluate`` from the response headers), Ray
  minus local is what Ray adds,
* context transfers per machine per hospital (Ray: each machine's ``transfers.log``),
* lost answers (a request that never got one) and duplicated ones (a job token chained twice
  or a chain entry no answer matches); every answer is checked against onnxruntime.

In the largest Ray run one worker node is SIGKILLed (raylet, object store, workers) while the
load runs; its requests are answered by the other nodes after the client's retry.

On 2 shared cores the figures cannot grow linearly with N (the cores are shared by all nodes);
images/s per worker process and the overhead are the figures that carry over to real machines.

    python benchmarks/vendor_scale.py [--nodes 1,2,3] [--hospitals 8] [--requests 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from secure_infer import (  # noqa: E402
    ClientSettings,
    VendorClient,
    create_ca,
    issue_client_cert,
    issue_server_cert,
)
from secure_infer.vendor._ray_pool import read_transfer_logs  # noqa: E402
from tests.support.peers import free_port, wait_for_port  # noqa: E402
from tests.support.raycluster import LocalRayCluster, ray_env  # noqa: E402

MANIFEST = ROOT / "secure_infer" / "models" / "demo-lesion" / "manifest.yaml"
MODEL = "demo-lesion"


@dataclass
class Run:
    backend: str
    nodes: int
    images: int = 0
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)
    overhead: list[float] = field(default_factory=list)
    lost: int = 0
    duplicated: int = 0
    maxdiff: float = 0.0
    transfers_max: int | None = None
    transfers_total: int | None = None
    killed: bool = False
    retries: int = 0

    def row(self) -> list[str]:
        tput = self.images / self.wall if self.wall else 0.0
        lat = sorted(self.latencies)
        p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))] if lat else 0.0
        return [
            self.backend,
            str(self.nodes),
            str(self.images),
            f"{self.wall:.1f}",
            f"{tput:.2f}",
            f"{tput / self.nodes:.2f}",
            f"{statistics.median(lat) * 1000:.0f}" if lat else "-",
            f"{p99 * 1000:.0f}",
            f"{statistics.median(self.overhead) * 1000:.1f}" if self.overhead else "-",
            "-" if self.transfers_max is None else f"{self.transfers_max} ({self.transfers_total})",
            str(self.lost),
            str(self.duplicated),
            str(self.retries) + (" (killed 1)" if self.killed else ""),
        ]


HEADER = [
    "backend", "workers", "images", "wall s", "img/s", "img/s/worker", "p50 ms", "p99 ms",
    "overhead ms", "ctx xfer/node/hosp max (total)", "lost", "dup", "retries",
]


class Vendor:
    """The vendor server in its own process, on a free loopback port."""

    def __init__(self, tmp: Path, pki: dict[str, Any], backend: str, workers: int,
                 cluster: LocalRayCluster | None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"{backend}{workers}-", dir=tmp))
        self.port = free_port()
        self.node_cache = self.dir / "node-cache"
        cfg: dict[str, Any] = {
            "listen": {"host": "127.0.0.1", "port": self.port, "max_connections": 128},
            "tls": {"cert": str(pki["server"].cert), "key": str(pki["server"].key),
                    "client_ca": str(pki["ca"])},
            "models": [str(MANIFEST)],
            "state_dir": str(self.dir / "state"),
            "limits": {"workers": workers, "queue_size": 16, "context_cache": 8,
                       "evaluate_timeout_seconds": 600},
            "log_level": "INFO",
        }
        if backend == "ray":
            assert cluster is not None
            cfg["scale"] = {"backend": "ray", "ray_address": cluster.address,
                            "node_cache_dir": str(self.node_cache)}
        (self.dir / "vendor.yaml").write_text(yaml.safe_dump(cfg))
        self.log = self.dir / "vendor.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "secure_infer.vendor", "serve",
                 "--config", str(self.dir / "vendor.yaml")],
                stdout=log, stderr=subprocess.STDOUT, env=ray_env(), cwd=str(ROOT),
            )
        deadline = time.monotonic() + 600
        while "vendor server ready" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(self.log.read_text(errors="replace")[-3000:])
            time.sleep(0.2)
        wait_for_port("127.0.0.1", self.port, timeout=60)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def chain_jobs(self) -> list[str]:
        path = self.dir / "state" / "chain.jsonl"
        if not path.exists():
            return []
        return [json.loads(x)["job"] for x in path.read_text().splitlines()]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def client(url: str, pki: dict[str, Any], h: int, tmp: Path) -> VendorClient:
    pair = pki["hospitals"][h]
    s = ClientSettings(url=url, client_cert=pair.cert, client_key=pair.key, ca=pki["ca"],
                       timeout=600, max_attempts=8, initial_backoff=0.5)
    return VendorClient(s, tmp / "keys" / f"h{h:02d}")


def run_load(run: Run, vendor: Vendor, pki: dict[str, Any], tmp: Path, hospitals: int,
             requests: int, ref: ort.InferenceSession,
             kill: Any = None) -> None:
    clients = [client(vendor.url, pki, h, tmp) for h in range(hospitals)]
    try:
        # contexts (one per hospital) uploaded first, one at a time: setup, not load
        for c in clients:
            c.ensure_context(MODEL)
        # quiet vendor: coordination overhead, one request at a time (after one warm-up)
        rng = np.random.default_rng(0)
        for i in range(4):
            r = clients[0].infer(MODEL, rng.uniform(0, 1, (1, 1, 64, 64)))
            if i:
                run.overhead.append(r.timings["server"] - r.timings["evaluate"])
        answered: list[str] = []
        retries = Counter[str]()
        lock = threading.Lock()
        errors: list[str] = []

        def hospital(h: int) -> None:
            c = clients[h]
            c.on_retry = lambda reason: retries.update([reason])
            g = np.random.default_rng(100 + h)
            for _ in range(requests):
                x = g.uniform(0, 1, (1, 1, 64, 64))
                t0 = time.perf_counter()
                try:
                    r = c.infer(MODEL, x)
                except Exception as exc:  # counted as lost
                    with lock:
                        errors.append(f"h{h}: {type(exc).__name__}: {exc}")
                    continue
                dt = time.perf_counter() - t0
                want = ref.run(None, {"image": x.astype(np.float32)})[0]
                with lock:
                    run.latencies.append(dt)
                    run.images += 1
                    answered.extend(e.job for e in r.exchanges)
                    run.maxdiff = max(run.maxdiff, float(np.max(np.abs(r.probabilities - want))))

        threads = [threading.Thread(target=hospital, args=(h,)) for h in range(hospitals)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        if kill is not None:
            kill()
            run.killed = True
        for t in threads:
            t.join()
        run.wall = time.perf_counter() - t0
        run.retries = sum(retries.values())
        run.lost = hospitals * requests - run.images
        for e in errors:
            print("  lost:", e)
        chained = Counter(vendor.chain_jobs())
        load_jobs = set(answered)
        run.duplicated = sum(1 for j in load_jobs if chained[j] != 1) + sum(
            n - 1 for n in chained.values() if n > 1
        )
        # every chain entry beyond setup/quiet requests must be an answer someone received
        extra = sum(chained.values()) - 4 - len(load_jobs)
        run.duplicated += max(0, extra)
    finally:
        for c in clients:
            c.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="1,2,3")
    ap.add_argument("--hospitals", type=int, default=8)
    ap.add_argument("--requests", type=int, default=2, help="per hospital per run")
    ap.add_argument("--no-kill", action="store_true")
    args = ap.parse_args()
    counts = [int(n) for n in args.nodes.split(",")]
    ref = ort.InferenceSession(str(MANIFEST.parent / "model.onnx"),
                               providers=["CPUExecutionProvider"])
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="br-scale-") as td:
        tmp = Path(td)
        create_ca(tmp / "ca")
        pki = {
            "ca": tmp / "ca" / "ca.crt",
            "server": issue_server_cert(tmp / "ca", tmp / "tls"),
            "hospitals": [issue_client_cert(tmp / "ca", tmp / "tls", f"hospital-{h:02d}")
                          for h in range(args.hospitals)],
        }
        for n in counts:
            for backend in ("local", "ray"):
                run = Run(backend, n)
                cluster = LocalRayCluster(workers=n) if backend == "ray" else None
                vendor = None
                try:
                    t0 = time.perf_counter()
                    vendor = Vendor(tmp, pki, backend, n, cluster)
                    print(f"{backend} x{n}: vendor ready in {time.perf_counter() - t0:.0f} s",
                          flush=True)
                    kill = None
                    if backend == "ray" and n == max(counts) and n > 1 and not args.no_kill:
                        def kill(c: LocalRayCluster = cluster) -> None:  # type: ignore[assignment]
                            time.sleep(8.0)
                            c.kill_worker(0)
                    run_load(run, vendor, pki, tmp, args.hospitals, args.requests, ref, kill)
                    if backend == "ray":
                        rows = read_transfer_logs(vendor.node_cache)
                        per = Counter((node, hosp) for node, _k, hosp, _s, _b in rows)
                        run.transfers_max = max(per.values(), default=0)
                        run.transfers_total = len(rows)
                finally:
                    if vendor is not None:
                        vendor.stop()
                    if cluster is not None:
                        cluster.close()
                runs.append(run)
                print("  " + " | ".join(run.row()), flush=True)
    print()
    print(f"model {MODEL}, {args.hospitals} hospitals x {args.requests} requests of 1 image per"
          f" run, {os.cpu_count()} cores; overhead = median(server - evaluate) on a quiet vendor")
    widths = [max(len(h), *(len(r.row()[i]) for r in runs)) for i, h in enumerate(HEADER)]
    print("  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True)))
    for r in runs:
        print("  ".join(c.ljust(w) for c, w in zip(r.row(), widths, strict=True)))
    print()
    print(
        f"{'workers':<8}{'img/s ray/local':>16}{'p50 ray/local':>15}"
        f"{'overhead ray-local ms':>23}"
    )
    for n in counts:
        loc = next(r for r in runs if r.backend == "local" and r.nodes == n)
        ray_ = next(r for r in runs if r.backend == "ray" and r.nodes == n)
        t_l, t_r = loc.images / loc.wall, ray_.images / ray_.wall
        p_l, p_r = statistics.median(loc.latencies), statistics.median(ray_.latencies)
        o = (statistics.median(ray_.overhead) - statistics.median(loc.overhead)) * 1000
        print(f"{n:<8}{t_r / t_l:>16.2f}{p_r / p_l:>15.2f}{o:>23.1f}")
    print(f"max |p_encrypted - p_onnxruntime| = {max(r.maxdiff for r in runs):.2e}")
    bad = sum(r.lost + r.duplicated for r in runs)
    print("lost or duplicated answers:", bad)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
