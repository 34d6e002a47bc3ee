"""The vendor's append-only hash chain of inference requests.

One JSON object per line::

    {"seq": 7, "prev_hash": "<entry_hash of seq 6 or 64 zeros>", "time": "2026-...Z",
     "job": "<job token>", "model": "demo-lesion", "model_version": "1.0",
     "context_sha256": "...", "request_sha256": "...", "response_sha256": "...",
     "entry_hash": "<sha256 of the canonical JSON of every other field>"}

``request_sha256`` / ``response_sha256`` are the SHA-256 of the framed bodies
(:func:`secure_infer.framing.frames_sha256`), so the hospital's audit ledger, which records the
same values for what it sent and received, can be cross-checked against this file entry by entry
(joined on the job token). Nothing in it identifies a patient or a study.

Each append is written with a single ``write`` and fsync'd before the response leaves, so an
acknowledged request is never missing; a torn last line left by a crash is cut off on open (its
request was never answered).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from secure_infer.errors import InferenceError

__all__ = ["GENESIS", "ChainError", "HashChain", "entry_hash", "verify_chain"]

GENESIS = "0" * 64


class ChainError(InferenceError):
    """The chain file is broken (a link or an entry hash does not match)."""


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``entry`` without its ``entry_hash`` field."""
    body = {k: v for k, v in entry.items() if k != "entry_hash"}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canon.encode()).hexdigest()


def verify_chain(path: Path) -> int:
    """Check every link of a chain file; return the number of entries or raise ChainError."""
    prev = GENESIS
    n = 0
    if not path.exists():
        return 0
    with path.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                raise ChainError(f"{path}:{lineno}: not JSON") from None
            if entry.get("prev_hash") != prev:
                raise ChainError(f"{path}:{lineno}: prev_hash does not link to entry {n}")
            if entry.get("seq") != n + 1:
                raise ChainError(f"{path}:{lineno}: seq {entry.get('seq')} != {n + 1}")
            if entry_hash(entry) != entry.get("entry_hash"):
                raise ChainError(f"{path}:{lineno}: entry_hash does not match its content")
            prev = entry["entry_hash"]
            n += 1
    return n


@dataclass(frozen=True)
class _Tail:
    seq: int
    hash: str


class HashChain:
    """Thread-safe appender to a chain file (one process owns the file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tail = self._recover()

    def _recover(self) -> _Tail:
        if not self.path.exists():
            return _Tail(0, GENESIS)
        data = self.path.read_bytes()
        keep = data
        if data and not data.endswith(b"\n"):
            # torn final write from a crash: that request was never acknowledged
            keep = data[: data.rfind(b"\n") + 1]
            with self.path.open("r+b") as fh:
                fh.truncate(len(keep))
                fh.flush()
                os.fsync(fh.fileno())
        n = verify_chain(self.path)
        if n == 0:
            return _Tail(0, GENESIS)
        last = json.loads(keep.splitlines()[-1])
        return _Tail(int(last["seq"]), str(last["entry_hash"]))

    @property
    def head(self) -> str:
        """Hash of the newest entry (64 zeros while empty)."""
        return self._tail.hash

    def append(
        self,
        *,
        job: str,
        model: str,
        model_version: str,
        context_sha256: str,
        request_sha256: str,
        response_sha256: str,
    ) -> dict[str, Any]:
        """Append one entry, fsync it, and return it (with its ``entry_hash``)."""
        with self._lock:
            entry: dict[str, Any] = {
                "seq": self._tail.seq + 1,
                "prev_hash": self._tail.hash,
                "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "job": job,
                "model": model,
                "model_version": model_version,
                "context_sha256": context_sha256,
                "request_sha256": request_sha256,
                "response_sha256": response_sha256,
            }
            entry["entry_hash"] = entry_hash(entry)
            line = (json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n").encode()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._tail = _Tail(entry["seq"], entry["entry_hash"])
            return entry
