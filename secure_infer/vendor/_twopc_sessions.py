"""The vendor's two-party sessions: one worker process each, bounded, timed, always reaped.

``POST /v1/models/{name}/2pc/sessions`` (see :mod:`secure_infer.vendor.server`) calls
:meth:`TwoPcSessions.open`: the model and version must be served and the hospital's program
hash must equal the one the vendor computed for that model at start-up (else 409
``program_mismatch`` and no worker is started). Then a worker
(:mod:`secure_infer.vendor._twopc_worker`) is started with the session's spec on its stdin; once
it reports its link port, the answer names the link address and the session key, which the
hospital alone receives (over the mutual-TLS HTTPS connection).

Every worker is watched by one task that reads its reports, kills it when the session outlives
``session_timeout`` and always waits for it (no zombie, no leaked process), on every path: a
worker that never reports, an HTTP request cancelled, a server shutting down. The worker also
arms its own alarm, so even a vendor server killed with SIGKILL leaves no session running past
its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secure_infer.errors import ModelNotFoundError
from secure_infer.twopc.party import LinkTls, ProgramMismatchError, TwoPartyError
from secure_infer.wire import ServerBusyError, ServerTimeoutError

__all__ = ["TwoPcModelSettings", "TwoPcSessions", "TwoPcSettings"]

log = logging.getLogger("secure_infer.vendor.twopc")

_WORKER = "secure_infer.vendor._twopc_worker"


@dataclass(frozen=True)
class TwoPcModelSettings:
    """A model served with the two-party engine: its loader and the vendor's private source."""

    name: str
    version: str
    loader: str
    source: Path
    fixed_point: dict[str, Any] | None = None

    def spec(self) -> dict[str, Any]:
        return {
            "loader": self.loader,
            "source": str(self.source),
            "fixed_point": self.fixed_point,
        }


@dataclass(frozen=True)
class TwoPcSettings:
    """Limits and timeouts of the two-party engine (the vendor config's ``twopc`` section)."""

    models: tuple[TwoPcModelSettings, ...]
    link_host: str = "127.0.0.1"
    max_sessions: int = 2
    session_timeout: float = 3600.0
    connect_timeout: float = 30.0
    recv_timeout: float = 120.0
    start_timeout: float = 120.0
    max_images: int = 10_000


@dataclass
class _Session:
    sid: str
    model: str
    hospital: str
    proc: asyncio.subprocess.Process
    started: float = field(default_factory=time.monotonic)
    watcher: asyncio.Task[None] | None = None
    outcome: dict[str, Any] | None = None


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kill ``proc`` (if still running) and wait for it."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    await proc.wait()


class TwoPcSessions:
    """The running sessions of one vendor server."""

    def __init__(self, settings: TwoPcSettings, tls: LinkTls) -> None:
        self.settings = settings
        self.tls = tls
        self.models = {m.name: m for m in settings.models}
        self.hashes: dict[str, str] = {}
        self._active: dict[str, _Session] = {}
        self.finished: list[dict[str, Any]] = []  # recent outcomes (tests, health)

    @property
    def active(self) -> int:
        return len(self._active)

    def worker_pids(self) -> list[int]:
        return [s.proc.pid for s in self._active.values()]

    async def _spawn(self, spec: dict[str, Any], *args: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            _WORKER,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,  # the worker's log lines go to the server's stderr (journald)
        )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(spec).encode() + b"\n")
        await proc.stdin.drain()
        proc.stdin.close()
        return proc

    @staticmethod
    async def _next_event(proc: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        if not line:
            await proc.wait()
            return {"event": "error", "code": "worker_crashed", "detail": f"exit {proc.returncode}"}
        try:
            event: dict[str, Any] = json.loads(line)
        except ValueError:
            return {"event": "error", "code": "worker_crashed", "detail": "unreadable report"}
        return event

    async def start(self) -> None:
        """Compile every model once (in a worker) to know the program hash to compare."""
        for m in self.settings.models:
            proc = await self._spawn({"model": m.spec()}, "--hash")
            try:
                ev = await self._next_event(proc, self.settings.start_timeout)
            except TimeoutError:
                ev = {"event": "error", "code": "timeout", "detail": "compiling took too long"}
            finally:
                await _kill(proc)
            if ev.get("event") != "compiled":
                raise TwoPartyError(
                    f"two-party model '{m.name}' cannot be served: {ev.get('code')}:"
                    f" {ev.get('detail')}",
                    code="invalid_model",
                )
            self.hashes[m.name] = str(ev["program_sha256"])
            log.info(
                "two-party model %s %s: program %s..", m.name, m.version, self.hashes[m.name][:16]
            )

    def model(self, name: str) -> TwoPcModelSettings:
        try:
            return self.models[name]
        except KeyError:
            raise ModelNotFoundError(
                f"model '{name}' is not served with the two-party engine; known:"
                f" {', '.join(sorted(self.models)) or 'none'}"
            ) from None

    async def open(
        self, name: str, version: str, program_sha256: str, hospital_link: str, hospital: str
    ) -> dict[str, Any]:
        """Start a session's worker; the answer for the hospital (link, session key)."""
        m = self.model(name)
        if version != m.version:
            raise ModelNotFoundError(
                f"model '{name}' is served in version {m.version}, not {version}",
                code="unknown_version",
            )
        ours = self.hashes[name]
        if program_sha256 != ours:
            log.warning(
                "2pc session for %s refused for hospital %s: program hash %s.. is not ours %s..",
                name,
                hospital,
                program_sha256[:16],
                ours[:16],
            )
            raise ProgramMismatchError(
                f"program hash mismatch for model '{name}' {version}: the vendor's is"
                f" {ours[:16]}.., the hospital's {program_sha256[:16]}..; compile the same"
                " architecture with the same fixed point and SPU version"
            )
        if len(self._active) >= self.settings.max_sessions:
            raise ServerBusyError(
                f"all {self.settings.max_sessions} two-party sessions are in use", retry_after=5
            )
        s = self.settings
        sid = secrets.token_hex(16)
        key = secrets.token_bytes(32)
        spec = {
            "model": m.spec(),
            "program_sha256": ours,
            "session_id": sid,
            "session_key": key.hex(),
            "hospital_link": hospital_link,
            "link_host": s.link_host,
            "tls": {"cert": str(self.tls.cert), "key": str(self.tls.key), "ca": str(self.tls.ca)},
            "connect_timeout": s.connect_timeout,
            "recv_timeout": s.recv_timeout,
            "session_timeout": s.session_timeout,
            "max_images": s.max_images,
        }
        proc = await self._spawn(spec)
        session = _Session(sid, name, hospital, proc)
        self._active[sid] = session  # counted from now on, so the bound holds during start-up
        try:
            ev = await self._next_event(proc, s.start_timeout)
            if ev.get("event") != "listening":
                raise TwoPartyError(
                    f"the session worker failed to start: {ev.get('code')}: {ev.get('detail')}",
                    code=str(ev.get("code") or "twopc_error"),
                )
        except BaseException as exc:  # timeout, cancelled request, failed start: reap now
            self._active.pop(sid, None)
            await _kill(proc)
            if isinstance(exc, TimeoutError):
                raise ServerTimeoutError(
                    f"the session worker did not start within {s.start_timeout:g} s",
                    retry_after=5,
                ) from None
            raise
        session.watcher = asyncio.create_task(self._watch(session))
        log.info(
            "2pc session %s.. opened: model %s, hospital %s, worker pid %d",
            sid[:8],
            name,
            hospital,
            proc.pid,
        )
        return {
            "session": sid,
            "token": key.hex(),
            "link": f"{s.link_host}:{ev['port']}",
            "program_sha256": ours,
            "connect_timeout_seconds": s.connect_timeout,
            "recv_timeout_seconds": s.recv_timeout,
            "session_timeout_seconds": s.session_timeout,
            "max_images": s.max_images,
        }

    async def _watch(self, session: _Session) -> None:
        """Follow one worker to its end; kill it past the session's deadline; always reap."""
        proc = session.proc
        outcome: dict[str, Any] = {"event": "error", "code": "worker_crashed", "detail": ""}
        deadline = session.started + self.settings.session_timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    outcome = {
                        "event": "error",
                        "code": "timeout",
                        "detail": f"session exceeded {self.settings.session_timeout:g} s",
                    }
                    break
                try:
                    ev = await self._next_event(proc, left)
                except TimeoutError:
                    continue
                if ev.get("event") in ("done", "error"):
                    outcome = ev
                    break
                log.info("2pc session %s.. %s", session.sid[:8], ev.get("event"))
        finally:
            if outcome.get("event") in ("done", "error") and "exit" not in outcome:
                # the worker reported its end: give it a moment to exit by itself
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 10)
            await _kill(proc)
            self._active.pop(session.sid, None)
            outcome = {**outcome, "session": session.sid, "exit": proc.returncode}
            session.outcome = outcome
            self.finished = [*self.finished[-31:], outcome]
            level = logging.INFO if outcome.get("event") == "done" else logging.WARNING
            log.log(
                level,
                "2pc session %s.. ended: %s %s (worker exit %s)",
                session.sid[:8],
                outcome.get("event"),
                outcome.get("code") or f"{outcome.get('images')} images",
                proc.returncode,
            )

    async def abort(self, sid: str, hospital: str) -> bool:
        """Kill the session's worker at the hospital's request (its party failed); ``False``
        if this hospital has no such running session."""
        session = self._active.get(sid)
        if session is None or session.hospital != hospital:
            return False
        log.info("2pc session %s.. aborted by the hospital", sid[:8])
        with contextlib.suppress(ProcessLookupError):
            session.proc.kill()
        if session.watcher is not None:
            with contextlib.suppress(Exception):
                await session.watcher
        return True

    async def shutdown(self) -> None:
        """Kill and reap every worker (server shutdown)."""
        sessions = list(self._active.values())
        for s in sessions:
            if s.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    s.proc.kill()
        for s in sessions:
            if s.watcher is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await s.watcher
            else:
                await _kill(s.proc)
