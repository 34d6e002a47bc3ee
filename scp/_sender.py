"""Storage SCU: send files or datasets to a destination over one association.

Files are sent as stored (pynetdicom's chunked send: the bytes after the file meta go on the
wire unchanged, no decode/re-encode), so a compressed instance stays bit-identical.
Retrying with backoff is the job runner's business (it survives restarts); this module makes
one attempt and says precisely what failed, without PHI.
"""

from __future__ import annotations

import errno
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from scp._net import tune_association
from scp._settings import DestinationSettings, SenderSettings
from scp._tls import client_context
from scp.errors import SendError

__all__ = ["SendReport", "StorageSender", "echo"]

log = logging.getLogger(__name__)

# Send files from disk without decoding them (global pynetdicom switch; only affects paths).
_config.STORE_SEND_CHUNKED_DATASET = True

_UNCOMPRESSED = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
_MAX_CONTEXTS = 128


@dataclass
class SendReport:
    """Outcome of one :meth:`StorageSender.send` call."""

    destination: str
    sent: int = 0
    warnings: list[int] = field(default_factory=list)


def _identify(item: Path | Dataset) -> tuple[str, str]:
    """(SOP Class UID, transfer syntax UID) of a file or dataset."""
    if isinstance(item, Dataset):
        meta = getattr(item, "file_meta", None)
        ts = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
        return str(item.SOPClassUID), str(ts or ExplicitVRLittleEndian)
    meta = read_file_meta_info(item)
    return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)


def _associate(
    dest: DestinationSettings, contexts: list[tuple[str, list[str]]], timeout: float
) -> Association:
    ae = AE(ae_title=dest.calling_ae_title)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    for sop, syntaxes in contexts:
        ae.add_requested_context(sop, syntaxes)
    tls_args = (client_context(dest.tls), dest.host) if dest.tls else None
    opened: list[bool] = []

    def on_open(event: evt.Event) -> None:
        opened.append(True)
        tune_association(event)

    with _ConnectErrors() as errors:
        assoc = ae.associate(
            dest.host,
            dest.port,
            ae_title=dest.ae_title,
            tls_args=tls_args,
            evt_handlers=[(evt.EVT_CONN_OPEN, on_open)],
        )
    if not assoc.is_established:
        name = f"{dest.ae_title}@{dest.host}:{dest.port}"
        if assoc.is_rejected:
            what = "rejected"
        elif not opened:  # no TCP connection: say why (refused, timed out, unreachable)
            what = f"failed: {errors.reason()}"
        elif errors.timed_out:
            what = "timed out waiting for the A-ASSOCIATE answer"
        else:
            what = "aborted" if assoc.is_aborted else "failed"
        log.warning("association to %s %s", name, what)
        raise SendError(f"association to {name} {what}")
    return assoc


_ERRNO = re.compile(r"\[Errno (\d+)\]")


class _ConnectErrors(logging.Handler):
    """Collects, while associating, what pynetdicom logs about a failed TCP connect or an ACSE
    timeout (it swallows the ``OSError``); only errno names and fixed phrases are kept."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errnos: list[int] = []
        self.timed_out = False
        self.connect_failed = False

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "TCP Initialisation Error" in text:
            self.connect_failed = True
            m = _ERRNO.search(text)
            if m:
                self.errnos.append(int(m.group(1)))
            if "timed out" in text:
                self.timed_out = True
        elif "timeout" in text.lower():
            self.timed_out = True

    def reason(self) -> str:
        for code in self.errnos:
            if code == errno.ECONNREFUSED:
                return "connection refused"
            if code in (errno.ETIMEDOUT, errno.EAGAIN):
                return "connection timed out"
            if code in (errno.EHOSTUNREACH, errno.ENETUNREACH):
                return "host unreachable"
            return f"cannot connect ({errno.errorcode.get(code, code)})"
        return "connection timed out" if self.timed_out else "cannot connect"

    def __enter__(self) -> _ConnectErrors:
        logging.getLogger("pynetdicom").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("pynetdicom").removeHandler(self)


def echo(dest: DestinationSettings, timeout: float = 10.0) -> int:
    """C-ECHO ``dest``; returns the status (0x0000 = alive) or raises :class:`SendError`."""
    assoc = _associate(
        dest, [(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])], timeout
    )
    try:
        rsp = assoc.send_c_echo()
        if "Status" not in rsp:
            raise SendError(f"no C-ECHO response from {dest.ae_title}@{dest.host}:{dest.port}")
        return int(rsp.Status)
    finally:
        assoc.release()


class StorageSender:
    """Sends instances to destinations; one association per :meth:`send` call."""

    def __init__(self, settings: SenderSettings | None = None) -> None:
        self.settings = settings or SenderSettings()

    def send(self, dest: DestinationSettings, items: Sequence[Path | Dataset]) -> SendReport:
        """C-STORE every item; raises :class:`SendError` on the first failure.

        Warnings (0xB000, 0xB006, 0xB007) count as stored, as PS3.4 B.2.3 intends.
        """
        name = f"{dest.ae_title}@{dest.host}:{dest.port}"
        report = SendReport(name)
        if not items:
            return report
        idents = [_identify(i) for i in items]
        wanted: dict[str, list[str]] = {}
        for sop, ts in idents:
            syntaxes = wanted.setdefault(sop, [])
            if ts not in syntaxes:
                syntaxes.append(ts)
        contexts: list[tuple[str, list[str]]] = []
        for sop, syntaxes in wanted.items():
            for ts in syntaxes:  # one context per (SOP class, syntax): accepted as sent or not
                contexts.append((sop, [ts]))
        if len(contexts) > _MAX_CONTEXTS:
            raise SendError(f"{len(contexts)} presentation contexts needed; split the batch")
        assoc = _associate(dest, contexts, self.settings.timeout_seconds)
        try:
            for item, (sop, ts) in zip(items, idents, strict=True):
                accepted = [
                    cx
                    for cx in assoc.accepted_contexts
                    if cx.abstract_syntax == sop and cx.transfer_syntax[0] == ts
                ]
                if not accepted:
                    raise SendError(
                        f"{name} accepted no presentation context for {UID(sop).name}"
                        f" in {UID(ts).name}"
                    )
                rsp = assoc.send_c_store(item)
                if "Status" not in rsp:
                    raise SendError(f"no C-STORE response from {name} (timeout or abort)")
                code = int(rsp.Status)
                if code != 0x0000 and not (code & 0xF000 == 0xB000):
                    raise SendError(f"{name} answered C-STORE with status 0x{code:04X}")
                if code:
                    report.warnings.append(code)
                report.sent += 1
        finally:
            if assoc.is_established:
                assoc.release()
        log.info("sent %d instance(s) to %s", report.sent, name)
        return report
