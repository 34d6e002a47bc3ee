"""Durable spool of received instances, one directory per study batch.

Layout::

    <root>/.tmp/<random>.part          partial writes (deleted at start-up)
    <root>/<study-key>/<sop-key>.dcm   complete instances, DICOM file format, bytes as sent

``study-key`` and ``sop-key`` are keyed pseudonyms of the UIDs (``log_id``), so neither file
names nor logs carry raw UIDs. An instance is only visible under its final name after its bytes
and the directory entry were fsynced, which is the condition for answering 0x0000. A re-sent SOP
Instance UID maps to the same name and replaces the old file atomically.

A study directory is handed over to a job by renaming it away (:meth:`Spool.take_study`) under a
per-study lock, so an instance lands either in the batch being taken or in a fresh directory,
never in between.
"""

from __future__ import annotations

import logging
import mmap
import os
import secrets
import shutil
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from durable_io import Bytes, fsync_dir, nbytes, write_all
from scp._settings import LogId
from scp.errors import SpoolFullError

__all__ = ["PartialInstance", "Spool", "SpooledStudy", "StoredInstance"]

log = logging.getLogger(__name__)

_TMP = ".tmp"


@dataclass(frozen=True)
class StoredInstance:
    """Where an instance went; ``replaced`` when the same SOP Instance UID was already there."""

    study_key: str
    path: Path
    replaced: bool


@dataclass(frozen=True)
class SpooledStudy:
    """A study batch found in the spool (used to resume completion timers after a restart)."""

    key: str
    first: float
    last: float
    count: int


class Spool:
    """Writes instances durably and hands complete study batches over to jobs."""

    def __init__(
        self, root: Path, log_id: LogId, *, fsync: bool = True, min_free_bytes: int = 0
    ) -> None:
        self.root = root
        self.log_id = log_id
        self.fsync = fsync
        self.min_free_bytes = min_free_bytes
        # striped locks: bounded memory however many studies pass through
        self._locks = [threading.Lock() for _ in range(64)]
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._tmp = self.root / _TMP
        self._tmp.mkdir(exist_ok=True, mode=0o700)

    # -- start-up ------------------------------------------------------------------------
    def clean_partial(self) -> int:
        """Delete partial writes left by a crash; they were never acknowledged."""
        n = 0
        for p in self._tmp.iterdir():
            p.unlink(missing_ok=True)
            n += 1
        return n

    def studies(self) -> list[SpooledStudy]:
        """Study batches currently waiting in the spool, with first/last arrival (mtime)."""
        out = []
        for d in self.root.iterdir():
            if d.name == _TMP or not d.is_dir():
                continue
            times = [e.stat().st_mtime for e in os.scandir(d) if e.name.endswith(".dcm")]
            if times:
                out.append(SpooledStudy(d.name, min(times), max(times), len(times)))
        return out

    # -- receiving -----------------------------------------------------------------------
    def study_key(self, study_uid: str) -> str:
        return self.log_id(study_uid)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def check_space(self, incoming: int) -> None:
        """Raise :class:`SpoolFullError` if storing ``incoming`` bytes would cross the mark."""
        if self.min_free_bytes and self.free_bytes() - incoming < self.min_free_bytes:
            raise SpoolFullError("spool free space below scp.min_free_bytes")

    def store(self, study_uid: str, sop_uid: str, data: Bytes) -> StoredInstance:
        """Durably store one instance (DICOM file bytes, possibly in parts); returns once it
        survives a crash."""
        self.check_space(nbytes(data))
        partial = self.begin()
        try:
            partial.write(data)
            return partial.commit(study_uid, sop_uid)
        finally:
            partial.discard()

    def begin(self) -> PartialInstance:
        """Start receiving an instance into a temp file (see :class:`PartialInstance`)."""
        return PartialInstance(self, self._tmp / f"{secrets.token_hex(8)}.part")

    def _commit(self, tmp: Path, study_uid: str, sop_uid: str) -> StoredInstance:
        key = self.study_key(study_uid)
        with self.locked(key):
            study_dir = self.root / key
            if not study_dir.is_dir():
                study_dir.mkdir(mode=0o700)
                if self.fsync:
                    fsync_dir(self.root)
            final = study_dir / f"{self.log_id(sop_uid)}.dcm"
            replaced = final.exists()
            os.replace(tmp, final)
            if self.fsync:
                fsync_dir(study_dir)
        return StoredInstance(key, final, replaced)

    # -- handing over --------------------------------------------------------------------
    @contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """Hold the per-study lock (blocks :meth:`store` from adding to that directory)."""
        with self._locks[zlib.crc32(key.encode()) % len(self._locks)]:
            yield

    def study_dir(self, key: str) -> Path:
        return self.root / key

    def take_study(self, key: str, dest: Path) -> list[str] | None:
        """Rename the study's directory to ``dest`` (durably); ``None`` if it is not there.

        Call with :meth:`locked` held. ``dest`` must be on the same filesystem.
        """
        src = self.root / key
        if not src.is_dir():
            return None
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.rename(src, dest)
        fsync_dir(self.root)
        fsync_dir(dest.parent)
        return sorted(p.name for p in dest.iterdir() if p.name.endswith(".dcm"))


class PartialInstance:
    """An instance being received, written straight into a temp file of the spool.

    Received bytes never pile up in memory (a multi-gigabyte instance costs one PDU of RAM), and
    the temp file is invisible to the rest of the node until :meth:`commit` has fsynced it and
    renamed it into its study directory. :meth:`discard` (or a crash, via
    :meth:`Spool.clean_partial`) removes it; both are safe to call after a commit.
    """

    def __init__(self, spool: Spool, path: Path) -> None:
        self.spool = spool
        self.path = path
        self.size = 0
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)

    def write(self, data: Bytes) -> None:
        """Append ``data``; raises ``OSError`` (``ENOSPC`` ...) as the file system does."""
        if self._fd is None:
            raise ValueError("instance already committed or discarded")
        write_all(self._fd, data)
        self.size += nbytes(data)

    @contextmanager
    def view(self, offset: int = 0) -> Iterator[memoryview]:
        """The bytes written so far from ``offset`` on, memory-mapped (nothing is copied)."""
        if self._fd is None:
            raise ValueError("instance already committed or discarded")
        if self.size <= offset:
            yield memoryview(b"")
            return
        mapped = mmap.mmap(self._fd, self.size, access=mmap.ACCESS_READ)
        whole = memoryview(mapped)
        part = whole[offset:]
        try:
            yield part
        finally:
            part.release()
            whole.release()
            try:
                mapped.close()
            except BufferError:  # a view escaped the block; the map closes when collected
                log.debug("spool map still referenced; left to the garbage collector")

    def commit(self, study_uid: str, sop_uid: str) -> StoredInstance:
        """Make the instance durable (fsync when the spool says so) and visible in its study."""
        if self._fd is None:
            raise ValueError("instance already committed or discarded")
        fd, self._fd = self._fd, None
        try:
            if self.spool.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        try:
            return self.spool._commit(self.path, study_uid, sop_uid)
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise

    def discard(self) -> None:
        """Forget the instance (no-op after :meth:`commit`)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
            self.path.unlink(missing_ok=True)
