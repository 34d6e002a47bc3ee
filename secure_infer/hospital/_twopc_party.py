"""The hospital's party process: one SPU runtime over the TLS link, driven through pipes.

Why a process and not a thread of the node: when the vendor's party dies mid-session, SPU's
brpc link fails a background send and ends the *whole process* (exit 255) a few seconds later,
with no exception Python could catch (measured with SPU 0.9.5). The node must survive that, so
the party runs here and :class:`secure_infer.hospital.twopc.TwoPartySession` sees only a
closed pipe, which it reports as :class:`~secure_infer.twopc.party.PeerLostError`.

Pipe protocol (both ways a big-endian u64 length, then :mod:`secure_infer.framing` frames):
parent -> child ``[spec JSON, compiled program frames...]`` then ``[b"image", npy]`` per image
and ``[b"close"]``; child -> parent ``[b"ready", JSON]``, ``[b"outputs", npy...]``,
``[b"closed"]`` or ``[b"error", JSON]``. The program bytes come from the parent, i.e. from the
hospital's own compilation, and are re-hashed here; arrays are ``.npy`` without pickles.
"""

from __future__ import annotations

import io
import json
import os
import select
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from secure_infer.errors import InferenceError
from secure_infer.framing import decode_frames, encode_frames
from secure_infer.twopc.party import (
    HOSPITAL,
    LinkSettings,
    LinkTls,
    Party,
    PeerLostError,
    ProgramMismatchError,
    compiled_from_frames,
    exit_on_stuck,
)

_LEN = struct.Struct(">Q")
_MAX_MESSAGE = 1 << 34


def write_message(stream: IO[bytes], frames: Sequence[bytes]) -> None:
    data = encode_frames(frames)
    stream.write(_LEN.pack(len(data)) + data)
    stream.flush()


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks: list[bytes] = []
    while n > 0:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError("no message on the pipe in time")
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError("the pipe was closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_message(stream: IO[bytes], timeout: float | None = None) -> list[bytes]:
    """One message; ``TimeoutError`` after ``timeout`` s, ``EOFError`` when the pipe closed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    fd = stream.fileno()
    (n,) = _LEN.unpack(_read_exact(fd, _LEN.size, deadline))
    if n > _MAX_MESSAGE:
        raise EOFError("oversized message on the pipe")
    return decode_frames(_read_exact(fd, n, deadline), 1 << 16)


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def npy_array(data: bytes) -> np.ndarray:
    return np.asarray(np.load(io.BytesIO(data), allow_pickle=False))


def _run(spec: dict[str, Any], program_frames: Sequence[bytes], out: IO[bytes]) -> int:
    compiled = compiled_from_frames(program_frames)
    if compiled.sha256 != spec["program_sha256"]:
        raise ProgramMismatchError("hospital: the party process got another program")
    t = spec["tls"]
    link = LinkSettings(
        session_id=spec["session_id"],
        session_key=bytes.fromhex(spec["session_key"]),
        addresses=(spec["vendor_link"], spec["own_link"]),
        tls=LinkTls(Path(t["cert"]), Path(t["key"]), Path(t["ca"])),
        connect_timeout=float(spec["connect_timeout"]),
        recv_timeout=float(spec["recv_timeout"]),
    )
    party = Party(HOSPITAL, compiled, link)
    t0 = time.monotonic()

    def report(code: str, detail: str) -> None:
        write_message(out, [b"error", json.dumps({"code": code, "detail": detail}).encode()])

    party.open(exit_on_stuck(report))
    for i in range(compiled.n_weights):
        party.take(f"w{i}")
    write_message(out, [b"ready", json.dumps({"setup_seconds": time.monotonic() - t0}).encode()])
    inp = sys.stdin.buffer
    while True:
        try:
            msg = read_message(inp)
        except EOFError:  # the node went away: leave without a word to the vendor
            return 0
        if msg[0] == b"close":
            party.send(b"close")
            write_message(out, [b"closed", json.dumps(_traffic(party)).encode()])
            return 0
        if msg[0] != b"image" or len(msg) != 2:
            raise PeerLostError("hospital: unknown command on the pipe")
        x = npy_array(msg[1])
        before = _traffic(party)
        party.send(b"image")
        party.give("x", x)
        party.run()
        outs = party.receive_outputs()
        after = _traffic(party)
        stats = {k: after[k] - before[k] for k in after}
        write_message(out, [b"outputs", json.dumps(stats).encode(), *map(npy_bytes, outs)])


def _traffic(party: Party) -> dict[str, int]:
    return {"bytes_sent": party.bytes_sent, "bytes_received": party.bytes_received}


def main() -> int:
    # SPU's C++ logger writes to fd 1: fd 1 becomes stderr, our messages use a duplicate
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        first = read_message(sys.stdin.buffer, timeout=60)
        spec = json.loads(first[0])
        return _run(spec, first[1:], out)
    except InferenceError as exc:
        write_message(out, [b"error", json.dumps({"code": exc.code, "detail": str(exc)}).encode()])
        return 1
    except (EOFError, TimeoutError):
        return 1


if __name__ == "__main__":
    sys.exit(main())
