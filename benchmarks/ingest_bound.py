"""Where an ingest instance's time goes: the bound behind docs/ingest.md.

``storescu`` waits for each C-STORE response before sending the next instance, so per-instance
costs add up. This measures, on this machine, in one run:

* storescu + dcmtk ``storescp --ignore`` (receives and answers, stores nothing): the cost of
  the sender and of a near-ideal receiver;
* storescu + dcmtk ``storescp`` writing to disk (the ingest benchmark's peer);
* the durable write of one instance alone, by the spool's own code (temp file, write,
  fsync, rename into the study directory, directory fsync), on the spool's filesystem;

and prints the floor's per-instance budget (0.8x storescp) next to "ideal receiver + durable
write", the least any receiver that acknowledges only durable data can take.

    python benchmarks/ingest_bound.py [--count 300] [--dir /var/lib/blindread]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.ingest import send  # noqa: E402
from scp import Spool  # noqa: E402
from tests.support.peers import StoreSCP, require_tool  # noqa: E402
from tests.support.synthetic import synthetic_ct_study, write_study  # noqa: E402


def durable_writes(data: bytes, where: Path, n: int) -> float:
    """Seconds per instance for the spool's own durable store (temp file, write, fsync,
    rename into the study directory, directory fsync): ``Spool.store`` itself."""
    spool = Spool(where / "spool", lambda uid: uid, fsync=True)
    spool.store("1.2.3", "1.2.3.0", data)  # the study directory exists, as mid-study
    os.sync()
    t0 = time.perf_counter()
    for i in range(n):
        spool.store("1.2.3", f"1.2.3.{i + 1}", data)
    return (time.perf_counter() - t0) / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--dir", type=Path, default=None, help="filesystem to test (default: temp)")
    args = ap.parse_args()
    storescu, n = require_tool("storescu"), args.count
    with tempfile.TemporaryDirectory(prefix="blindread-bound-", dir=args.dir) as tmp:
        root = Path(tmp)
        write_study(synthetic_ct_study(n, size=512), root / "in")
        files = sorted((root / "in").iterdir())
        size = files[0].stat().st_size
        with StoreSCP(root / "ignored", extra_args=("--ignore",)) as scp:
            ignore = send(storescu, scp.aet, scp.port, root / "in") / n
        with StoreSCP(root / "stored") as scp:
            disk = send(storescu, scp.aet, scp.port, root / "in") / n
        durable = durable_writes(files[0].read_bytes(), root, n)
    budget = disk / 0.8
    print(f"{n} CT instances of {size / 1e3:.0f} kB, one storescu association\n")
    print("| per instance | ms |")
    print("|---|---:|")
    print(f"| storescu + storescp --ignore (near-ideal receiver) | {ignore * 1e3:.2f} |")
    print(f"| storescu + storescp writing to disk | {disk * 1e3:.2f} |")
    print(f"| durable write alone (write, fsync, rename, dir fsync) | {durable * 1e3:.2f} |")
    print(f"| budget at 0.8x storescp | {budget * 1e3:.2f} |")
    print(f"| near-ideal receiver + durable write | {(ignore + durable) * 1e3:.2f} |")
    best = disk / (ignore + durable)
    print(f"\nbest ratio to storescp any fsync-per-instance receiver can reach here: {best:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
