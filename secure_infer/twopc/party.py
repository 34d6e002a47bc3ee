"""One party of a two-party (Cheetah) session: compile, link, hand-shake, share, run, reveal.

Both parties run the same code with a different role (rank 0 the vendor, rank 1 the hospital);
the role-specific loops live in :mod:`secure_infer.vendor` and :mod:`secure_infer.hospital`.

Why this module exists beside SPU: SPU's wheel ships a simulator (both parties as threads of one
process) but no helper for two separate processes. What is hand-written here is only the
session around SPU's own pieces (``spu.utils.frontend.compile``, ``spu.Runtime``,
``spu.Io.make_shares``, ``spu.libspu.link.create_brpc``):

- **Link.** brpc with TLS on both directions (each party is TLS server *and* client on the
  link, so its certificate carries both extended key usages; see :mod:`secure_infer.vendor.certs`),
  the vendor's CA as the only trust anchor, receive and connect timeouts so a dead or stalled
  peer ends the session instead of hanging it.
- **Hand-shake before any secret.** brpc checks that the peer's certificate chains to the CA,
  but not *which* party it is; each side therefore proves knowledge of the session key the
  vendor issued over its mutual-TLS HTTPS API (HMAC-SHA-256 over the role and the program
  hash), and both compare the SHA-256 of the compiled program (SPU executable bytes + runtime
  config + SPU version). A wrong key is :class:`UnknownSessionError`, another program
  :class:`ProgramMismatchError`, on both sides, before any share is sent.
- **Inputs as shares made by their owner.** Cheetah refuses private (``VIS_PRIVATE``) inputs
  for some layers, so each owner splits its own tensor into two additive shares with
  ``Io.make_shares`` (fresh randomness each call) and sends the peer only the peer's share,
  which is uniformly random and says nothing of the tensor.
- **Output to one side.** The vendor sends its share of each output to the hospital; the
  hospital never sends its share, so only the hospital can reconstruct the result.

Nothing received from the peer is ever executed or unpickled: messages are byte strings in
:mod:`secure_infer.framing` frames, shares are SPU's own protobuf-encoded values, and each party
runs only the program it compiled itself.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from secure_infer.errors import InferenceError
from secure_infer.framing import FramingError, decode_frames, encode_frames
from secure_infer.twopc.program import FixedPoint, Program, TensorSpec

__all__ = [
    "HOSPITAL",
    "VENDOR",
    "Compiled",
    "LinkSettings",
    "LinkTls",
    "Party",
    "PeerLostError",
    "ProgramMismatchError",
    "TwoPartyError",
    "UnknownSessionError",
    "check_weights",
    "compile_program",
    "compiled_from_frames",
    "exit_on_stuck",
    "runtime_config",
]

log = logging.getLogger(__name__)

VENDOR = 0
"""Rank of the vendor's party (holds the weights)."""
HOSPITAL = 1
"""Rank of the hospital's party (holds the image, alone receives the outputs)."""

_ROLE_NAMES = {VENDOR: "vendor", HOSPITAL: "hospital"}
_HASH_DOMAIN = b"blindread-2pc-program-v1"
_PROOF_DOMAIN = b"blindread-2pc-session-v1"
_LEN = struct.Struct(">Q")
_MAX_FRAMES = 1 << 16
_REFUSAL_LINGER = 3.0  # seconds


class TwoPartyError(InferenceError):
    """Base of the two-party engine's errors."""

    code = "twopc_error"
    http_status = 500


class ProgramMismatchError(TwoPartyError):
    """The two parties compiled different programs (architecture, fixed point or SPU version)."""

    code = "program_mismatch"
    http_status = 409


class UnknownSessionError(TwoPartyError):
    """The peer on the link does not hold this session's key (unknown or forged session)."""

    code = "unknown_session"
    http_status = 403


class PeerLostError(TwoPartyError):
    """The peer died, stalled past the receive timeout, disconnected or broke the protocol.

    A 503 so the hospital's node retries the job like any other vendor failure.
    """

    code = "peer_lost"
    http_status = 503


# ------------------------------------------------------------------ compile
def runtime_config(fixed_point: FixedPoint) -> Any:
    """SPU's runtime config for Cheetah with two parties and ``fixed_point``; everything else
    SPU's defaults (so a benchmark against plain SPU compares like with like)."""
    import spu.libspu as libspu

    field = {"FM64": libspu.FieldType.FM64, "FM128": libspu.FieldType.FM128}[fixed_point.field]
    return libspu.RuntimeConfig(
        protocol=libspu.ProtocolKind.CHEETAH,
        field=field,
        fxp_fraction_bits=fixed_point.fraction_bits,
    )


@dataclass(frozen=True)
class Compiled:
    """A program compiled by SPU in this process, with the hash both parties compare."""

    executable: Any  # spu.libspu.Executable
    config: Any  # spu.libspu.RuntimeConfig
    input: TensorSpec  # the hospital's input ("x"); the weights follow as w0, w1, ...
    n_weights: int
    outputs: tuple[TensorSpec, ...]
    sha256: str

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self.executable.output_names)

    def to_frames(self) -> list[bytes]:
        """The compiled program as bytes, for another process of the *same* party (the
        hospital's party process); :func:`compiled_from_frames` re-hashes them."""
        meta = {
            "input": [self.input.name, list(self.input.shape), self.input.dtype],
            "n_weights": self.n_weights,
            "outputs": [[o.name, list(o.shape), o.dtype] for o in self.outputs],
        }
        return [
            json.dumps(meta).encode(),
            self.executable.SerializeToString(),
            self.config.SerializeToString(),
        ]


def _program_sha256(executable_bytes: bytes, config_bytes: bytes) -> str:
    import spu

    return hashlib.sha256(
        _len_prefixed(_HASH_DOMAIN, spu.__version__.encode(), executable_bytes, config_bytes)
    ).hexdigest()


def compiled_from_frames(frames: Sequence[bytes]) -> Compiled:
    """Inverse of :meth:`Compiled.to_frames` (the hash is recomputed, never taken)."""
    import spu.libspu as libspu

    meta_raw, exe_bytes, cfg_bytes = frames
    meta = json.loads(meta_raw)
    exe = libspu.Executable()
    cfg = libspu.RuntimeConfig()
    if not exe.ParseFromString(exe_bytes) or not cfg.ParseFromString(cfg_bytes):
        raise TwoPartyError("unreadable compiled program")
    name, shape, dtype = meta["input"]
    return Compiled(
        executable=exe,
        config=cfg,
        input=TensorSpec(name, tuple(shape), dtype),
        n_weights=int(meta["n_weights"]),
        outputs=tuple(TensorSpec(n, tuple(sh), dt) for n, sh, dt in meta["outputs"]),
        sha256=_program_sha256(exe_bytes, cfg_bytes),
    )


def _len_prefixed(*parts: bytes) -> bytes:
    return b"".join(_LEN.pack(len(p)) + p for p in parts)


def compile_program(program: Program, fixed_point: FixedPoint) -> Compiled:
    """Compile ``program`` with SPU (all arguments secret) and hash the result.

    The hash covers the SPU executable (names and bytecode), the runtime config and SPU's
    version: any difference in architecture, shapes, fixed point or toolchain changes it.
    """
    import spu.libspu as libspu
    import spu.utils.frontend as fe

    specs = (program.input, *program.weights)
    args = [np.zeros(s.shape, dtype=np.dtype(s.dtype)) for s in specs]
    names = ["x", *(f"w{i}" for i in range(len(program.weights)))]
    fn = program.fn

    def blindread_program(*a: Any) -> Any:
        # JAX names the lowered module after the traced function: a fixed name keeps the hash
        # a function of the architecture only (file paths and line numbers are not in it)
        return fn(*a)

    try:
        exe, out_info = fe.compile(
            fe.Kind.JAX,
            blindread_program,
            args,
            {},
            names,
            [libspu.Visibility.VIS_SECRET] * len(names),
            lambda flat: [f"out{i}" for i in range(len(flat))],
        )
    except Exception as exc:  # jax tracing / SPU compiler errors, any type
        raise TwoPartyError(
            f"SPU cannot compile the program: {type(exc).__name__}: {_first_line(exc)}",
            code="unsupported_program",
        ) from exc
    out_names = tuple(exe.output_names)
    if len(out_names) != len(program.outputs):
        raise TwoPartyError(
            f"the program returns {len(out_names)} arrays, its outputs list {len(program.outputs)}",
            code="unsupported_program",
        )
    import jax

    for spec, info in zip(program.outputs, jax.tree_util.tree_leaves(out_info), strict=True):
        if tuple(info.shape) != tuple(spec.shape):
            raise TwoPartyError(
                f"output '{spec.name}' has shape {tuple(info.shape)}, the program declares"
                f" {tuple(spec.shape)}",
                code="unsupported_program",
            )
    # the name SPU takes from the Python function is not part of the architecture: fix it
    executable = libspu.Executable(
        name="blindread", input_names=names, output_names=list(out_names), code=exe.code
    )
    config = runtime_config(fixed_point)
    digest = _program_sha256(executable.SerializeToString(), config.SerializeToString())
    return Compiled(
        executable, config, program.input, len(program.weights), program.outputs, digest
    )


def exit_on_stuck(report: Callable[[str, str], None]) -> Callable[[str], None]:
    """An ``on_stuck`` for :meth:`Party.open` in a dedicated party process: ``report(code,
    message)``, then end the process at once (exit 3)."""

    def on_stuck(message: str) -> None:
        try:
            report(PeerLostError.code, message)
        finally:
            os._exit(3)

    return on_stuck


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


# ------------------------------------------------------------------ link
@dataclass(frozen=True)
class LinkTls:
    """This party's certificate and key, and the CA both parties' certificates chain to."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class LinkSettings:
    """Everything one party needs to join a session's link.

    ``addresses`` are ``host:port`` by rank (vendor first); each party listens on its own and
    connects to the other's. ``session_key`` is 32 random bytes issued by the vendor over HTTPS.
    """

    session_id: str
    session_key: bytes
    addresses: tuple[str, str]
    tls: LinkTls
    connect_timeout: float = 30.0
    recv_timeout: float = 60.0


def _share_bytes(share: Any) -> bytes:
    return encode_frames([share.meta, *share.share_chunks])


def _share_from(data: bytes) -> Any:
    import spu.libspu as libspu

    parts = decode_frames(data, _MAX_FRAMES)
    if not parts:
        raise FramingError("an empty share")
    share = libspu.Share()
    share.meta = parts[0]
    share.share_chunks = parts[1:]
    return share


class Party:
    """This process's party in one session: one SPU runtime over one TLS link.

    Use: ``open()`` (link + hand-shake), then the role's sequence of :meth:`give`,
    :meth:`take`, :meth:`run`, :meth:`send_outputs` / :meth:`receive_outputs`, and
    :meth:`close`. Every failure of the peer or the link is a :class:`PeerLostError`.
    """

    def __init__(self, role: int, compiled: Compiled, link: LinkSettings) -> None:
        if role not in _ROLE_NAMES:
            raise ValueError(f"role must be {VENDOR} (vendor) or {HOSPITAL} (hospital)")
        self.role = role
        self.peer = 1 - role
        self.compiled = compiled
        self.link = link
        self._lctx: Any = None
        self._rt: Any = None
        self._io: Any = None
        self.bytes_sent = 0
        self.bytes_received = 0

    @property
    def name(self) -> str:
        return _ROLE_NAMES[self.role]

    # -------------------------------------------------------------- link + hand-shake
    def open(self, on_stuck: Callable[[str], None] | None = None) -> None:
        """Join the link (waits up to ``connect_timeout`` for the peer) and hand-shake.

        brpc's connect retries do not bound the total time (a TLS handshake that fails is
        retried with its own timeouts, several minutes in all), so a timer bounds it: past
        ``connect_timeout`` (+ a margin) ``on_stuck(message)`` is called from the timer's
        thread; a party process reports and exits there (the C++ call cannot be cancelled).
        """
        import spu
        import spu.libspu as libspu

        s = self.link
        desc = libspu.link.Desc()
        desc.id = s.session_id
        retry_ms = 200
        desc.connect_retry_interval_ms = retry_ms
        desc.connect_retry_times = max(1, int(s.connect_timeout * 1000 / retry_ms))
        desc.recv_timeout_ms = max(1000, int(s.recv_timeout * 1000))
        desc.http_timeout_ms = max(1000, int(s.recv_timeout * 1000))
        for rank, addr in enumerate(s.addresses):
            desc.add_party(_ROLE_NAMES[rank], addr)
        desc.enable_ssl = True
        for opts in (desc.server_ssl_opts, desc.client_ssl_opts):
            opts.cert.certificate_path = str(s.tls.cert)
            opts.cert.private_key_path = str(s.tls.key)
            opts.verify.ca_file_path = str(s.tls.ca)
            opts.verify.verify_depth = 1  # > 0: verify the peer's certificate against the CA
        stuck = (
            f"{self.name}: the peer did not join the TLS link within {s.connect_timeout:g} s"
            " (not running, unreachable, or its certificate is not from the CA)"
        )
        timer = None
        if on_stuck is not None:
            timer = threading.Timer(s.connect_timeout + 5.0, on_stuck, args=(stuck,))
            timer.daemon = True
            timer.start()
        try:
            self._lctx = libspu.link.create_brpc(desc, self.role)
            self._handshake()
        except TwoPartyError:  # hand-shake refusals and peer losses keep their own type
            raise
        except Exception as exc:  # yacl raises RuntimeError subclasses with C++ text
            raise PeerLostError(f"{stuck} ({_first_line(exc)})") from exc
        finally:
            if timer is not None:
                timer.cancel()
        self._rt = spu.Runtime(self._lctx, self.compiled.config)
        self._io = spu.Io(2, self.compiled.config)

    def _proof(self, role: int) -> str:
        msg = _len_prefixed(
            _PROOF_DOMAIN,
            self.link.session_id.encode(),
            _ROLE_NAMES[role].encode(),
            self.compiled.sha256.encode(),
        )
        return hmac.new(self.link.session_key, msg, hashlib.sha256).hexdigest()

    def _handshake(self) -> None:
        mine = {
            "role": self.name,
            "program_sha256": self.compiled.sha256,
            "proof": self._proof(self.role),
        }
        self.send(b"hello", json.dumps(mine).encode())
        (raw,) = self.recv(b"hello", 1)
        try:
            theirs = json.loads(raw)
            their_sha = str(theirs["program_sha256"])
            their_proof = str(theirs["proof"])
            their_role = str(theirs["role"])
        except (ValueError, KeyError, TypeError):
            raise PeerLostError(f"{self.name}: the peer's hand-shake is malformed") from None
        if their_role != _ROLE_NAMES[self.peer]:
            raise UnknownSessionError(
                f"{self.name}: the peer claims the role '{their_role[:20]}', expected"
                f" '{_ROLE_NAMES[self.peer]}'"
            )
        # the proof binds the peer's claimed hash, so check it over the hash the peer sent
        expected = hmac.new(
            self.link.session_key,
            _len_prefixed(
                _PROOF_DOMAIN,
                self.link.session_id.encode(),
                _ROLE_NAMES[self.peer].encode(),
                their_sha.encode(),
            ),
            hashlib.sha256,
        ).hexdigest()
        refused = (
            not hmac.compare_digest(expected, their_proof) or their_sha != self.compiled.sha256
        )
        if refused:
            # our hello may still be in brpc's send queue: stay a moment so the peer receives it
            # and refuses too (it sees the same mismatch), instead of timing out
            time.sleep(_REFUSAL_LINGER)
        if not hmac.compare_digest(expected, their_proof):
            raise UnknownSessionError(
                f"{self.name}: the peer on the link does not hold this session's key"
                f" (session {self.link.session_id[:8]}..); nothing was shared"
            )
        if their_sha != self.compiled.sha256:
            raise ProgramMismatchError(
                f"{self.name}: program hash mismatch: ours {self.compiled.sha256[:16]}..,"
                f" the peer's {their_sha[:16]}..; both sides must compile the same"
                " architecture with the same fixed point and SPU version; nothing was shared"
            )

    # -------------------------------------------------------------- messages
    def send(self, kind: bytes, *payload: bytes) -> None:
        """Send one framed message ``[kind, *payload]`` to the peer."""
        data = encode_frames([kind, *payload])
        try:
            self._lctx.send(self.peer, data)
        except Exception as exc:
            raise PeerLostError(
                f"{self.name}: sending to the peer failed ({_first_line(exc)})"
            ) from exc
        self.bytes_sent += len(data)

    def recv(self, kind: bytes, count: int | None = None) -> list[bytes]:
        """Receive one message; it must be ``kind`` (and have ``count`` payload frames)."""
        got, payload = self.recv_any()
        if got != kind or (count is not None and len(payload) != count):
            raise PeerLostError(
                f"{self.name}: protocol error: expected '{kind.decode()}', got {got[:16]!r}"
            )
        return payload

    def recv_any(self) -> tuple[bytes, list[bytes]]:
        """Receive one message: ``(kind, payload frames)``."""
        try:
            data = self._lctx.recv(self.peer)
        except Exception as exc:
            raise PeerLostError(
                f"{self.name}: no message from the peer within {self.link.recv_timeout:g} s"
                f" or the link broke ({_first_line(exc)})"
            ) from exc
        self.bytes_received += len(data)
        try:
            frames = decode_frames(bytes(data), _MAX_FRAMES)
        except FramingError as exc:
            raise PeerLostError(f"{self.name}: malformed message from the peer ({exc})") from None
        if not frames:
            raise PeerLostError(f"{self.name}: protocol error: an empty message")
        return frames[0], frames[1:]

    # -------------------------------------------------------------- shares
    def give(self, name: str, value: np.ndarray) -> None:
        """Secret-share this party's own ``value`` as variable ``name``: keep our share, send
        the peer its (uniformly random) share."""
        import spu.libspu as libspu

        shares = self._io.make_shares(np.ascontiguousarray(value), libspu.Visibility.VIS_SECRET)
        self._rt.set_var(name, shares[self.role])
        self.send(b"share", name.encode(), _share_bytes(shares[self.peer]))

    def take(self, name: str) -> None:
        """Receive this party's share of the peer's variable ``name``."""
        got_name, data = self.recv(b"share", 2)
        if got_name != name.encode():
            raise PeerLostError(f"{self.name}: expected the share of '{name}', got another")
        try:
            share = _share_from(data)
            self._rt.set_var(name, share)
        except (FramingError, RuntimeError, ValueError) as exc:
            raise PeerLostError(f"{self.name}: unusable share of '{name}' ({exc})") from None

    def run(self) -> None:
        """Run the compiled program once (both parties at the same time)."""
        try:
            self._rt.run(self.compiled.executable)
        except Exception as exc:
            raise PeerLostError(
                f"{self.name}: the two-party run failed: peer lost, stalled beyond"
                f" {self.link.recv_timeout:g} s or inputs unusable ({_first_line(exc)})"
            ) from exc

    def send_outputs(self) -> None:
        """Vendor: send our share of every output to the hospital (we never see the result)."""
        if self.role != VENDOR:
            raise ValueError("only the vendor sends its output shares; the hospital keeps its own")
        shares = [_share_bytes(self._rt.get_var(n)) for n in self.compiled.output_names]
        self.send(b"outputs", *shares)

    def receive_outputs(self) -> list[np.ndarray]:
        """Hospital: receive the vendor's output shares and reconstruct the outputs."""
        if self.role != HOSPITAL:
            raise ValueError("only the hospital reconstructs the outputs")
        theirs = self.recv(b"outputs", len(self.compiled.output_names))
        out: list[np.ndarray] = []
        for name, data, spec in zip(
            self.compiled.output_names, theirs, self.compiled.outputs, strict=True
        ):
            try:
                value = self._io.reconstruct([_share_from(data), self._rt.get_var(name)])
            except (FramingError, RuntimeError, ValueError) as exc:
                raise PeerLostError(f"{self.name}: unusable output share ({exc})") from None
            out.append(np.asarray(value).reshape(spec.shape))
        return out

    def close(self) -> None:
        """Leave the link (idempotent)."""
        # Not ``stop_link()``: it notifies the peer in brpc's background threads, and when the
        # peer has already gone (always the case for one side, and after any failure) the
        # failed notification ends this whole process (exit 255) seconds later. Dropping the
        # context closes its channels without notifying.
        self._lctx = None
        self._rt = None


def check_weights(program: Program, weights: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The vendor's weights as contiguous arrays in Program order, shapes checked."""
    if len(weights) != len(program.weights):
        raise TwoPartyError(
            f"{len(weights)} weight tensors for a program that takes {len(program.weights)}",
            code="unsupported_program",
        )
    out = []
    for spec, w in zip(program.weights, weights, strict=True):
        arr = np.ascontiguousarray(w, dtype=np.dtype(spec.dtype))
        if arr.shape != tuple(spec.shape):
            raise TwoPartyError(
                f"weight '{spec.name}' has shape {arr.shape}, the program expects"
                f" {tuple(spec.shape)}",
                code="unsupported_program",
            )
        out.append(arr)
    return out
