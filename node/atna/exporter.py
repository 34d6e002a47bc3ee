"""The ATNA exporter: a bounded queue and one sending thread, so auditing never waits on syslog.

:meth:`AtnaExporter.submit` is called by the audit ledger after each append (the entry is
durable in the ledger by then); it only builds the message and puts it on the queue, and when
the queue is full the message is dropped and counted. The thread sends each message to every
destination, ``max_attempts`` tries each with ``retry_seconds`` between; a message that still
fails is dropped and counted. The signed ledger stays the record of truth (``audit export``
re-sends nothing, but the ledger's seq in each message shows a SIEM where it has gaps).

``blindread_atna_messages_total{destination, outcome="sent"|"dropped"}`` counts both.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import socket
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from node.atna.message import LedgerEvent, audit_message
from node.atna.syslog import SyslogSender, syslog_message
from node.config.atna import AtnaSection

__all__ = ["AtnaExporter", "attach_exporter"]

log = logging.getLogger(__name__)

_QUEUE_FULL = "queue"


class AtnaExporter:
    """Sends ledger events as ATNA audit messages to the configured syslog destinations."""

    def __init__(
        self,
        section: AtnaSection,
        node_name: str,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.section = section
        self.node_name = node_name
        self.host = socket.gethostname()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=section.queue_size)
        self._senders = [SyslogSender(d, section.timeout_seconds) for d in section.destinations]
        self.messages = Counter(
            "blindread_atna_messages",
            "ATNA audit messages by destination and outcome (sent, dropped)",
            ["destination", "outcome"],
            registry=registry if registry is not None else CollectorRegistry(),
        )
        for s in self._senders:
            for outcome in ("sent", "dropped"):
                self.messages.labels(s.dest.label, outcome)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="atna-export", daemon=True)
        self._thread.start()

    def submit(self, event: LedgerEvent) -> None:
        """Queue ``event``'s message; never blocks (a full queue drops and counts it)."""
        xml = audit_message(
            event, source_id=self.section.audit_source_id, node_name=self.node_name, host=self.host
        )
        msg = syslog_message(
            xml, host=self.host, app_name=self.node_name, procid=str(os.getpid()),
            timestamp=event.time,
        )
        try:
            self._queue.put_nowait(msg)
        except queue.Full:
            for s in self._senders:
                self.messages.labels(s.dest.label, "dropped").inc()
            log.warning("ATNA export: queue full (%d), audit message seq %d dropped",
                        self.section.queue_size, event.seq)

    def count(self, destination: str, outcome: str) -> float:
        """The counter's current value (tests, the console)."""
        return float(self.messages.labels(destination, outcome)._value.get())

    def _run(self) -> None:
        while True:
            msg = self._queue.get()
            if msg is None:
                return
            for sender in self._senders:
                self._deliver(sender, msg)

    def _deliver(self, sender: SyslogSender, msg: bytes) -> None:
        tries = self.section.max_attempts
        for attempt in range(1, tries + 1):
            try:
                sender.send(msg)
            except OSError as exc:
                if attempt == tries or self._stopping.is_set():
                    self.messages.labels(sender.dest.label, "dropped").inc()
                    log.warning("ATNA export to %s failed %d time(s) (%s); message dropped",
                                sender.dest.label, attempt, exc.strerror or type(exc).__name__)
                    return
                time.sleep(self.section.retry_seconds)
            else:
                self.messages.labels(sender.dest.label, "sent").inc()
                return

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (for at most ``timeout`` seconds), then stop the thread."""
        if not self._thread.is_alive():
            return
        deadline = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stopping.set()
        try:
            self._queue.put(None, timeout=max(0.0, deadline - time.monotonic()) or 0.1)
        except queue.Full:
            pass
        self._thread.join(max(0.1, deadline - time.monotonic()))
        for s in self._senders:
            s.close()


def attach_exporter(
    ledger: Any, section: AtnaSection, node_name: str, registry: CollectorRegistry | None
) -> AtnaExporter | None:
    """An exporter listening to ``ledger``'s appends, or ``None`` with no destinations.

    Closed at interpreter exit (what is queued gets up to 5 s to go out)."""
    if not section.destinations:
        return None
    exporter = AtnaExporter(section, node_name, registry)
    ledger.add_listener(exporter.submit)
    atexit.register(exporter.close)
    return exporter
