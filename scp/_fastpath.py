"""C-STORE fast path: P-DATA of C-STORE requests handled in pynetdicom's DUL thread.

Why this exists: pynetdicom 3.0 moves every PDU through ``recv`` calls of 4096 bytes, a full
decode into PDV objects, the upper-layer state machine and a DIMSE assembler, then hands the
message over a queue to the association thread, which polls that queue every millisecond
(hard-coded ``time.sleep(0.001)``) and answers through another queue back to the DUL thread.
Measured with ``benchmarks/ingest.py``: a pynetdicom SCP that stores *nothing* takes 0.44-0.59x
the rate of dcmtk ``storescp``; most of that time both threads are asleep. No configuration of
pynetdicom removes this, and the product needs its Storage SCP near storescp's rate.

What we replace, and what we keep: pynetdicom still accepts the connection, negotiates the
association (our policy runs in ``EVT_REQUESTED``), and handles C-ECHO, release, abort and
every error path. We replace only the DUL's "is there data on the socket" step
(``DULServiceProvider._is_transport_event``) with :class:`FastReader`: it reads whole PDUs with
``recv_into``; in the data-transfer state (Sta6) it decodes C-STORE commands itself, hands each
data set fragment to the handler's sink as it arrives (so a large instance is never held in
memory), lets the sink store or refuse the instance in this thread, and sends the C-STORE-RSP
directly. Every other PDU (and every
other DIMSE message, e.g. C-ECHO) is decoded and queued for pynetdicom exactly as its own reader
would, so pynetdicom's state machine still sees every non-C-STORE event in order. For the
PDUs we consume, pynetdicom's low-level notification events (``EVT_DATA_RECV``,
``EVT_PDU_RECV``, ``EVT_DIMSE_RECV``, ``EVT_C_STORE``) are not fired; nothing of ours uses them.

A peer that breaks the protocol inside a C-STORE (dataset without command, PDV overrunning its
PDU, unknown presentation context, bad control header) gets the same answer pynetdicom gives to
an invalid PDU: event 19, A-ABORT. Nothing of that message was acknowledged, so nothing is lost.

This depends on pynetdicom private attributes (``_is_transport_event``, ``_decode_pdu``,
``_recv_pdu``, ``state_machine``); :func:`install` checks they exist and otherwise leaves
pynetdicom's own path in place (slower, same results). ``pyproject.toml`` bounds pynetdicom to
the minor versions this was written against, and the tests assert the fast path is engaged.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from scp import status
from scp._filemeta import uid_value
from scp.errors import ProtocolError

__all__ = [
    "FastReader",
    "InstanceSink",
    "StoreHandler",
    "StoreRequest",
    "encode_store_rsp",
    "install",
]

log = logging.getLogger(__name__)

_P_DATA_TF = 0x04
_PDU_TYPES = frozenset(range(1, 8))
_C_STORE_RQ = 0x0001
_C_STORE_RSP = 0x8001
_NO_DATASET = 0x0101
# While the peer is between messages we wait on the socket for at most this long before giving
# the reactor back to pynetdicom (it must also send our outgoing primitives, e.g. C-ECHO-RSP).
_IDLE_WAIT = 0.0005
_NEXT_PDU_WAIT = 0.005
_ALLOC_STEP = 4 << 20
_REQUIRED = ("_is_transport_event", "_decode_pdu", "_recv_pdu", "state_machine", "event_queue")


@dataclass(frozen=True)
class StoreRequest:
    """What a C-STORE request says about its instance (the data set follows separately)."""

    calling_ae: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


class InstanceSink(Protocol):
    """Where one instance's data set bytes go as they arrive."""

    def write(self, data: memoryview) -> None: ...

    def finish(self) -> int:
        """All bytes are in: store durably (or refuse) and return the DIMSE status."""
        ...

    def discard(self) -> None:
        """The message will never complete: drop what was written."""
        ...


StoreHandler = Callable[[StoreRequest], InstanceSink]
"""Starts receiving one instance."""


@dataclass
class _Command:
    """The C-STORE-RQ command elements we need (hand-decoded, group 0000 only)."""

    field: int
    message_id: int
    dataset_type: int
    sop_class: str
    sop_instance: str


def _ui(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii")


def decode_command(data: bytes | bytearray | memoryview) -> _Command:
    """Decode a command set (implicit VR little endian, group 0000) far enough for C-STORE.

    Raises :class:`ProtocolError` on an element that overruns the set or is not in group 0000.
    """
    values: dict[int, bytes] = {}
    view = memoryview(data)
    off, end = 0, len(view)
    while off < end:
        if end - off < 8:
            raise ProtocolError("truncated command element")
        group, elem, length = struct.unpack_from("<HHI", view, off)
        off += 8
        if group != 0x0000 or length > end - off:
            raise ProtocolError("command element outside group 0000 or overrunning the set")
        values[elem] = bytes(view[off : off + length])
        off += length

    def us(elem: int, default: int = -1) -> int:
        raw = values.get(elem)
        return struct.unpack("<H", raw)[0] if raw is not None and len(raw) == 2 else default

    try:
        return _Command(
            field=us(0x0100),
            message_id=us(0x0110),
            dataset_type=us(0x0800),
            sop_class=_ui(values.get(0x0002, b"")),
            sop_instance=_ui(values.get(0x1000, b"")),
        )
    except UnicodeDecodeError:
        raise ProtocolError("non-ASCII UID in command set") from None


def _element(elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, elem, len(value)) + value


def encode_store_rsp(
    context_id: int, message_id: int, sop_class: str, sop_instance: str, status: int, max_pdu: int
) -> bytes:
    """The C-STORE-RSP for one request as P-DATA-TF PDU bytes (PS3.7 9.3.1.2, PS3.8 9.3.5).

    Fragmented so that no PDU exceeds the requestor's maximum length (``0`` = unlimited).
    """
    body = b"".join(
        (
            _element(0x0002, uid_value(sop_class)),
            _element(0x0100, struct.pack("<H", _C_STORE_RSP)),
            _element(0x0120, struct.pack("<H", message_id)),
            _element(0x0800, struct.pack("<H", _NO_DATASET)),
            _element(0x0900, struct.pack("<H", status)),
            _element(0x1000, uid_value(sop_instance)),
        )
    )
    command = _element(0x0000, struct.pack("<I", len(body))) + body
    step = max(1, max_pdu - 6) if max_pdu else len(command)
    out = bytearray()
    for start in range(0, len(command), step):
        chunk = command[start : start + step]
        last = start + step >= len(command)
        item = struct.pack(">IBB", len(chunk) + 2, context_id, 0x03 if last else 0x01) + chunk
        out += struct.pack(">BBI", _P_DATA_TF, 0, len(item)) + item
    return bytes(out)


class FastReader:
    """Reads an association's PDUs in place of pynetdicom's reader (see module docstring)."""

    def __init__(self, assoc: Any, handler: StoreHandler) -> None:
        self.assoc = assoc
        self.dul = assoc.dul
        self.handler = handler
        self._contexts: dict[int, tuple[str, str]] | None = None
        self._mode: str | None = None  # None: expecting a command; "store" | "pass"
        self._command = bytearray()
        self._command_items: list[bytes] = []
        self._pass_items: list[bytes] = []
        self._pass_ends_with_dataset = False
        self._request: tuple[int, _Command] | None = None
        self._sink: InstanceSink | None = None

    def close(self) -> None:
        """The connection is gone: drop an instance cut off mid-message."""
        self._reset()

    # -- socket ----------------------------------------------------------------------------
    def _recv_exact(self, raw: socket.socket, n: int) -> bytearray:
        """Exactly ``n`` bytes; ``ConnectionError`` if the peer closes first.

        The buffer grows with what actually arrives (in steps of ``_ALLOC_STEP``), so a PDU
        header that claims 4 GB costs nothing until 4 GB are really sent.
        """
        buf = bytearray(min(n, _ALLOC_STEP))
        got = 0
        while got < n:
            if got == len(buf):
                buf.extend(bytes(min(n - got, _ALLOC_STEP)))
            k = raw.recv_into(memoryview(buf)[got:])
            if k == 0:
                raise ConnectionError("closed by the peer")
            got += k
        return buf

    def _read_pdu(self) -> bytearray | None:
        """One whole PDU, or ``None`` after queueing the event pynetdicom would queue."""
        raw = self.dul.socket.socket
        try:
            header = self._recv_exact(raw, 6)
            pdu_type, _, length = struct.unpack(">BBI", header)
            if pdu_type not in _PDU_TYPES:
                log.error("unknown PDU type 0x%02X received; aborting", pdu_type)
                self.dul.event_queue.put("Evt19")
                return None
            return header + self._recv_exact(raw, length)
        except OSError:  # closed, reset, or the socket's network timeout
            self.dul.event_queue.put("Evt17")
            return None

    def _data_waiting(self, timeout: float) -> bool:
        sock = self.dul.socket
        if sock.ready:
            return True
        if timeout <= 0:
            return False
        try:
            ready, _, _ = select.select([sock.socket], [], [], timeout)
        except (OSError, ValueError):
            return False
        return bool(ready)

    # -- the reactor hook ------------------------------------------------------------------
    def poll(self) -> bool:
        """Replacement for ``DULServiceProvider._is_transport_event`` (same contract)."""
        dul = self.dul
        state = dul.state_machine.current_state
        if state == "Sta13":  # waiting for the peer to close: pynetdicom's own handling
            if dul.socket and dul.socket.ready:
                pdu = self._read_pdu()
                if pdu is not None:
                    self._deliver(pdu)
                return True
            dul.socket.close()
            return True
        if dul.socket is None:
            return False
        if not self._data_waiting(_IDLE_WAIT if state == "Sta6" else 0.0):
            return False
        pdu = self._read_pdu()
        if pdu is None:
            self._reset()
            return True
        if pdu[0] != _P_DATA_TF or state != "Sta6":
            self._deliver(pdu)
            return True
        try:
            self._on_pdata(memoryview(pdu)[6:])
            # A C-STORE in progress: take its next PDUs here while they keep coming, instead
            # of going round the reactor for each one. A pause hands the thread back to the
            # reactor (outgoing primitives such as an A-ABORT on shutdown); the message state
            # is kept, and pynetdicom's idle timer ends an association whose peer stalls.
            while self._mode == "store" and self._data_waiting(_NEXT_PDU_WAIT):
                pdu = self._read_pdu()
                if pdu is None:
                    self._reset()
                    return True
                if pdu[0] != _P_DATA_TF:
                    raise ProtocolError("non-data PDU inside a C-STORE message")
                self._on_pdata(memoryview(pdu)[6:])
        except ProtocolError as exc:
            log.warning("protocol error from %s: %s; aborting", self._calling(), exc)
            self._reset()
            dul.event_queue.put("Evt19")
        return True

    # -- P-DATA ----------------------------------------------------------------------------
    def _on_pdata(self, items: memoryview) -> None:
        off, end = 0, len(items)
        while off < end:
            if end - off < 6:
                raise ProtocolError("truncated PDV item")
            length, context_id, control = struct.unpack_from(">IBB", items, off)
            if length < 2 or length > end - off - 4:
                raise ProtocolError("PDV item length overruns its PDU")
            if control & ~0x03:
                raise ProtocolError("reserved bits set in a message control header")
            self._on_pdv(context_id, control, items[off : off + 4 + length])
            off += 4 + length
        self._flush_pass()

    def _on_pdv(self, context_id: int, control: int, item: memoryview) -> None:
        is_command, last, data = bool(control & 0x01), bool(control & 0x02), item[6:]
        if self._mode == "pass":
            self._pass_items.append(bytes(item))
            if last and (not is_command or not self._pass_ends_with_dataset):
                self._mode = None
            return
        if self._mode == "store":
            assert self._request is not None and self._sink is not None
            if is_command or context_id != self._request[0]:
                raise ProtocolError("command or other context inside a C-STORE data set")
            self._sink.write(data)
            if last:
                self._complete_store()
            return
        if not is_command:
            raise ProtocolError("data set fragment without a command")
        self._command += data
        self._command_items.append(bytes(item))
        if last:
            self._on_command(context_id)

    def _on_command(self, context_id: int) -> None:
        command = decode_command(self._command)
        items, self._command, self._command_items = self._command_items, bytearray(), []
        contexts = self._accepted_contexts()
        if (
            command.field == _C_STORE_RQ
            and command.dataset_type != _NO_DATASET
            and context_id in contexts
            and contexts[context_id][0] == command.sop_class  # PS3.7 9.1.1.1: must match
            and command.sop_instance
            and command.message_id >= 0
        ):
            self._mode, self._request = "store", (context_id, command)
            self._sink = self.handler(
                StoreRequest(
                    calling_ae=self._calling(),
                    sop_class_uid=command.sop_class,
                    sop_instance_uid=command.sop_instance,
                    transfer_syntax_uid=contexts[context_id][1],
                )
            )
            return
        # anything else is pynetdicom's: C-ECHO, a malformed request, an unknown context or one
        # whose abstract syntax is not the request's SOP class
        self._mode = "pass"
        self._pass_ends_with_dataset = command.dataset_type != _NO_DATASET
        self._pass_items.extend(items)
        if not self._pass_ends_with_dataset:
            self._mode = None

    def _complete_store(self) -> None:
        assert self._request is not None and self._sink is not None
        (context_id, command), sink = self._request, self._sink
        self._request, self._sink, self._mode = None, None, None
        try:
            code = sink.finish()
        except Exception as exc:  # the sink answers its own errors; this is a bug guard
            code = status.for_error(exc).status
            log.exception("C-STORE handler failed; answering 0x%04X", code)
            sink.discard()
        max_pdu = int(getattr(self.assoc.requestor, "maximum_length", 0) or 0)
        self.dul.socket.send(
            encode_store_rsp(
                context_id,
                command.message_id,
                command.sop_class,
                command.sop_instance,
                code,
                max_pdu,
            )
        )

    # -- handing over to pynetdicom ----------------------------------------------------------
    def _flush_pass(self) -> None:
        if not self._pass_items:
            return
        items, self._pass_items = b"".join(self._pass_items), []
        self._deliver(bytearray(struct.pack(">BBI", _P_DATA_TF, 0, len(items)) + items))

    def _deliver(self, pdu: bytearray) -> None:
        """Queue a PDU for pynetdicom's state machine, as its own reader does."""
        dul = self.dul
        try:
            decoded, event = dul._decode_pdu(pdu)
        except Exception:
            log.error("unable to decode a PDU from %s; aborting", self._calling())
            dul.event_queue.put("Evt19")
            return
        dul.event_queue.put(event)
        dul._recv_pdu.put(decoded)

    # -- helpers ---------------------------------------------------------------------------
    def _accepted_contexts(self) -> dict[int, tuple[str, str]]:
        if self._contexts is None:
            self._contexts = {
                int(cx.context_id): (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                for cx in self.assoc.accepted_contexts
                if cx.context_id is not None and cx.transfer_syntax
            }
        return self._contexts

    def _calling(self) -> str:
        try:
            return str(self.assoc.requestor.ae_title).strip()
        except AttributeError:
            return "?"

    def _reset(self) -> None:
        if self._sink is not None:
            self._sink.discard()
        self._mode, self._request, self._sink = None, None, None
        self._command, self._command_items, self._pass_items = bytearray(), [], []


def install(assoc: Any, handler: StoreHandler) -> FastReader | None:
    """Put a :class:`FastReader` in front of ``assoc``'s DUL; ``None`` if pynetdicom changed."""
    dul = getattr(assoc, "dul", None)
    if dul is None or not all(hasattr(dul, name) for name in _REQUIRED):
        log.warning("pynetdicom internals changed: C-STORE fast path disabled (still correct)")
        return None
    reader = FastReader(assoc, handler)
    dul._is_transport_event = reader.poll
    assoc._blindread_fast_reader = reader
    return reader
