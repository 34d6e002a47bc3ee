"""Deterministic UIDs for the result objects.

A result SR must replace, never duplicate, an earlier one for the same study and model version
(a job resumed after a crash, or a resend), and an *amended* result (late images made the study
larger) must be a new document: a PACS keeps the first instance it stored under a SOP Instance
UID (Orthanc's default ``OverwriteInstances: false``; PS3.4 has no "replace"), so re-sending
changed content under the old UID silently leaves the old result in place.

So the Series Instance UID is derived from the source Study Instance UID and the model name +
version (one series per result lineage: every revision lands in it), and the SOP Instance UID
additionally from the *coverage*, the set of source SOP Instance UIDs the result describes:
the same inputs give the same UID (a resend is ignored or replaced by the PACS), more images
give a new one. Derivation is ``HMAC-SHA256(uid_key, ...)`` rather than a plain hash: a plain
hash of a study UID can be linked back to that study by anyone who hashes candidate UIDs, the
keyed one cannot. Tracking UIDs depend on the lineage only, so a finding keeps its tracking UID
across revisions (that is what TID 1501 tracking is for).

The 128 HMAC bits are shaped as an RFC 9562 version-8 (custom) UUID and written under the
``2.25`` root (PS3.5 B.2), so no organisation root is needed.

The device observer UID of the vendor algorithm is *not* keyed: it names a public thing (the
model's name and version), and every hospital should see the same UID for the same model.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Iterable

__all__ = ["MIN_UID_KEY_BYTES", "ResultUids", "coverage_digest", "derive_uid", "device_uid"]

MIN_UID_KEY_BYTES = 16


def _uuid8_uid(digest: bytes) -> str:
    b = bytearray(digest[:16])
    b[6] = (b[6] & 0x0F) | 0x80  # version 8
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 9562 variant
    return f"2.25.{uuid.UUID(bytes=bytes(b)).int}"


def derive_uid(key: bytes, purpose: str, *parts: str) -> str:
    """A UID that depends only on ``key``, ``purpose`` and ``parts`` (keyed, not reversible)."""
    if len(key) < MIN_UID_KEY_BYTES:
        raise ValueError(f"uid key must be at least {MIN_UID_KEY_BYTES} bytes")
    msg = "\x00".join(("blindread-uid-v1", purpose, *parts)).encode("utf-8")
    return _uuid8_uid(hmac.new(key, msg, hashlib.sha256).digest())


def device_uid(manufacturer: str, model_name: str, name: str, version: str) -> str:
    """Public, unkeyed UID of an algorithm version (the TID 1004 Device Observer UID)."""
    msg = "\x00".join(("blindread-device-v1", manufacturer, model_name, name, version))
    return _uuid8_uid(hashlib.sha256(msg.encode("utf-8")).digest())


def coverage_digest(source_sop_uids: Iterable[str]) -> str:
    """One string for a set of source SOP Instance UIDs: order and repeats do not matter."""
    joined = "\x00".join(sorted({str(u) for u in source_sop_uids}))
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()


class ResultUids:
    """Every UID of the result objects of one (study, model name, model version), for the
    result covering ``sources`` (the analysed images' SOP Instance UIDs).

    Series UIDs (and tracking UIDs) name the lineage and do not depend on ``sources``; instance
    UIDs do, so a result amended for late images gets new ones while a resend keeps them.
    """

    def __init__(
        self, key: bytes, study_uid: str, model: str, version: str, sources: Iterable[str] = ()
    ) -> None:
        self._key = key
        self._base = (study_uid, model, version)
        self.coverage = coverage_digest(sources)
        self.sr_series = derive_uid(key, "sr-series", *self._base)
        self.sr_instance = derive_uid(key, "sr-instance-v2", *self._base, self.coverage)
        self.sc_series = derive_uid(key, "sc-series", *self._base)
        self.sc_instance = derive_uid(key, "sc-instance-v2", *self._base, self.coverage)

    def tracking(self, label: str, sop_instance_uid: str | None = None) -> str:
        """Tracking UID of one measurement group (a study-level label, or a label on one image)."""
        return derive_uid(self._key, "tracking", *self._base, label, sop_instance_uid or "")
