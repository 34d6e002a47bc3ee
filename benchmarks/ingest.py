"""Ingest benchmark: the same CT instances, one sender, several receivers, one run.

One ``storescu`` (TCP_NODELAY=1, one association for the whole directory) sends N synthetic
512x512 CT instances to (1) our Storage SCP with fsync on, (2) dcmtk ``storescp`` writing to
disk (no fsync), (3) Orthanc. Reference rows: our SCP with fsync off (what durability costs) and
a bare pynetdicom AE whose C-STORE handler stores nothing (pynetdicom's own ceiling, with the
same socket tuning as our SCP but without our fast path).

Fairness: the disk is synced (``os.sync``) before every timed send, so no receiver pays for the
writeback of the input files or of the previous receiver's output; the receivers take turns
for ``--repeat`` rounds and each row reports the median (all rounds are printed too).
"Ours" in the ratio column is always the fsync-on figure.

    python benchmarks/ingest.py [--count 500] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from node.app import build_service  # noqa: E402
from node.config import NodeConfig, parse_model  # noqa: E402
from tests.support.peers import Orthanc, StoreSCP, free_port, peer_env  # noqa: E402
from tests.support.synthetic import synthetic_ct_study, write_study  # noqa: E402

OURS = "BlindRead SCP (fsync on)"
STORESCP = "dcmtk storescp (disk)"
ORTHANC = "Orthanc 1.x"


def send(storescu: str, aet: str, port: int, indir: Path) -> float:
    """Seconds storescu needs to send the whole directory over one association."""
    os.sync()
    t0 = time.perf_counter()
    subprocess.run(
        [storescu, "-aet", "BENCH", "-aec", aet, "+sd", "127.0.0.1", str(port), str(indir)],
        env=peer_env(),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - t0


def ours(storescu: str, indir: Path, work: Path, n: int, fsync: bool) -> float:
    cfg = parse_model(
        {
            "node": {"state_dir": str(work), "log_level": "WARNING"},
            "scp": {"port": free_port(), "min_free_bytes": 0, "fsync": fsync},
            "completion": {"quiet_seconds": 3600},
        },
        NodeConfig,
    )
    svc = build_service(cfg, lambda job: None)  # ingest only: no job runs
    svc.start()
    try:
        secs = send(storescu, "BLINDREAD", svc.port, indir)
        got = sum(1 for _ in svc.spool.root.rglob("*.dcm"))
    finally:
        svc.stop()
    assert got == n, f"our SCP spooled {got}/{n}"
    return secs


def pynetdicom_ceiling(storescu: str, indir: Path, work: Path, n: int) -> float:
    """A pynetdicom AE that answers 0x0000 and stores nothing."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    from scp._net import tune_association

    ae = AE(ae_title="NOOP")
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    handlers = [(evt.EVT_C_STORE, lambda event: 0x0000), (evt.EVT_CONN_OPEN, tune_association)]
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    try:
        return send(storescu, "NOOP", port, indir)
    finally:
        server.shutdown()


def storescp(storescu: str, indir: Path, work: Path, n: int) -> float:
    with StoreSCP(work) as scp:
        secs = send(storescu, scp.aet, scp.port, indir)
        got = len(scp.received())
    assert got == n, f"storescp wrote {got}/{n}"
    return secs


def orthanc(storescu: str, indir: Path, work: Path, n: int) -> float:
    with Orthanc(work) as pacs:
        secs = send(storescu, pacs.aet, pacs.dicom_port, indir)
        got = int(pacs.get("/statistics")["CountInstances"])
    assert got == n, f"Orthanc stored {got}/{n}"
    return secs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    storescu = shutil.which("storescu")
    if storescu is None:
        print("storescu (dcmtk) is required", file=sys.stderr)
        return 2
    n = args.count
    receivers: dict[str, Callable[[str, Path, Path, int], float]] = {
        OURS: lambda s, i, w, k: ours(s, i, w, k, fsync=True),
        "BlindRead SCP (fsync off)": lambda s, i, w, k: ours(s, i, w, k, fsync=False),
        "pynetdicom no-op SCP": pynetdicom_ceiling,
        STORESCP: storescp,
        ORTHANC: orthanc,
    }
    rates: dict[str, list[float]] = {name: [] for name in receivers}
    with tempfile.TemporaryDirectory(prefix="blindread-bench-") as tmp:
        root = Path(tmp)
        indir = root / "in"
        print(f"generating {n} CT instances {args.size}x{args.size} ...", flush=True)
        write_study(synthetic_ct_study(n, size=args.size), indir)
        mb = sum(p.stat().st_size for p in indir.iterdir()) / 1e6
        for round_ in range(args.repeat):
            for name, run in receivers.items():
                work = root / f"r{round_}-{len(rates[name])}-{abs(hash(name))}"
                rates[name].append(n / run(storescu, indir, work, n))
                shutil.rmtree(work, ignore_errors=True)
            print(
                f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.1f}/s" for k, v in rates.items()),
                flush=True,
            )

    median = {name: statistics.median(r) for name, r in rates.items()}
    mine = median[OURS]
    print(
        f"\n{n} instances, {mb:.0f} MB, one storescu association, TCP_NODELAY=1, "
        f"median of {args.repeat} rounds, disk synced before each send\n"
    )
    print(f"| {'receiver':<30} | instances/s | ours / this |")
    print(f"|{'-' * 32}|------------:|------------:|")
    for name, rate in median.items():
        print(f"| {name:<30} | {rate:>11.1f} | {mine / rate:>11.2f} |")
    floor_ok = mine >= 0.8 * median[STORESCP] and mine >= median[ORTHANC]
    print(f"\nfloor (>= 0.8x storescp and >= 1x Orthanc): {'met' if floor_ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
