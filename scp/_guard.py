"""Accept-time guard: who may hold a TCP connection to our SCP, and for how long without an RQ.

pynetdicom's server gives every accepted socket an association thread, and that thread counts
against ``maximum_associations`` until the peer's A-ASSOCIATE-RQ has arrived and been judged by
:class:`scp._policy.AssociationPolicy` (or the ACSE timeout has run out). A host that may not
send at all could therefore fill every slot with silent connections, and legitimate senders got
"local limit exceeded". :class:`GuardedAssociationServer` decides before any thread or slot is
taken:

- a source address outside ``scp.allowed_networks`` is closed at once (no byte read, no TLS
  handshake), counted through ``on_rejected`` as a network rejection;
- an allowed address may hold at most ``scp.max_associations_per_address`` connections at once
  (counted from accept to the end of the association thread); one more is closed at accept;
- a connection that has not delivered its whole A-ASSOCIATE-RQ (TLS handshake included)
  ``scp.acse_timeout`` seconds after accept is shut down by one watchdog thread, whatever
  pynetdicom's reader is blocked in;
- a peer that closes before its A-ASSOCIATE-RQ (a load balancer's TCP health probe) frees its
  slot at once: pynetdicom's acceptor thread would otherwise wait out the ACSE timeout.

Every refusal logs one line naming the IP (not PHI), rate-limited per address so a flood does not
flood the log. TLS is wrapped in the connection's own thread, never in the accept loop, so a
peer stalling its handshake cannot stop accepts. Relies on pynetdicom 3.0's ``AssociationServer``
(``get_request``/``process_request_thread``) and ``RequestHandler._create_association``.
"""

from __future__ import annotations

import heapq
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

__all__ = ["AcceptGuard", "GuardedAssociationServer", "RateLimitedLog"]

log = logging.getLogger(__name__)


class RateLimitedLog:
    """At most one line per key per ``interval`` s; the next line says how many were dropped."""

    def __init__(self, interval: float = 60.0, max_keys: int = 256) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, int]] = {}  # key -> (last logged, suppressed since)

    def warning(self, key: str, msg: str, *args: Any) -> bool:
        """Log ``msg % args`` at WARNING unless ``key`` logged in the last ``interval`` s.

        Returns whether it logged."""
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._seen.get(key, (float("-inf"), 0))
            if now - last < self.interval:
                self._seen[key] = (last, suppressed + 1)
                return False
            if key not in self._seen and len(self._seen) >= self.max_keys:
                # many distinct addresses: forget the old ones rather than grow without bound
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.interval}
                if len(self._seen) >= self.max_keys:
                    key = "*"
                    last, suppressed = self._seen.get(key, (float("-inf"), 0))
                    if now - last < self.interval:
                        self._seen[key] = (last, suppressed + 1)
                        return False
            self._seen[key] = (now, 0)
        if suppressed:
            msg += " (%d more like it suppressed)"
            args = (*args, suppressed)
        log.warning(msg, *args)
        return True


class _Ticket:
    """One admitted connection: its address, socket, and whether its A-ASSOCIATE-RQ arrived."""

    __slots__ = ("_released", "deadline", "ip", "requested", "sock")

    def __init__(self, ip: str, sock: socket.socket, deadline: float) -> None:
        self.ip = ip
        self.sock = sock
        self.deadline = deadline
        self.requested = False
        self._released = False

    def __lt__(self, other: _Ticket) -> bool:
        return self.deadline < other.deadline


class AcceptGuard:
    """Admission at accept time: address allow-list, per-address limit, A-ASSOCIATE-RQ deadline."""

    def __init__(
        self,
        address_allowed: Callable[[str], bool],
        max_per_address: int,
        request_timeout: float,
        on_network_refused: Callable[[], None] | None = None,
        on_limit_refused: Callable[[], None] | None = None,
        rate_log: RateLimitedLog | None = None,
    ) -> None:
        self.address_allowed = address_allowed
        self.max_per_address = max_per_address
        self.request_timeout = request_timeout
        self.on_network_refused = on_network_refused
        self.on_limit_refused = on_limit_refused
        self.rate_log = rate_log or RateLimitedLog()
        self._lock = threading.Condition()
        self._open: dict[str, int] = {}
        self._pending: list[_Ticket] = []  # heap by deadline, tickets still waiting for an RQ
        self._watchdog: threading.Thread | None = None
        self._stopped = False

    def open_from(self, ip: str) -> int:
        """Connections from ``ip`` admitted and not yet finished."""
        with self._lock:
            return self._open.get(ip, 0)

    def admit(self, sock: socket.socket, ip: str) -> _Ticket | None:
        """A ticket for an admitted connection, or ``None`` if it must be closed now."""
        if not self.address_allowed(ip):
            self.rate_log.warning(
                "net:" + ip,
                "connection from %s refused at accept: source address not in "
                "scp.allowed_networks",
                ip,
            )
            if self.on_network_refused is not None:
                self.on_network_refused()
            return None
        with self._lock:
            n = self._open.get(ip, 0)
            if n >= self.max_per_address:
                refused = True
            else:
                refused = False
                self._open[ip] = n + 1
                ticket = _Ticket(ip, sock, time.monotonic() + self.request_timeout)
                heapq.heappush(self._pending, ticket)
                self._ensure_watchdog()
                self._lock.notify_all()
        if refused:
            self.rate_log.warning(
                "limit:" + ip,
                "connection from %s refused at accept: %d connections from this address "
                "already open (scp.max_associations_per_address)",
                ip,
                n,
            )
            if self.on_limit_refused is not None:
                self.on_limit_refused()
            return None
        return ticket

    def requested(self, ticket: _Ticket) -> None:
        """The A-ASSOCIATE-RQ arrived: the deadline no longer applies."""
        with self._lock:
            ticket.requested = True

    def closed_by_peer(self, ticket: _Ticket) -> bool:
        """The peer closed the connection. Before its A-ASSOCIATE-RQ (a health probe's connect +
        close, a port scan) the ticket is released now, not at the ACSE deadline, and the
        watchdog has nothing to report; returns whether it was before the RQ."""
        with self._lock:
            early = not ticket.requested
        if early:
            self.release(ticket)
        return early

    def release(self, ticket: _Ticket) -> None:
        """The connection is over (idempotent)."""
        with self._lock:
            if ticket._released:
                return
            ticket._released = True
            ticket.requested = True  # nothing left for the watchdog to do
            n = self._open.get(ticket.ip, 0) - 1
            if n > 0:
                self._open[ticket.ip] = n
            else:
                self._open.pop(ticket.ip, None)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify_all()

    # -- watchdog --------------------------------------------------------------------------
    def _ensure_watchdog(self) -> None:  # called with the lock held
        if self._watchdog is None or not self._watchdog.is_alive():
            self._watchdog = threading.Thread(
                target=self._watch, name="blindread-accept-watchdog", daemon=True
            )
            self._watchdog.start()

    def _watch(self) -> None:
        while True:
            with self._lock:
                while not self._stopped:
                    while self._pending and self._pending[0].requested:
                        heapq.heappop(self._pending)
                    if not self._pending:
                        self._lock.wait()
                        continue
                    wait = self._pending[0].deadline - time.monotonic()
                    if wait <= 0:
                        break
                    self._lock.wait(wait)
                if self._stopped:
                    return
                late = heapq.heappop(self._pending)
                try:  # unblocks whatever recv (or TLS handshake) the reader sits in; the plain
                    # socket's shutdown, so a TLS socket's state is not touched from this thread
                    socket.socket.shutdown(late.sock, socket.SHUT_RDWR)
                except OSError:
                    pass
            self.rate_log.warning(
                "slow:" + late.ip,
                "connection from %s dropped: no A-ASSOCIATE-RQ within %.0f s (scp.acse_timeout)",
                late.ip,
                self.request_timeout,
            )


class _GuardedRequestHandler(RequestHandler):
    """pynetdicom's handler; the association thread releases the connection's ticket at its end
    and marks it when the A-ASSOCIATE-RQ has arrived."""

    def handle(self) -> None:
        server = cast("GuardedAssociationServer", self.server)
        ticket: _Ticket = server._local.ticket
        guard = server.guard
        assoc = self._create_association()
        run = assoc.run

        def run_then_release() -> None:
            try:
                run()
            finally:
                guard.release(ticket)

        def conn_closed(event: Any) -> None:
            # pynetdicom's acceptor thread would wait out the whole ACSE timeout for an RQ
            # that can no longer come (FSM AA-5 stops the reader without telling it): wake it
            # as the timeout would, so the association thread (and its slot) ends now
            if guard.closed_by_peer(ticket):
                assoc.dul.to_user_queue.put(None)

        assoc.run = run_then_release  # type: ignore[method-assign]
        assoc.bind(evt.EVT_REQUESTED, lambda event: guard.requested(ticket))
        assoc.bind(evt.EVT_CONN_CLOSE, conn_closed)
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()
        server._local.started = True


class GuardedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with :class:`AcceptGuard` deciding at accept time."""

    def __init__(self, *args: Any, guard: AcceptGuard, **kwargs: Any) -> None:
        self.guard = guard
        self._local = threading.local()
        kwargs["request_handler"] = _GuardedRequestHandler
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept only: TLS (if any) is wrapped later, in the connection's own thread."""
        assert self.socket is not None
        client, address = self.socket.accept()
        return client, address

    def process_request(self, request: Any, client_address: Any) -> None:
        """In the accept loop: admit or close, then hand the socket to its own thread."""
        ticket = self.guard.admit(request, str(client_address[0]))
        if ticket is None:
            self._close(request)
            return
        try:
            thread = threading.Thread(
                target=self._serve, args=(request, client_address, ticket), daemon=True
            )
            thread.start()
        except BaseException:
            self.guard.release(ticket)
            self._close(request)
            raise

    def _serve(self, raw: socket.socket, client_address: Any, ticket: _Ticket) -> None:
        conn = raw
        started = False
        try:
            if self.ssl_context is not None:
                try:
                    conn = self._handshake(raw, ticket)
                except OSError as exc:  # TLS refused, reset or timed out (SSLError included)
                    self.guard.rate_log.warning(
                        "tls:" + ticket.ip,
                        "connection from %s dropped: TLS handshake failed (%s)",
                        ticket.ip,
                        type(exc).__name__,
                    )
                    return
            self._local.ticket, self._local.started = ticket, False
            self.finish_request(conn, client_address)
            started = bool(self._local.started)
        except Exception:
            self.handle_error(conn, client_address)
        finally:
            self._local.ticket = None
            if not started:  # no association thread owns the connection: close it here
                self.guard.release(ticket)
                self.shutdown_request(conn)

    def _handshake(self, raw: socket.socket, ticket: _Ticket) -> socket.socket:
        assert self.ssl_context is not None
        tls = self.ssl_context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        ticket.sock = tls  # the watchdog must shut down the socket that now owns the fd
        try:
            tls.settimeout(max(0.1, ticket.deadline - time.monotonic()))
            tls.do_handshake()
        except BaseException:
            # the TLS socket owns the fd now: closing ``raw`` would leave it open until the
            # watchdog's deadline (one leaked descriptor per refused handshake)
            self._close(tls)
            raise
        tls.settimeout(None)  # as pynetdicom's own get_request leaves it
        return tls

    @staticmethod
    def _close(sock: socket.socket) -> None:
        try:
            sock.close()
        except OSError:
            pass

    def shutdown(self) -> None:
        self.guard.stop()
        super().shutdown()
