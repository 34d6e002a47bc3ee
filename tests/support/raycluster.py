"""A local Ray cluster of separate processes: one head (no CPU: it only coordinates) and worker
nodes of one CPU each, every node its own ``ray start --block`` in its own process group so a
test can kill one "machine" (raylet, object store and its workers) with one signal.

Every port Ray would otherwise take at a fixed number (GCS 6379, dashboard 8265, dashboard agent
52365, client server 10001) is a free one, and the temp dir is a fresh one, so several
clusters (other tests, other users of the machine) run side by side. Never ``ray stop``: it
stops every Ray on the machine. Failure detection is shortened (health checks every 500 ms,
dead after 3 misses) so a killed node is noticed in about two seconds instead of 30.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.peers import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))

FAST_FAILURE = {
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
    "RAY_health_check_initial_delay_ms": "500",
    "RAY_raylet_start_wait_time_s": "120",  # a loaded 2-core machine registers nodes slowly
}


def ray_env() -> dict[str, str]:
    """Environment for every Ray process (the worker processes import secure_infer from here)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0", **FAST_FAILURE)
    env.pop("RAY_ADDRESS", None)
    return env


class LocalRayCluster:
    """``with LocalRayCluster(workers=2) as c: ... c.address ... c.kill_worker(0)``."""

    def __init__(self, workers: int, object_store_mb: int = 600) -> None:
        # a short path: Ray's Unix sockets live under it (108-byte limit)
        self.root = Path(tempfile.mkdtemp(prefix="br-ray-"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.object_store_mb = object_store_mb
        self.head: subprocess.Popen[bytes] | None = None
        self.nodes: list[subprocess.Popen[bytes]] = []
        self.node_logs: list[Path] = []
        self._logs: list[object] = []
        try:
            self._start_head()
            for i in range(workers):  # one at a time: nodes started together time out
                self.add_worker()
                self._await_or_retry(i)
        except BaseException:
            self.close()
            raise

    def _await_or_retry(self, i: int, attempts: int = 3) -> None:
        """Wait for node ``i``; a node that timed out registering (an overloaded GCS on a busy
        machine answers late) is started again, up to ``attempts`` times."""
        for attempt in range(1, attempts + 1):
            try:
                self.wait_worker(i)
                return
            except RuntimeError:
                if attempt == attempts:
                    raise
                self.kill_worker(i)
                fresh = self.add_worker()
                self.nodes.pop()
                self.nodes[i] = fresh
                self.node_logs[i] = self.node_logs.pop()

    def wait_worker(self, i: int, timeout: float = 300) -> None:
        """Wait until worker node ``i`` says it has joined (``ray start`` prints it)."""
        log = self.node_logs[i]
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if self.nodes[i].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker node {i} did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)

    def _popen(self, args: list[str], name: str) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "ab")
        self._logs.append(log)
        return subprocess.Popen(
            [RAY, "start", "--block", "--disable-usage-stats", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=ray_env(),
            cwd=str(ROOT),
            start_new_session=True,  # own process group: kill_worker takes the whole node
        )

    def _node_args(self) -> list[str]:
        return [
            f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--metrics-export-port={free_port()}",
        ]

    def _start_head(self) -> None:
        self.head = self._popen(
            [
                "--head",
                f"--port={self.port}",
                "--num-cpus=0",
                "--include-dashboard=false",
                f"--dashboard-port={free_port()}",
                f"--ray-client-server-port={free_port()}",
                f"--temp-dir={self.root / 't'}",
                *self._node_args(),
            ],
            "head",
        )
        wait_for_port("127.0.0.1", self.port, timeout=60)

    def add_worker(self) -> subprocess.Popen[bytes]:
        """Start one more worker node (one CPU); Ray schedules actors on it once it joins."""
        n = len(self.node_logs)
        self.node_logs.append(self.root / f"worker{n}.log")
        proc = self._popen(
            [
                f"--address={self.address}",
                "--num-cpus=1",
                *self._node_args(),
            ],
            f"worker{n}",
        )
        self.nodes.append(proc)
        return proc

    @staticmethod
    def _ps() -> list[tuple[int, int, int, str]]:
        out = subprocess.run(
            ["ps", "-e", "-ww", "-o", "pid=,ppid=,pgid=,args="],
            capture_output=True,
            text=True,
            check=True,
        )
        rows = []
        for line in out.stdout.splitlines():
            pid, ppid, pgid, *args = line.split(None, 3)
            rows.append((int(pid), int(ppid), int(pgid), args[0] if args else ""))
        return rows

    def _tree(self, proc: subprocess.Popen[bytes]) -> set[int]:
        """The process group of ``proc`` (raylet, agents) and every descendant of it (Ray's
        worker processes are the raylet's children but leave its process group)."""
        rows = self._ps()
        pids = {pid for pid, _, pgid, _ in rows if pgid == proc.pid} | {proc.pid}
        while more := {pid for pid, ppid, _, _ in rows if ppid in pids} - pids:
            pids |= more
        return pids

    def node_pids(self, i: int) -> set[int]:
        """Every process of worker node ``i``."""
        return self._tree(self.nodes[i])

    def node_id(self, i: int) -> str:
        """Ray's node id of worker node ``i`` (from its raylet's command line)."""
        pids = self.node_pids(i)
        for pid, _, _, args in self._ps():
            if pid in pids and "--node_id=" in args:
                return args.split("--node_id=", 1)[1].split()[0]
        raise LookupError(f"worker node {i} has no raylet")

    def kill_worker(self, i: int) -> None:
        """SIGKILL worker node ``i`` whole: raylet, object store and its worker processes."""
        proc = self.nodes[i]
        if proc.poll() is None:
            for pid in self.node_pids(i):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def restart_worker(self, i: int) -> None:
        """Start a fresh worker node in place of node ``i`` (after :meth:`kill_worker`)."""
        self.kill_worker(i)
        fresh = self.add_worker()
        self.nodes.pop()
        self.nodes[i] = fresh
        self.node_logs[i] = self.node_logs.pop()
        self._await_or_retry(i)

    def close(self) -> None:
        for i in range(len(self.nodes)):
            self.kill_worker(i)
        if self.head is not None and self.head.poll() is None:
            for pid in self._tree(self.head):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.head.wait(timeout=10)
        time.sleep(0.2)
        for log in self._logs:
            log.close()  # type: ignore[attr-defined]
        if os.environ.get("BLINDREAD_KEEP_RAY_LOGS"):
            print(f"Ray logs kept in {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
