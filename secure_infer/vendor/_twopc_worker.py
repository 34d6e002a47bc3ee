"""The vendor's party of one two-party session, as its own process (``python -m`` this module).

The server (:mod:`secure_infer.vendor._twopc_sessions`) starts one worker per session, writes
the session's JSON spec to its stdin and reads JSON lines from its stdout::

    {"event": "compiled", "program_sha256": ...}          (with --hash: then exit 0)
    {"event": "listening", "port": P, "program_sha256": ...}
    {"event": "ready", "setup_seconds": ...}               (link up, weights shared)
    {"event": "done", "images": N, "seconds": ...}         (the hospital closed the session)
    {"event": "error", "code": ..., "detail": ...}         (then exit 1)

Why a process per session: SPU's runtime and link are C++ objects that cannot be cancelled from
Python; a session whose peer misbehaves is ended by killing its process, which always works,
and the server's event loop never runs SPU code. The worker loads the model itself (its own
installed loader and weight file, named by the server's config), so nothing but the spec's
plain JSON crosses from the server, and nothing at all from the hospital but SPU shares.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from secure_infer.errors import InferenceError
from secure_infer.twopc.party import (
    VENDOR,
    Compiled,
    LinkSettings,
    LinkTls,
    Party,
    ProgramMismatchError,
    TwoPartyError,
    check_weights,
    compile_program,
    exit_on_stuck,
)
from secure_infer.twopc.program import FixedPoint, Program

log = logging.getLogger("secure_infer.vendor.twopc")


def load_model(
    loader: str, source: str, fixed_point: dict[str, Any] | None
) -> tuple[Program, list[np.ndarray], FixedPoint]:
    """Call the vendor's configured ``module:function`` on ``source``.

    The function returns ``(program, weights)`` or ``(program, weights, fixed_point)``;
    a ``fixed_point`` in the config wins over the loader's.
    """
    mod_name, _, fn_name = loader.partition(":")
    if not mod_name or not fn_name:
        raise TwoPartyError(f"loader '{loader}' is not 'module:function'", code="invalid_config")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise TwoPartyError(f"loader '{loader}' not found: {exc}", code="invalid_config") from None
    got = fn(Path(source))
    program, weights = got[0], got[1]
    fp = got[2] if len(got) > 2 else FixedPoint()
    if fixed_point:
        fp = FixedPoint(**fixed_point)
    if not isinstance(program, Program):
        raise TwoPartyError(f"loader '{loader}' did not return a Program", code="invalid_config")
    return program, check_weights(program, weights), fp


_REPORTS: Any = sys.stdout


def _emit(event: str, **fields: Any) -> None:
    _REPORTS.write(json.dumps({"event": event, **fields}) + "\n")
    _REPORTS.flush()


def _reports_apart() -> None:
    """Keep the report channel for our JSON lines only: SPU's C++ logger writes to fd 1, so
    fd 1 becomes stderr and the reports go to a duplicate of the original stdout."""
    global _REPORTS
    _REPORTS = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def serve_session(party: Party, weights: Sequence[np.ndarray], max_images: int) -> int:
    """The vendor's loop: share the weights once, then one run per image until ``close``."""
    t0 = time.monotonic()
    party.open(exit_on_stuck(lambda code, detail: _emit("error", code=code, detail=detail)))
    for i, w in enumerate(weights):
        party.give(f"w{i}", w)
    _emit("ready", setup_seconds=round(time.monotonic() - t0, 3))
    images = 0
    while True:
        kind, _ = party.recv_any()
        if kind == b"close":
            return images
        if kind != b"image":
            raise TwoPartyError(f"protocol error: unexpected message {kind[:16]!r}", "peer_lost")
        if images >= max_images:
            raise TwoPartyError(
                f"the session's limit of {max_images} images is reached", code="session_limit"
            )
        party.take("x")
        party.run()
        party.send_outputs()
        images += 1
        log.info("session %s.. image %d done", party.link.session_id[:8], images)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    _reports_apart()
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    spec = json.loads(sys.stdin.readline())
    if "session_timeout" in spec:  # our own deadline, even if the server that watches us died
        signal.alarm(int(float(spec["session_timeout"])) + 30)
    m = spec["model"]
    party: Party | None = None
    try:
        program, weights, fp = load_model(m["loader"], m["source"], m.get("fixed_point"))
        compiled: Compiled = compile_program(program, fp)
        if "--hash" in args:
            _emit("compiled", program_sha256=compiled.sha256)
            return 0
        if compiled.sha256 != spec["program_sha256"]:
            raise ProgramMismatchError(
                f"vendor: program hash mismatch: ours {compiled.sha256[:16]}.., the session's"
                f" {spec['program_sha256'][:16]}..; nothing was shared"
            )
        host = spec["link_host"]
        port = _free_port(host)
        t = spec["tls"]
        link = LinkSettings(
            session_id=spec["session_id"],
            session_key=bytes.fromhex(spec["session_key"]),
            addresses=(f"{host}:{port}", spec["hospital_link"]),
            tls=LinkTls(Path(t["cert"]), Path(t["key"]), Path(t["ca"])),
            connect_timeout=float(spec["connect_timeout"]),
            recv_timeout=float(spec["recv_timeout"]),
        )
        _emit("listening", port=port, program_sha256=compiled.sha256)
        party = Party(VENDOR, compiled, link)
        t0 = time.monotonic()
        images = serve_session(party, weights, int(spec["max_images"]))
        _emit(
            "done",
            images=images,
            seconds=round(time.monotonic() - t0, 3),
            bytes_sent=party.bytes_sent,
            bytes_received=party.bytes_received,
        )
        return 0
    except InferenceError as exc:
        log.warning("session %s.. ended: %s %s", spec.get("session_id", "?")[:8], exc.code, exc)
        _emit("error", code=exc.code, detail=str(exc))
        return 1
    except Exception as exc:  # a bug or SPU error outside the party's own mapping
        log.exception("session %s.. failed", spec.get("session_id", "?")[:8])
        _emit("error", code="internal_error", detail=type(exc).__name__)
        return 1
    finally:
        if party is not None:
            party.close()


if __name__ == "__main__":
    sys.exit(main())
