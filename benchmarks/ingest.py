"""Ingest benchmark: the same CT instances, one sender, three receivers, one run.

One ``storescu`` (TCP_NODELAY=1, one association for the whole directory) sends N synthetic
512x512 CT instances to (1) our Storage SCP with fsync on, (2) dcmtk ``storescp`` writing to
disk (no fsync), (3) Orthanc. Reference rows: our SCP with fsync off (what durability costs) and
a bare pynetdicom AE whose C-STORE handler stores nothing (pynetdicom's own ceiling, with the
same socket/loop tuning as our SCP).
"Ours" in the ratio column is always the fsync-on figure. Prints instances/s for each and
our ratio to each peer.

    python benchmarks/ingest.py [--count 500]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from node.config import NodeConfig, parse_model  # noqa: E402
from node.service import NodeService  # noqa: E402
from node.synthetic import synthetic_ct_study, write_study  # noqa: E402
from tests.peers import Orthanc, StoreSCP, free_port, peer_env  # noqa: E402


def send(storescu: str, aet: str, port: int, indir: Path) -> float:
    """Seconds storescu needs to send the whole directory over one association."""
    t0 = time.perf_counter()
    subprocess.run(
        [storescu, "-aet", "BENCH", "-aec", aet, "+sd", "127.0.0.1", str(port), str(indir)],
        env=peer_env(),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - t0


def _pynetdicom_ceiling(storescu: str, indir: Path) -> float:
    """Seconds for a pynetdicom AE that answers 0x0000 and stores nothing to take the files."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    from scp.net import tune_association

    ae = AE(ae_title="NOOP")
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    handlers = [(evt.EVT_C_STORE, lambda event: 0x0000), (evt.EVT_CONN_OPEN, tune_association)]
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    try:
        return send(storescu, "NOOP", port, indir)
    finally:
        server.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args()
    storescu = shutil.which("storescu")
    if storescu is None:
        print("storescu (dcmtk) is required", file=sys.stderr)
        return 2
    n = args.count
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="blindread-bench-") as tmp:
        root = Path(tmp)
        indir = root / "in"
        print(f"generating {n} CT instances {args.size}x{args.size} ...", flush=True)
        write_study(synthetic_ct_study(n, size=args.size), indir)
        mb = sum(p.stat().st_size for p in indir.iterdir()) / 1e6

        for fsync in (True, False):
            cfg = parse_model(
                {
                    "node": {"state_dir": str(root / f"node-{fsync}"), "log_level": "WARNING"},
                    "scp": {"port": free_port(), "min_free_bytes": 0, "fsync": fsync},
                    "completion": {"quiet_seconds": 3600},
                },
                NodeConfig,
            )
            svc = NodeService(cfg, action=lambda job: None)  # ingest only: no job runs
            svc.start()
            try:
                secs = send(storescu, "BLINDREAD", svc.port, indir)
                got = sum(1 for p in svc.spool.root.rglob("*.dcm"))
            finally:
                svc.stop()
            assert got == n, f"our SCP spooled {got}/{n}"
            results[f"BlindRead SCP (fsync {'on' if fsync else 'off'})"] = n / secs

        results["pynetdicom no-op SCP (ceiling)"] = n / _pynetdicom_ceiling(storescu, indir)

        with StoreSCP(root / "storescp") as scp:
            secs = send(storescu, scp.aet, scp.port, indir)
            got = len(scp.received())
        assert got == n, f"storescp wrote {got}/{n}"
        results["dcmtk storescp (disk)"] = n / secs

        with Orthanc(root / "orthanc") as pacs:
            secs = send(storescu, pacs.aet, pacs.dicom_port, indir)
            got = int(pacs.get("/statistics")["CountInstances"])
        assert got == n, f"Orthanc stored {got}/{n}"
        results["Orthanc 1.x"] = n / secs

    ours = results["BlindRead SCP (fsync on)"]
    print(f"\n{n} instances, {mb:.0f} MB, one storescu association, TCP_NODELAY=1\n")
    print(f"| {'receiver':<30} | instances/s | ours / this |")
    print(f"|{'-' * 32}|------------:|------------:|")
    for name, rate in results.items():
        print(f"| {name:<30} | {rate:>11.1f} | {ours / rate:>11.2f} |")
    floor_ok = ours >= 0.8 * results["dcmtk storescp (disk)"] and ours >= results["Orthanc 1.x"]
    print(f"\nfloor (>= 0.8x storescp and >= 1x Orthanc): {'met' if floor_ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
