"""Audit ledger under concurrent appends from threads and processes: one unbroken chain."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

from node.audit import AuditEntry, AuditLedger, verify_ledger

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import sys
from node.audit import AuditLedger
led = AuditLedger.open(sys.argv[1], sys.argv[2])
for i in range(int(sys.argv[3])):
    led.append("retry", {"writer": sys.argv[4], "i": i})
"""


def test_threads_and_processes_keep_one_valid_chain(tmp_path: Path) -> None:
    path, key = tmp_path / "ledger.jsonl", tmp_path / "keys" / "audit.key"
    first = AuditLedger.open(path, key)
    second = AuditLedger.open(path, key)  # another instance on the same file
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(key), "30", f"p{n}"],
                         env=env, cwd=ROOT)
        for n in range(3)
    ]

    def work(led: AuditLedger, name: str) -> None:
        for i in range(20):
            led.append("retry", {"writer": name, "i": i})

    threads = [threading.Thread(target=work, args=(first if n % 2 else second, f"t{n}"))
               for n in range(6)]
    reports = []
    done = threading.Event()

    def verifier() -> None:  # verifying while others append never raises a false alarm
        while not done.is_set():
            reports.append(verify_ledger(path, first.public_key))

    checker = threading.Thread(target=verifier)
    checker.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        assert p.wait(timeout=120) == 0
    done.set()
    checker.join()
    assert len(reports) > 1
    assert all(r.ok for r in reports), [r.describe() for r in reports if not r.ok]

    report = verify_ledger(path, first.public_key)
    assert report.ok, report.describe()
    assert report.entries == 3 * 30 + 6 * 20 == report.head_seq
    entries = [AuditEntry.from_json(line) for line in path.read_text().splitlines()]
    per_writer = Counter(e.details["writer"] for e in entries)
    assert per_writer == {**{f"p{n}": 30 for n in range(3)}, **{f"t{n}": 20 for n in range(6)}}
    # each writer's own entries keep their order
    for writer in per_writer:
        mine = [e.details["i"] for e in entries if e.details["writer"] == writer]
        assert mine == sorted(mine)
