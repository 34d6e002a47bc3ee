"""ATNA export: the audit ledger's events as DICOM PS3.15 A.5 audit messages over syslog.

Hospital security teams collect IHE ATNA audit messages (RFC 3881 / DICOM PS3.15 A.5 XML in
RFC 5424 syslog, RFC 5425 TLS) in their SIEM. Each ledger entry becomes one message
(:mod:`node.atna.message`), framed and sent by :mod:`node.atna.syslog`, from a bounded queue on
a thread of its own (:mod:`node.atna.exporter`) so a slow or absent receiver never holds up a
job. Messages carry what the ledger entry carries (pseudonyms, hashes, counts), nothing more.
"""

from node.atna.exporter import AtnaExporter, attach_exporter
from node.atna.message import AUDIT_XML_NS, audit_message
from node.atna.syslog import SyslogSender, syslog_message

__all__ = [
    "AUDIT_XML_NS",
    "AtnaExporter",
    "SyslogSender",
    "attach_exporter",
    "audit_message",
    "syslog_message",
]
