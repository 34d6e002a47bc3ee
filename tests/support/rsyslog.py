"""A real rsyslogd (Debian's) on free loopback ports: UDP, TCP and TLS (ossl driver) inputs,
every message's raw text appended to one file. Started with its own config in a temp dir
(``-n -f conf -i pidfile``) and stopped by its pid."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

from tests.support.peers import free_port, require_tool, wait_for_port

__all__ = ["Rsyslog"]

_CONF = """\
global(workDirectory="{work}" maxMessageSize="64k")
module(load="imudp")
module(load="imtcp" maxSessions="10")
template(name="raw" type="string" string="%rawmsg%\\n")
ruleset(name="store") {{
  action(type="omfile" file="{out}" template="raw" flushOnTXEnd="on" asyncWriting="off")
}}
input(type="imudp" address="127.0.0.1" port="{udp}" ruleset="store")
input(type="imtcp" address="127.0.0.1" port="{tcp}" ruleset="store")
input(type="imtcp" address="127.0.0.1" port="{tls}" ruleset="store"
      streamDriver.name="ossl" streamDriver.mode="1" streamDriver.authMode="anon"
      streamDriver.cafile="{ca}" streamDriver.certfile="{cert}" streamDriver.keyfile="{key}")
"""


class Rsyslog:
    """``with Rsyslog(dir, ca, cert, key) as r``: ports ``r.udp``, ``r.tcp``, ``r.tls``."""

    def __init__(self, root: Path, ca: Path, cert: Path, key: Path) -> None:
        self.root = root
        self.out = root / "received.log"
        self.udp, self.tcp, self.tls = free_port(), free_port(), free_port()
        self.conf = root / "rsyslog.conf"
        (root / "work").mkdir(parents=True, exist_ok=True)
        self.conf.write_text(_CONF.format(
            work=root / "work", out=self.out, udp=self.udp, tcp=self.tcp, tls=self.tls,
            ca=ca, cert=cert, key=key,
        ))
        self.pidfile = root / "rsyslogd.pid"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Rsyslog:
        exe = require_tool("rsyslogd")
        check = subprocess.run([exe, "-N1", "-f", str(self.conf)], capture_output=True,
                               text=True, timeout=30, check=False)
        assert check.returncode == 0, check.stderr
        self.proc = subprocess.Popen(
            [exe, "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "rsyslogd.err", "wb"),
        )
        wait_for_port("127.0.0.1", self.tcp)
        wait_for_port("127.0.0.1", self.tls)
        return self

    def lines(self, n: int, timeout: float = 15.0) -> list[str]:
        """The first ``n`` messages received (waits up to ``timeout`` seconds for them)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.out.read_text("utf-8").splitlines() if self.out.exists() else []
            if len(got) >= n or time.monotonic() > deadline:
                return got
            time.sleep(0.1)

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
