"""One audit ledger entry -> one DICOM PS3.15 A.5 (RFC 3881) ``AuditMessage`` XML document.

Hand-written with the standard library's ElementTree: the schema is a handful of elements
and no maintained Python library writes DICOM audit messages. Codes are DICOM's (DCM, CID 400
Audit Event ID, CID 402 Audit Participant Role); the ledger's own event kind travels as the
EventTypeCode (code system ``99BLINDREAD``), the study's keyed pseudonym as the participant
object, and the ledger's seq and hash as its details so a SIEM record can be matched with the
signed ledger. The details are the entry's own, which the ledger's PHI guard already checked.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Mapping
from typing import Any, Protocol
from xml.etree import ElementTree as ET

__all__ = ["AUDIT_XML_NS", "LedgerEvent", "audit_message"]

AUDIT_XML_NS = ""
"""DICOM audit messages have no XML namespace (PS3.15 A.5.1)."""


class LedgerEvent(Protocol):
    """What an audit ledger entry offers (node.audit.AuditEntry)."""

    seq: int
    time: str
    kind: str
    details: Any
    hash: str


# ledger kind -> (EventID code, meaning, EventActionCode)
_EVENTS: Mapping[str, tuple[str, str, str]] = {
    "study_received": ("110104", "DICOM Instances Transferred", "C"),
    "rule_matched": ("110100", "Application Activity", "E"),
    "deidentified": ("110103", "DICOM Instances Accessed", "U"),
    "inference_requested": ("110106", "Export", "R"),
    "result_received": ("110107", "Import", "C"),
    "sr_delivered": ("110104", "DICOM Instances Transferred", "R"),
    "forwarded": ("110106", "Export", "R"),
    "discarded": ("110105", "DICOM Study Deleted", "D"),
    "export_blocked": ("110113", "Security Alert", "E"),
    "ledger_repaired": ("110113", "Security Alert", "E"),
    "ledger_anchored": ("110113", "Security Alert", "E"),
}
_DEFAULT_EVENT = ("110100", "Application Activity", "E")
# RFC 3881 EventOutcomeIndicator: 0 success, 4 minor failure, 8 serious failure
_OUTCOMES = {"retry": "4", "job_failed": "8", "export_blocked": "4"}


def _code(parent: ET.Element, tag: str, code: str, system: str, meaning: str) -> ET.Element:
    return ET.SubElement(
        parent, tag, {"csd-code": code, "codeSystemName": system, "originalText": meaning}
    )


def _detail_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def audit_message(
    event: LedgerEvent, *, source_id: str, node_name: str, host: str | None = None
) -> bytes:
    """The UTF-8 XML of ``event`` as a DICOM audit message (one line, no declaration)."""
    code, meaning, action = _EVENTS.get(event.kind, _DEFAULT_EVENT)
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": action,
            "EventDateTime": event.time,
            "EventOutcomeIndicator": _OUTCOMES.get(event.kind, "0"),
        },
    )
    _code(ident, "EventID", code, "DCM", meaning)
    _code(ident, "EventTypeCode", event.kind, "99BLINDREAD", event.kind.replace("_", " "))

    who = ET.SubElement(
        root,
        "ActiveParticipant",
        {
            "UserID": node_name,
            "UserIsRequestor": "false",
            "NetworkAccessPointID": host or socket.gethostname(),
            "NetworkAccessPointTypeCode": "1",
        },
    )
    _code(who, "RoleIDCode", "110150", "DCM", "Application")

    src = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": source_id})
    ET.SubElement(src, "AuditSourceTypeCode", {"csd-code": "4"})  # application server

    details: Mapping[str, Any] = event.details if isinstance(event.details, Mapping) else {}
    study = details.get("study")
    obj = ET.SubElement(
        root,
        "ParticipantObjectIdentification",
        {
            "ParticipantObjectID": str(study) if study else f"ledger-seq-{event.seq}",
            "ParticipantObjectTypeCode": "2",  # system object
            "ParticipantObjectTypeCodeRole": "3" if study else "13",  # report / security resource
        },
    )
    if study:
        _code(obj, "ParticipantObjectIDTypeCode", "study-pseudonym", "99BLINDREAD",
              "Keyed study pseudonym")
    else:
        _code(obj, "ParticipantObjectIDTypeCode", "ledger-entry", "99BLINDREAD",
              "Audit ledger entry")
    for key, value in (("ledger_seq", event.seq), ("ledger_hash", event.hash)):
        ET.SubElement(obj, "ParticipantObjectDetail", {"type": key, "value": _detail_value(value)})
    for key in sorted(details):
        if key == "study":
            continue
        ET.SubElement(
            obj, "ParticipantObjectDetail", {"type": str(key), "value": _detail_value(details[key])}
        )
    return ET.tostring(root, encoding="utf-8", xml_declaration=False)
