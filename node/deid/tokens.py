"""The identifiers of one instance, gathered before it is changed, and its cached scrubber.

The scrubber (:mod:`node.deid.scrub`) needs the instance's own names, IDs and birth date. With a
clean option on, every PN/ID-like element at any depth is gathered; otherwise only the top-level
patient and study identifiers (cheap), which feed the known-identifier safety net on kept text.
Instances of one patient yield the same set, so compiled scrubbers are cached by it.
"""

from __future__ import annotations

from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset

from node.deid.rawops import fast_str
from node.deid.scrub import PhiScrubber, name_tokens

__all__ = ["ScrubberFactory"]

# Patient's Name, Other Patient Names, Birth Name, Mother's Birth Name, Referring Physician,
# Physicians of Record, Operators, Performing Physician, Requesting Physician.
_QUICK_PN = (
    0x00100010,
    0x00101001,
    0x00101005,
    0x00101060,
    0x00080090,
    0x00081050,
    0x00081070,
    0x00081060,
    0x00321032,
)
# Patient ID, Other Patient IDs, Accession Number, Study ID, Issuer of Patient ID, Patient's
# Address, Patient's Telephone Numbers.
_QUICK_ID = (0x00100020, 0x00101000, 0x00080050, 0x00200010, 0x00100021, 0x00101040, 0x00102154)
_TOKEN_KEYWORD_PARTS = ("ID", "Number", "Address", "Telephone", "InstitutionName")


class ScrubberFactory:
    """Builds (and caches) the :class:`PhiScrubber` of each instance.

    Parameters
    ----------
    full
        Gather identifiers from the whole dataset (clean options) instead of the top level.
    """

    def __init__(self, full: bool) -> None:
        self._full = full
        self._scrubbers: dict[frozenset[str], PhiScrubber] = {}
        self._token_kinds: dict[int, str] = {}

    def for_dataset(self, ds: Dataset) -> PhiScrubber:
        """The instance's scrubber; cached by token set (instances of a patient share one)."""
        tokens = frozenset(self.collect_tokens(ds) if self._full else self.quick_tokens(ds))
        scrubber = self._scrubbers.get(tokens)
        if scrubber is None:
            if len(self._scrubbers) > 256:
                self._scrubbers.clear()
            scrubber = self._scrubbers[tokens] = PhiScrubber(tokens)
        return scrubber

    @staticmethod
    def quick_tokens(ds: Dataset) -> set[str]:
        """Identifiers from the top-level patient/study attributes only (cheap)."""
        tokens: set[str] = set()
        for tag in _QUICK_PN:
            if tag in ds._dict:
                for v in fast_str(ds, tag).split("\\"):
                    tokens |= name_tokens(v)
        for tag in _QUICK_ID:
            if tag in ds._dict:
                tokens |= {v for v in fast_str(ds, tag).split("\\") if len(v.strip()) >= 3}
        return tokens

    def collect_tokens(self, ds: Dataset, tokens: set[str] | None = None) -> set[str]:
        """Every name, ID, address and birth date in the instance, before anything changes.

        Scans the raw element dict and decodes only the elements that can hold such values
        (cached per tag), so the cost stays far below a full ``iterall()``.
        """
        if tokens is None:
            tokens = set()
        for tag, raw in list(ds._dict.items()):
            kind = self._token_kinds.get(tag)
            if kind is None:
                kind = self._token_kinds[tag] = _token_kind(tag, raw.VR)
            if not kind:
                continue
            if kind == "SQ":
                for item in ds[tag].value or ():
                    self.collect_tokens(item, tokens)
                continue
            value = fast_str(ds, tag)
            if kind == "PN":
                for v in value.split("\\"):
                    tokens |= name_tokens(v)
            elif kind == "ID":
                tokens |= {v for v in value.split("\\") if len(v.strip()) >= 3}
            elif kind == "BD" and value:
                d = value
                if len(d) == 8:
                    y, m, dd = d[:4], d[4:6], d[6:]
                    tokens |= {
                        d,
                        f"{y}-{m}-{dd}",
                        f"{dd}/{m}/{y}",
                        f"{m}/{dd}/{y}",
                        f"{dd}.{m}.{y}",
                    }
        return tokens


def _token_kind(tag: int, raw_vr: str | None) -> str:
    """What an element contributes to the scrubber's identifier set ('' = nothing)."""
    if tag >> 16 & 1:
        return ""
    if tag == 0x00100030:
        return "BD"
    try:
        vr = dictionary_VR(tag) if dictionary_has_tag(tag) else (raw_vr or "")
    except KeyError:
        vr = raw_vr or ""
    if vr in ("SQ", "PN"):
        return vr
    if vr in ("LO", "SH", "ST", "LT") and tag >> 16 in (
        0x0008,
        0x0010,
        0x0020,
        0x0032,
        0x0038,
        0x0040,
    ):
        kw = keyword_for_tag(tag)
        if any(p in kw for p in _TOKEN_KEYWORD_PARTS):
            return "ID"
    return ""
