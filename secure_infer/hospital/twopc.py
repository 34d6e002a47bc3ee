"""The hospital's party of a two-party (Cheetah) session with a vendor.

Flow of :class:`TwoPartySession`: compile the public program here (never code from the vendor),
open a session through the vendor's mutual-TLS HTTPS API with the program's hash, a fresh job
token and the port this party listens on; the vendor answers only if its own hash is the same,
and starts a worker that joins the TLS link. On the link both parties prove the session key and
compare the hashes again before anything secret flows; the vendor then sends the hospital its
shares of the weights (random to the hospital) once per session. Per image the hospital shares
its image the same way, both run the program, and the vendor sends its shares of the outputs,
which only the hospital can combine. Nothing the hospital holds in clear leaves the process.

The party runs in its own process (:mod:`secure_infer.hospital._twopc_party`: SPU's link ends
the whole process when its peer dies), driven through pipes; the link's receive timeouts and a
reply timeout here make a dead or stalled vendor end :meth:`TwoPartySession.infer` with
:class:`PeerLostError` instead of hanging it, and the vendor's worker is then aborted over
HTTPS (``DELETE``)::

    with VendorClient(settings, key_dir) as vendor:
        with TwoPartySession(vendor, "cxr", "1.0", program, fixed_point) as session:
            for x in images:
                (logits,) = session.infer(x)
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np

from secure_infer.framing import FramingError
from secure_infer.hospital._twopc_party import npy_array, npy_bytes, read_message, write_message
from secure_infer.hospital.client import VendorClient
from secure_infer.twopc.party import (
    Compiled,
    PeerLostError,
    ProgramMismatchError,
    TwoPartyError,
    UnknownSessionError,
    compile_program,
)
from secure_infer.twopc.program import FixedPoint, Program
from secure_infer.wire import new_job_token

__all__ = ["SessionStats", "TwoPartySession"]

log = logging.getLogger(__name__)

_ERRORS: dict[str, type[TwoPartyError]] = {
    "program_mismatch": ProgramMismatchError,
    "unknown_session": UnknownSessionError,
    "peer_lost": PeerLostError,
}


@dataclass
class SessionStats:
    """Figures of one session (benchmarks, ``model check``)."""

    compile_seconds: float = 0.0
    open_seconds: float = 0.0  # HTTPS request + worker start
    setup_seconds: float = 0.0  # link, hand-shake, weight shares
    image_seconds: list[float] = field(default_factory=list)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class TwoPartySession:
    """One session with a vendor: set up once, then :meth:`infer` any number of images."""

    def __init__(
        self,
        vendor: VendorClient,
        model: str,
        version: str,
        program: Program,
        fixed_point: FixedPoint | None = None,
        *,
        link_host: str = "127.0.0.1",
        link_port: int = 0,
        connect_timeout: float | None = None,
        recv_timeout: float | None = None,
        compiled: Compiled | None = None,
        party_timeout: float | None = None,
    ) -> None:
        """``link_host``/``link_port``: where this party listens for the vendor's half of the
        link (the vendor connects to this port at the address its HTTPS request came from);
        port 0 picks a free one. Timeouts default to the vendor's announced ones."""
        self.vendor = vendor
        self.model = model
        self.version = version
        self.program = program
        self.fixed_point = fixed_point or FixedPoint()
        self.link_host = link_host
        self.link_port = link_port
        self.connect_timeout = connect_timeout
        self.recv_timeout = recv_timeout
        self.compiled = compiled
        self.party_timeout = party_timeout
        self._reply_timeout = 600.0
        self._proc: subprocess.Popen[bytes] | None = None
        self.job = new_job_token()
        self.session_id: str | None = None
        self.stats = SessionStats()

    def __enter__(self) -> TwoPartySession:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(graceful=exc is None)

    def open(self) -> None:
        """Compile, ask the vendor for a session, join the link, receive the weight shares."""
        t0 = time.monotonic()
        if self.compiled is None:
            self.compiled = compile_program(self.program, self.fixed_point)
        t1 = time.monotonic()
        self.stats.compile_seconds = t1 - t0
        port = self.link_port or _free_port(self.link_host)
        answer: dict[str, Any] = self.vendor.post_json(
            f"/models/{self.model}/2pc/sessions",
            {
                "version": self.version,
                "job": self.job,
                "program_sha256": self.compiled.sha256,
                "link_port": port,
            },
        )
        t2 = time.monotonic()
        self.stats.open_seconds = t2 - t1
        try:
            self.session_id = str(answer["session"])
            key = bytes.fromhex(str(answer["token"]))
            vendor_link = str(answer["link"])
            connect = float(self.connect_timeout or answer["connect_timeout_seconds"])
            recv = float(self.recv_timeout or answer["recv_timeout_seconds"])
        except (KeyError, ValueError, TypeError):
            raise TwoPartyError("the vendor's session answer is malformed") from None
        s = self.vendor.settings
        spec = {
            "session_id": self.session_id,
            "session_key": key.hex(),
            "vendor_link": vendor_link,
            "own_link": f"{self.link_host}:{port}",
            "tls": {"cert": str(s.client_cert), "key": str(s.client_key), "ca": str(s.ca)},
            "connect_timeout": connect,
            "recv_timeout": recv,
            "program_sha256": self.compiled.sha256,
        }
        self._reply_timeout = self.party_timeout or max(600.0, 10 * recv)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "secure_infer.hospital._twopc_party"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            assert self._proc.stdin is not None
            write_message(
                self._proc.stdin, [json.dumps(spec).encode(), *self.compiled.to_frames()]
            )
            self._expect(b"ready", connect + recv + 120)
        except BaseException:
            self._end()
            raise
        self.stats.setup_seconds = time.monotonic() - t2
        log.info(
            "2pc session %s.. with %s %s set up in %.2f s (job %s)",
            self.session_id[:8],
            self.model,
            self.version,
            self.stats.setup_seconds,
            self.job,
        )

    def _expect(self, kind: bytes, timeout: float) -> list[bytes]:
        """The party process's next reply, which must be ``kind``; else the session is over."""
        proc = self._proc
        if proc is None:
            raise TwoPartyError("the session is not open", code="session_closed")
        assert proc.stdout is not None
        try:
            msg = read_message(proc.stdout, timeout)
        except TimeoutError:
            self._end()
            raise PeerLostError(f"hospital: the party got no result within {timeout:g} s") from None
        except (EOFError, FramingError):
            self._end()
            raise PeerLostError(
                f"hospital: the party process ended (exit {proc.returncode}): the vendor"
                " died, stalled or disconnected"
            ) from None
        if msg[0] == b"error":
            self._end()
            info = json.loads(msg[1])
            cls = _ERRORS.get(str(info.get("code")), PeerLostError)
            raise cls(str(info.get("detail")))
        if msg[0] != kind:
            self._end()
            raise PeerLostError(f"hospital: unexpected reply {msg[0][:16]!r} from the party")
        return msg[1:]

    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        """The program's outputs for one input ``x`` (shape of ``program.input``)."""
        spec = self.program.input
        arr = np.ascontiguousarray(x, dtype=np.dtype(spec.dtype))
        if arr.shape != tuple(spec.shape):
            raise TwoPartyError(
                f"input has shape {arr.shape}, the program takes {tuple(spec.shape)}",
                code="bad_input",
            )
        proc = self._proc
        if proc is None:
            raise TwoPartyError("the session is not open", code="session_closed")
        assert proc.stdin is not None
        t0 = time.monotonic()
        try:
            write_message(proc.stdin, [b"image", npy_bytes(arr)])
        except OSError:
            self._end()
            raise PeerLostError("hospital: the party process is gone") from None
        reply = self._expect(b"outputs", self._reply_timeout)
        out = [npy_array(b) for b in reply[1:]]
        self.stats.image_seconds.append(time.monotonic() - t0)
        return out

    def close(self, graceful: bool = True) -> None:
        """End the session (tells the vendor when ``graceful``); idempotent; the party process
        is always gone afterwards."""
        proc = self._proc
        if proc is None:
            return
        closed = False
        try:
            if graceful and proc.poll() is None:
                assert proc.stdin is not None
                write_message(proc.stdin, [b"close"])
                self._expect(b"closed", 30)
                closed = True
        except (OSError, TwoPartyError) as exc:
            log.info("2pc session close: %s", exc)
        finally:
            self._end(abort=not closed)

    def _end(self, abort: bool = True) -> None:
        """Stop and reap the party process; a session that did not end cleanly is aborted at
        the vendor too (best effort), so its worker is gone at once, not at its timeout."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if abort and self.session_id is not None:
            try:
                self.vendor.delete(f"/models/{self.model}/2pc/sessions/{self.session_id}")
            except Exception as exc:  # the session may have ended already; never mask the cause
                log.info("2pc session %s.. abort: %s", self.session_id[:8], exc)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
