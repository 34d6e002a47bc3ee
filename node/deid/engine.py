"""The de-identification engine: PS3.15 Annex E profile applied to an in-memory pydicom dataset.

Why hand-written: pydicom's ``deid``-style helpers and dicognito each implement a fixed subset of
Table E.1-1 (dicognito replaces every PN/UI/date it sees, but has no option columns, no
safe-private allow-list and no curve/overlay handling). This engine executes the table itself,
compiled per option set (:mod:`node.deid.table`).

Speed comes from touching only what the profile changes: elements stay pydicom
``RawDataElement``s (undecoded bytes) unless their action needs their value, so kept attributes
and Pixel Data are written back byte for byte.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary

from node.deid.burned import (
    BurnedInPolicy,
    DeviceMask,
    apply_mask,
    burned_in_reason,
    mask_overlay,
)
from node.deid.keyed import DeidKeys, UidMapper, date_shift_days, patient_pseudonym
from node.deid.options import (
    Option,
    ProfileOptions,
    parse_options,
)
from node.deid.private import SafePrivateAllowList
from node.deid.rawops import ascii_value, fast_str, with_value
from node.deid.scrub import PhiScrubber
from node.deid.stamp import MethodStamp
from node.deid.table import CompiledProfile, compile_profile
from node.deid.temporal import cap_age, shift_multi
from node.deid.tokens import ScrubberFactory
from node.pseudonym import Pseudonymizer
from node.vault import VAULT_KEYWORDS

__all__ = ["DeidResult", "Deidentifier", "EventCallback"]

log = logging.getLogger(__name__)

EventCallback = Callable[[str, dict[str, Any]], None]
"""``on_event(kind, details)``; details never contain PHI (pseudonyms and codes only)."""

_PATIENT_NAME = 0x00100010
_PATIENT_ID = 0x00100020
_SOP_INSTANCE_UID = 0x00080018
_STUDY_UID = 0x0020000D
_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC"})
_STRINGY_VRS = _TEXT_VRS | {"PN", "CS", "AE", "DA", "DT", "TM", "UI", "AS", "IS", "DS", "UR"}
_DUMMY: dict[str, Any] = {
    "PN": "ANONYMIZED",
    "LO": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "UT": "ANONYMIZED",
    "UC": "ANONYMIZED",
    "CS": "ANONYMIZED",
    "AE": "ANONYMIZED",
    "UR": "ANONYMIZED",
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "AS": "000D",
    "IS": "0",
    "DS": "0",
}
# UIDs that name a class, syntax or scheme, not an instance: never replaced.
_CLASS_UID_KEYWORDS = frozenset(
    {
        "TransferSyntaxUID",
        "ReferencedTransferSyntaxUIDInFile",
        "ImplementationClassUID",
        "CodingSchemeUID",
        "ContextUID",
        "MappingResourceUID",
        "PrivateInformationCreatorUID",
        "ContextGroupExtensionCreatorUID",
        "TemplateExtensionOrganizationUID",
        "TemplateExtensionCreatorUID",
    }
)
_NORMAL, _CLEAN, _DUMMY_MODE, _DUMMY_CODES_MODE = "", "C", "D", "DC"
"""Walk modes: as listed / inside a cleaned sequence / inside a dummied sequence (+ its codes)."""
_PERSON_CODE_SEQUENCES = frozenset({0x00401101})  # Person Identification Code Sequence
# Coded-entry parts: identifiers of terms, never free text; scrubbing would corrupt the code.
_CODED_KEYWORDS = frozenset(
    {
        "CodeValue",
        "LongCodeValue",
        "URNCodeValue",
        "CodingSchemeDesignator",
        "CodingSchemeVersion",
        "ContextIdentifier",
        "MappingResource",
        "TemplateIdentifier",
        "EquivalentCodeSequence",
    }
)
# Code meanings come from terminologies; only the instance's own identifiers are removed.
_CODE_MEANING_KEYWORDS = frozenset({"CodeMeaning", "MappingResourceName"})
_VAULT_TAGS = tuple((kw, int(tag_for_keyword(kw) or 0)) for kw in VAULT_KEYWORDS)


@dataclass(frozen=True)
class DeidResult:
    """Outcome of one instance.

    ``dataset`` is the de-identified dataset (the input object, changed in place) or None when
    the instance is blocked; ``blocked_reason`` then says why with a PHI-free code.
    ``uid_map`` (original -> replacement) and ``identifiers`` (the original identifying
    attributes, for :class:`node.vault.IdentifierVault`) hold PHI and must stay on the node.
    """

    dataset: Dataset | None
    blocked_reason: str | None
    patient_pseudonym: str
    study_pseudonym: str
    instance_pseudonym: str
    date_shift_days: int | None
    options: tuple[str, ...]
    uid_map: dict[str, str] = field(default_factory=dict, repr=False)
    identifiers: dict[str, str] = field(default_factory=dict, repr=False)
    pixels_masked: bool = False

    @property
    def blocked(self) -> bool:
        """True when the instance must not be exported."""
        return self.dataset is None


@dataclass
class _Ctx:
    """Per-instance state: the patient's shift, collected UID mappings, the scrubber."""

    shift_days: int | None
    uid_map: dict[str, str]
    scrubber: PhiScrubber
    invalid_dates: int = 0


class Deidentifier:
    """Applies one PS3.15 profile (with options) to datasets, consistently across instances.

    Parameters
    ----------
    options
        Option names (``retain_uids``...) or an already parsed :class:`ProfileOptions`.
    keys
        The node's de-identification keys (``DeidKeys.load_or_create(node.keys)``).
    burned_in
        Policy for instances that may carry burned-in text (default: block them).
    safe_private
        Private elements kept under ``retain_safe_private``.
    on_event
        Audit hook, called with PHI-free details (``deid.blocked``, ``deid.masked``...).
    pseudonymizer
        How instances/studies are named in events and results (default: keyed by ``keys``).
    """

    def __init__(
        self,
        options: ProfileOptions | Iterable[str] = (),
        keys: DeidKeys | None = None,
        *,
        burned_in: BurnedInPolicy | None = None,
        safe_private: SafePrivateAllowList | None = None,
        on_event: EventCallback | None = None,
        pseudonymizer: Pseudonymizer | None = None,
    ) -> None:
        self.options = options if isinstance(options, ProfileOptions) else parse_options(options)
        self.keys = keys if keys is not None else DeidKeys.ephemeral()
        self.profile: CompiledProfile = compile_profile(self.options)
        self.burned_in = burned_in if burned_in is not None else BurnedInPolicy()
        self.safe_private = safe_private if safe_private is not None else SafePrivateAllowList()
        self._on_event = on_event
        self._pseudo = pseudonymizer or Pseudonymizer(self.keys.hmac_key)
        self._uids = UidMapper(self.keys.hmac_key)
        self._retain_uids = Option.RETAIN_UIDS in self.options
        self._full_dates = Option.RETAIN_LONG_FULL_DATES in self.options
        self._modified_dates = Option.RETAIN_LONG_MODIFIED_DATES in self.options
        self._clean_text = bool(
            {Option.CLEAN_DESCRIPTORS, Option.CLEAN_STRUCTURED_CONTENT, Option.CLEAN_GRAPHICS}
            & self.options.options
            or Option.RETAIN_PATIENT_CHARACTERISTICS in self.options
            or Option.RETAIN_DEVICE_IDENTITY in self.options
        )
        self._plans: dict[tuple[int, str], tuple[str, str]] = {}
        self._scrubbers = ScrubberFactory(full=self._clean_text)
        self._stamp = MethodStamp(self.options)

    # ------------------------------------------------------------------ public API

    def deidentify(self, ds: Dataset) -> DeidResult:
        """De-identify ``ds`` in place and return the result (or why it is blocked).

        A blocked instance is returned unchanged. If this raises (e.g. undecodable pixel data
        while masking), ``ds`` may be half de-identified: discard it, never export it.
        """
        orig_pid = fast_str(ds, _PATIENT_ID)
        orig_study = fast_str(ds, _STUDY_UID)
        identity_key = orig_pid or (
            f"{fast_str(ds, _PATIENT_NAME)}|{fast_str(ds, 0x00100030)}|{orig_study}"
        )
        pseudo_pid = patient_pseudonym(self.keys.hmac_key, identity_key)
        study_p = self._pseudo.study(orig_study)
        inst_p = self._pseudo.instance(fast_str(ds, _SOP_INSTANCE_UID))
        shift = date_shift_days(self.keys.date_key, identity_key) if self._modified_dates else None
        identifiers = self._identifiers(ds)

        masked = False
        reason = burned_in_reason(ds, self.burned_in)
        if reason is not None:
            mask = self.burned_in.mask_for(ds)
            if mask is None:
                log.warning(
                    "de-identification blocked: instance %s of study %s may carry burned-in "
                    "text (%s); configure deid.burned_in masks to release it",
                    inst_p,
                    study_p,
                    reason,
                )
                self._emit("deid.blocked", instance=inst_p, study=study_p, reason=reason)
                return DeidResult(
                    None, reason, pseudo_pid, study_p, inst_p, shift, self.options.names()
                )
            self._mask(ds, mask)
            masked = True
            self._emit("deid.masked", instance=inst_p, study=study_p, reason=reason)

        scrubber = self._scrubbers.for_dataset(ds)
        ctx = _Ctx(shift_days=shift, uid_map={}, scrubber=scrubber)
        self._walk(ds, ctx, mode=_NORMAL, device_mask=self._overlay_mask(ds))
        self._set_text(ds, _PATIENT_ID, "PatientID", pseudo_pid)
        self._set_text(ds, _PATIENT_NAME, "PatientName", pseudo_pid)
        self._file_meta(ds, ctx)
        self._stamp.apply(ds, masked)
        if ctx.invalid_dates:
            self._emit("deid.invalid_dates_removed", instance=inst_p, count=ctx.invalid_dates)
        self._emit(
            "deid.deidentified",
            instance=inst_p,
            study=study_p,
            options=list(self.options.names()),
            pixels_masked=masked,
        )
        identifiers["DeidStudyInstanceUID"] = fast_str(ds, _STUDY_UID)
        identifiers["PatientPseudonym"] = pseudo_pid
        return DeidResult(
            dataset=ds,
            blocked_reason=None,
            patient_pseudonym=pseudo_pid,
            study_pseudonym=study_p,
            instance_pseudonym=inst_p,
            date_shift_days=shift,
            options=self.options.names(),
            uid_map=ctx.uid_map,
            identifiers=identifiers,
            pixels_masked=masked,
        )

    # ------------------------------------------------------------------ helpers

    def _emit(self, kind: str, **details: Any) -> None:
        if self._on_event is not None:
            self._on_event(kind, details)

    @staticmethod
    def _identifiers(ds: Dataset) -> dict[str, str]:
        return {kw: fast_str(ds, tag) for kw, tag in _VAULT_TAGS if tag in ds._dict}

    @staticmethod
    def _set_text(ds: Dataset, tag: int, keyword: str, text: str) -> None:
        """Set an ASCII value, as a raw element when the dataset came from a file."""
        elem = ds._dict.get(tag)  # type: ignore[call-overload]
        if isinstance(elem, RawDataElement):
            ds._dict[tag] = with_value(elem, text)  # type: ignore[index]
        else:
            setattr(ds, keyword, text)

    def _mask(self, ds: Dataset, mask: DeviceMask) -> None:
        apply_mask(ds, mask)

    def _overlay_mask(self, ds: Dataset) -> DeviceMask | None:
        if self.profile.overlay_data != "C":
            return None
        return self.burned_in.mask_for(ds) if self.burned_in.masks else None

    def _plan(self, tag: int, mode: str, raw_vr: str | None) -> tuple[str, str]:
        """(action, VR) for a public tag, cached per (tag, walk mode)."""
        key = (tag, mode)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        try:
            vr = dictionary_VR(tag) if dictionary_has_tag(tag) else (raw_vr or "UN")
        except KeyError:
            vr = raw_vr or "UN"
        if " or " in vr:
            vr = raw_vr or vr.split(" or ")[0]
        action = self.profile.action_for(tag)
        if action is None:
            action = self._unlisted_action(tag, vr, mode)
        elif action == "U" and self._retain_uids:
            action = "K"
        plan = (action, vr)
        self._plans[key] = plan
        return plan

    def _unlisted_action(self, tag: int, vr: str, mode: str) -> str:
        """A safety net for standard attributes Table E.1-1 does not list (documented).

        ``mode`` is the context: inside a sequence being cleaned (C) unlisted free text is
        scrubbed; inside one being replaced by dummy values (D) it is replaced too.
        """
        in_clean = mode == _CLEAN
        dummy = mode in (_DUMMY_MODE, _DUMMY_CODES_MODE)
        if not dictionary_has_tag(tag):
            return "X"  # unknown public tag: cannot know what it holds
        if vr == "UI":
            kw = keyword_for_tag(tag)
            if self._retain_uids or kw.endswith("ClassUID") or kw in _CLASS_UID_KEYWORDS:
                return "K"
            return "M"  # map unless a well-known (dictionary) UID
        if vr == "PN":
            return "C" if in_clean else ("D" if dummy else "Z")
        if vr in ("DA", "DT"):
            if self._full_dates:
                return "K"
            return "C" if self._modified_dates else ("D" if dummy else "X")
        if vr == "TM":
            return "K" if (self._full_dates or self._modified_dates) else "X"
        if vr in _TEXT_VRS:
            kw = keyword_for_tag(tag)
            if mode == _DUMMY_CODES_MODE:
                return "D"  # codes that identify a person are themselves identifiers
            if kw in _CODED_KEYWORDS:
                return "K"  # controlled terminology, not free text
            if kw in _CODE_MEANING_KEYWORDS:
                return "S"
            if dummy:
                return "D"
            return "C" if in_clean else "S"  # S: known-identifier safety net
        return "K"

    def _walk(
        self,
        ds: Dataset,
        ctx: _Ctx,
        *,
        mode: str,
        device_mask: DeviceMask | None = None,
    ) -> None:
        raw = ds._dict
        private_tags: list[int] = []
        for tag in list(raw):
            group = tag >> 16
            if group & 1:
                private_tags.append(tag)
                continue
            if not tag & 0xFFFF or group == 0x0002:
                if group != 0x0002:  # group lengths are recomputed (or not written)
                    del ds[tag]
                continue
            if 0x5000 <= group <= 0x501E:
                self._repeating(ds, tag, self.profile.curve, ctx)
                continue
            if 0x6000 <= group <= 0x601E:
                self._overlay(ds, tag, ctx, device_mask)
                continue
            if group in (0x1000, 0x1010) or (0x7F00 <= group <= 0x7FDF):
                del ds[tag]  # retired escape triplets / zonal map / variable pixel data
                continue
            elem = raw[tag]
            action, vr = self._plan(tag, mode, elem.VR)
            if action == "K":
                if vr == "SQ":
                    for item in ds[tag].value:
                        self._walk(item, ctx, mode=mode)
                elif vr == "AS":
                    self._cap_age(ds, tag)
                continue
            if action == "X":
                del raw[tag]
                continue
            if isinstance(elem, RawDataElement) and self._raw_apply(
                raw, tag, elem, action, vr, ctx
            ):
                continue
            self._apply(ds, tag, action, vr, ctx, mode)
        if private_tags:
            self._private(ds, private_tags, ctx)

    def _raw_apply(
        self,
        raw: MutableMapping[Any, Any],
        tag: int,
        elem: RawDataElement,
        action: str,
        vr: str,
        ctx: _Ctx,
    ) -> bool:
        """Apply ``action`` on undecoded bytes; False means "use the decoding path"."""
        if action == "Z":
            raw[tag] = elem._replace(value=b"", length=0)
            return True
        if vr == "SQ":
            return False
        text = ascii_value(elem)
        if text is None:
            return False
        stripped = text.strip(" \x00")
        if not stripped:
            return True  # empty stays empty whatever the action
        if tag == _PATIENT_ID:
            raw[tag] = with_value(elem, patient_pseudonym(self.keys.hmac_key, stripped))
            return True
        new: str | None
        if vr == "UI" and action in ("U", "M", "D", "C"):
            if self._retain_uids:
                return True
            out = []
            for uid in stripped.split("\\"):
                uid = uid.strip(" \x00")
                if not uid or (action in ("M", "C") and uid in UID_dictionary):
                    out.append(uid)
                    continue
                mapped = self._uids(uid)
                ctx.uid_map[uid] = mapped
                out.append(mapped)
            raw[tag] = with_value(elem, "\\".join(out), b"\x00")
            return True
        if action == "D":
            if vr not in _DUMMY:
                return False
            raw[tag] = with_value(elem, _DUMMY[vr])
            return True
        if action == "C" and vr in ("DA", "DT"):
            if ctx.shift_days is None:
                del raw[tag]
                return True
            new = shift_multi(stripped, ctx.shift_days, vr)
            if new is None:
                ctx.invalid_dates += 1
                new = ""
            raw[tag] = with_value(elem, new)
            return True
        if action == "C" and vr == "TM":
            return True
        if vr in _TEXT_VRS and action in ("S", "C"):
            scrub = ctx.scrubber.scrub_known if action == "S" else ctx.scrubber.scrub
            old = text.rstrip(" \x00")
            new = scrub(old)
            if new != old:
                raw[tag] = with_value(elem, new)
            return True
        return False

    def _apply(self, ds: Dataset, tag: int, action: str, vr: str, ctx: _Ctx, mode: str) -> None:
        if action == "X":
            del ds[tag]
            return
        elem = ds[tag]
        if tag == _PATIENT_ID:  # any Patient ID, at any depth: the same keyed pseudonym
            if elem.value:
                elem.value = patient_pseudonym(self.keys.hmac_key, _as_str(elem.value).strip())
            return
        if action == "Z":
            elem.value = Sequence() if elem.VR == "SQ" else None
        elif action == "D":
            self._dummy(elem, ctx, mode)
        elif action == "U" or action == "M":
            self._map_uids(elem, ctx, keep_known=action == "M")
        elif action == "C":
            self._clean(ds, elem, ctx)
        elif action == "S":
            if elem.value:
                vals = [ctx.scrubber.scrub_known(str(v)) for v in _values(elem.value)]
                elem.value = vals if len(vals) > 1 else vals[0]
        else:  # pragma: no cover - the table compiler only produces the actions above
            raise RuntimeError(f"unhandled action {action!r}")

    def _dummy(self, elem: DataElement, ctx: _Ctx, mode: str) -> None:
        vr = elem.VR
        if vr == "SQ":
            # Keep the structure (an SR stays an SR, a Type 1 sequence keeps its items); every
            # value inside becomes a dummy through its own row or the dummy-mode safety net.
            inner = _DUMMY_CODES_MODE if elem.tag in _PERSON_CODE_SEQUENCES else _DUMMY_MODE
            if mode == _DUMMY_CODES_MODE:
                inner = mode
            for item in elem.value:
                self._walk(item, ctx, mode=inner)
        elif vr == "UI":
            self._map_uids(elem, ctx, keep_known=False)
        elif vr in _DUMMY:
            elem.value = _DUMMY[vr] if elem.value not in (None, "") else elem.value
        elif vr in ("US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"):
            elem.value = 0 if elem.value is not None else None
        else:
            elem.value = b""

    def _map_uids(self, elem: DataElement, ctx: _Ctx, *, keep_known: bool) -> None:
        if self._retain_uids or elem.value is None or elem.value == "":
            return
        out = []
        for v in _values(elem.value):
            s = str(v).strip("\x00 ")
            if not s or (keep_known and s in UID_dictionary):
                out.append(s)
                continue
            new = self._uids(s)
            ctx.uid_map[s] = new
            out.append(new)
        elem.value = out if len(out) > 1 else out[0]

    def _clean(self, ds: Dataset, elem: DataElement, ctx: _Ctx) -> None:
        vr = elem.VR
        if vr == "SQ":
            for item in elem.value:
                self._walk(item, ctx, mode=_CLEAN)
        elif vr in ("DA", "DT"):
            self._shift(ds, elem, ctx)
        elif vr == "TM":
            return  # whole-day shifts keep the time of day; see keyed.date_shift_days
        elif vr == "AS":
            elem.value = cap_age(_as_str(elem.value))
        elif vr == "PN":
            elem.value = "ANONYMIZED" if elem.value else elem.value
        elif vr == "UI":
            self._map_uids(elem, ctx, keep_known=True)
        elif vr in ("AE", "CS"):
            if elem.value:
                elem.value = patient_pseudonym(self.keys.hmac_key, "dev:" + _as_str(elem.value))[
                    :16
                ]
        elif vr in _TEXT_VRS or vr == "UR":
            if elem.value:
                vals = [ctx.scrubber.scrub(str(v)) for v in _values(elem.value)]
                elem.value = vals if len(vals) > 1 else vals[0]
        elif vr in _STRINGY_VRS:
            return  # IS/DS numbers carry no text
        else:
            del ds[elem.tag]  # binary value we cannot inspect

    def _shift(self, ds: Dataset, elem: DataElement, ctx: _Ctx) -> None:
        if elem.value in (None, ""):
            return
        if ctx.shift_days is None:  # C on a date without the modified-dates option: remove
            del ds[elem.tag]
            return
        shifted = shift_multi(_as_str(elem.value), ctx.shift_days, elem.VR)
        if shifted is None:
            ctx.invalid_dates += 1
            elem.value = None  # an unparseable date is not passed through
        else:
            elem.value = shifted

    def _cap_age(self, ds: Dataset, tag: int) -> None:
        elem = ds[tag]
        if elem.value:
            elem.value = cap_age(_as_str(elem.value))

    def _repeating(self, ds: Dataset, tag: int, action: str, ctx: _Ctx) -> None:
        """Curve groups (50xx): removed, or kept with their text cleaned under Clean Graphics."""
        if action != "C":
            del ds[tag]
            return
        elem = ds[tag]
        if elem.VR in _TEXT_VRS and elem.value:
            elem.value = ctx.scrubber.scrub(_as_str(elem.value))

    def _overlay(self, ds: Dataset, tag: int, ctx: _Ctx, mask: DeviceMask | None) -> None:
        """Overlay groups (60xx): Overlay Data/Comments per the table; the group goes with them."""
        group = tag >> 16
        element = tag & 0xFFFF
        if self.profile.overlay_data != "C":
            del ds[tag]  # without its data an overlay group is meaningless
            return
        elem = ds[tag]
        if element == 0x4000 and self.profile.overlay_comments != "C":
            del ds[tag]
        elif elem.VR in _TEXT_VRS and elem.value:
            elem.value = ctx.scrubber.scrub(_as_str(elem.value))
        elif element == 0x3000 and mask is not None and elem.value:
            mask_overlay(ds, group, mask)

    def _private(self, ds: Dataset, tags: list[int], ctx: _Ctx) -> None:
        """Remove private elements unless the safe-private option and allow-list keep them."""
        keep_block: set[int] = set()
        if self.profile.private == "C" and self.safe_private:
            for tag in tags:
                group, element = tag >> 16, tag & 0xFFFF
                if element < 0x1000:
                    continue
                creator_tag = (group << 16) | (element >> 8)
                if creator_tag not in ds._dict:
                    continue
                creator = _as_str(ds[creator_tag].value)
                if self.safe_private.allows(creator, group, element & 0xFF):
                    keep_block.add(creator_tag)
                    elem = ds[tag]
                    if elem.VR == "SQ":
                        for item in elem.value:
                            self._walk(item, ctx, mode=_CLEAN)
                else:
                    del ds[tag]
        for tag in tags:
            if tag not in ds._dict:
                continue
            element = tag & 0xFFFF
            if element < 0x1000 and tag not in keep_block:
                del ds[tag]
            elif element >= 0x1000 and self.profile.private != "C":
                del ds[tag]
            elif element >= 0x1000 and not self.safe_private:
                del ds[tag]

    def _file_meta(self, ds: Dataset, ctx: _Ctx) -> None:
        meta = getattr(ds, "file_meta", None)
        if meta is None:
            return
        if "MediaStorageSOPInstanceUID" in meta and not self._retain_uids:
            old = str(meta.MediaStorageSOPInstanceUID)
            new = self._uids(old)
            ctx.uid_map[old] = new
            meta.MediaStorageSOPInstanceUID = new
        for kw in (
            "SourceApplicationEntityTitle",
            "SendingApplicationEntityTitle",
            "ReceivingApplicationEntityTitle",
            "SourcePresentationAddress",
            "SendingPresentationAddress",
            "ReceivingPresentationAddress",
            "PrivateInformationCreatorUID",
            "PrivateInformation",
        ):
            if kw in meta:
                del meta[kw]


def _values(value: Any) -> list[Any]:
    if isinstance(value, (MultiValue, list, tuple)):
        return list(value)
    return [value]


def _as_str(value: Any) -> str:
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return "" if value is None else str(value)
