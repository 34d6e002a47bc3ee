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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom._uid_dict import UID_dictionary
from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from node.deid.burned import (
    BurnedInPolicy,
    BurnedInRule,
    DeviceMask,
    apply_mask,
    burned_in_reason,
)
from node.deid.keyed import DeidKeys, UidMapper, date_shift_days, patient_pseudonym
from node.deid.options import (
    BASIC_PROFILE_CODE,
    CLEAN_PIXEL_DATA_CODE,
    Option,
    ProfileOptions,
    parse_options,
)
from node.deid.private import SafePrivateAllowList
from node.deid.scrub import PhiScrubber, name_tokens
from node.deid.table import CompiledProfile, compile_profile
from node.deid.temporal import cap_age, shift_multi
from node.pseudonym import Pseudonymizer

__all__ = ["DeidResult", "Deidentifier", "EventCallback"]

log = logging.getLogger(__name__)

EventCallback = Callable[[str, dict[str, Any]], None]
"""``on_event(kind, details)``; details never contain PHI (pseudonyms and codes only)."""

_PATIENT_NAME = 0x00100010
_PATIENT_ID = 0x00100020
_PATIENT_AGE = 0x00101010
_SOP_INSTANCE_UID = 0x00080018
_PIXEL_DATA = 0x7FE00010
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
_VAULT_KEYWORDS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "IssuerOfPatientID",
    "OtherPatientIDs",
    "AccessionNumber",
    "StudyInstanceUID",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "ReferringPhysicianName",
)
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
_QUICK_ID = (0x00100020, 0x00101000, 0x00080050, 0x00200010, 0x00100021, 0x00101040, 0x00102154)
_TOKEN_KEYWORD_PARTS = ("ID", "Number", "Address", "Telephone", "Institution")


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
        self._plans: dict[tuple[int, bool], tuple[str, str]] = {}
        self._scrubbers: dict[frozenset[str], PhiScrubber] = {}
        self._token_kinds: dict[int, str] = {}
        self._method_values = ["BlindRead PS3.15 E.1-1 Basic Profile", *self.options.names()]

    # ------------------------------------------------------------------ public API

    def deidentify(self, ds: Dataset) -> DeidResult:
        """De-identify ``ds`` in place and return the result (or why it is blocked)."""
        orig_pid = str(ds.get("PatientID", "") or "").strip()
        orig_study = str(ds.get("StudyInstanceUID", "") or "")
        identity_key = orig_pid or (
            f"{ds.get('PatientName', '')}|{ds.get('PatientBirthDate', '')}|{orig_study}"
        )
        pseudo_pid = patient_pseudonym(self.keys.hmac_key, identity_key)
        study_p = self._pseudo.study(orig_study)
        inst_p = self._pseudo.instance(str(ds.get("SOPInstanceUID", "") or ""))
        shift = date_shift_days(self.keys.date_key, identity_key) if self._modified_dates else None
        identifiers = self._identifiers(ds)

        masked = False
        reason = burned_in_reason(ds, self.burned_in)
        if reason is not None and self.burned_in.rule is not BurnedInRule.ENCRYPTED_ONLY:
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

        scrubber = self._scrubber(ds)
        ctx = _Ctx(shift_days=shift, uid_map={}, scrubber=scrubber)
        self._walk(ds, ctx, in_clean=False, device_mask=self._overlay_mask(ds))
        if _PATIENT_ID in ds or orig_pid:
            ds.PatientID = pseudo_pid
        ds.PatientName = pseudo_pid
        self._file_meta(ds, ctx)
        self._stamp(ds, masked)
        if ctx.invalid_dates:
            self._emit("deid.invalid_dates_removed", instance=inst_p, count=ctx.invalid_dates)
        identifiers["DeidStudyInstanceUID"] = str(ds.get("StudyInstanceUID", "") or "")
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

    def map_uid(self, uid: str) -> str:
        """The replacement of ``uid`` (what every instance of this node gets for it)."""
        return uid if self._retain_uids else self._uids(uid)

    # ------------------------------------------------------------------ helpers

    def _emit(self, kind: str, **details: Any) -> None:
        if self._on_event is not None:
            self._on_event(kind, details)

    @staticmethod
    def _identifiers(ds: Dataset) -> dict[str, str]:
        out = {}
        for kw in _VAULT_KEYWORDS:
            if kw in ds:
                out[kw] = _as_str(ds[kw].value)
        return out

    def _mask(self, ds: Dataset, mask: DeviceMask) -> None:
        apply_mask(ds, mask)

    def _overlay_mask(self, ds: Dataset) -> DeviceMask | None:
        if self.profile.overlay_data != "C":
            return None
        return self.burned_in.mask_for(ds) if self.burned_in.masks else None

    def _scrubber(self, ds: Dataset) -> PhiScrubber:
        """The instance's scrubber; cached by token set (instances of a patient share one)."""
        tokens = frozenset(self._collect_tokens(ds) if self._clean_text else self._quick_tokens(ds))
        scrubber = self._scrubbers.get(tokens)
        if scrubber is None:
            if len(self._scrubbers) > 256:
                self._scrubbers.clear()
            scrubber = self._scrubbers[tokens] = PhiScrubber(tokens)
        return scrubber

    @staticmethod
    def _quick_tokens(ds: Dataset) -> set[str]:
        """Identifiers from the top-level patient/study attributes only (cheap)."""
        tokens: set[str] = set()
        for tag in _QUICK_PN:
            if tag in ds._dict:
                for v in _values(ds[tag].value):
                    tokens |= name_tokens(str(v))
        for tag in _QUICK_ID:
            if tag in ds._dict:
                tokens |= {str(v) for v in _values(ds[tag].value) if len(str(v).strip()) >= 3}
        return tokens

    def _collect_tokens(self, ds: Dataset, tokens: set[str] | None = None) -> set[str]:
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
            value = ds[tag].value
            if kind == "SQ":
                for item in value or ():
                    self._collect_tokens(item, tokens)
            elif kind == "PN":
                for v in _values(value):
                    tokens |= name_tokens(str(v))
            elif kind == "ID":
                tokens |= {str(v) for v in _values(value) if len(str(v).strip()) >= 3}
            elif kind == "BD" and value:
                d = str(value)
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

    def _plan(self, tag: int, in_clean: bool, raw_vr: str | None) -> tuple[str, str]:
        """(action, VR) for a public tag, cached per (tag, clean context)."""
        key = (tag, in_clean)
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
            action = self._unlisted_action(tag, vr, in_clean)
        elif action == "U" and self._retain_uids:
            action = "K"
        plan = (action, vr)
        self._plans[key] = plan
        return plan

    def _unlisted_action(self, tag: int, vr: str, in_clean: bool) -> str:
        """A safety net for standard attributes Table E.1-1 does not list (documented)."""
        if not dictionary_has_tag(tag):
            return "X"  # unknown public tag: cannot know what it holds
        if vr == "UI":
            kw = keyword_for_tag(tag)
            if self._retain_uids or kw.endswith("ClassUID") or kw in _CLASS_UID_KEYWORDS:
                return "K"
            return "M"  # map unless a well-known (dictionary) UID
        if vr == "PN":
            return "C" if in_clean else "Z"
        if vr in ("DA", "DT"):
            return "K" if self._full_dates else ("C" if self._modified_dates else "X")
        if vr == "TM":
            return "K" if (self._full_dates or self._modified_dates) else "X"
        if vr in _TEXT_VRS:
            return "C" if in_clean else "S"  # S: known-identifier safety net
        return "K"

    def _walk(
        self,
        ds: Dataset,
        ctx: _Ctx,
        *,
        in_clean: bool,
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
            action, vr = self._plan(tag, in_clean, elem.VR)
            if action == "K":
                if vr == "SQ":
                    for item in ds[tag].value:
                        self._walk(item, ctx, in_clean=in_clean)
                elif vr == "AS":
                    self._cap_age(ds, tag)
                continue
            self._apply(ds, tag, action, vr, ctx, in_clean)
        if private_tags:
            self._private(ds, private_tags, ctx)

    def _apply(
        self, ds: Dataset, tag: int, action: str, vr: str, ctx: _Ctx, in_clean: bool
    ) -> None:
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
            self._dummy(elem, ctx)
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

    def _dummy(self, elem: DataElement, ctx: _Ctx) -> None:
        vr = elem.VR
        if vr == "SQ":
            elem.value = Sequence()
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
                self._walk(item, ctx, in_clean=True)
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
            _mask_overlay(ds, group, mask)

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
                            self._walk(item, ctx, in_clean=True)
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
        if "FileMetaInformationGroupLength" in meta:
            del meta.FileMetaInformationGroupLength  # recomputed on write

    def _stamp(self, ds: Dataset, masked: bool) -> None:
        """Record what was done: (0012,0062/0063/0064) and (0028,0303)."""
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = self._method_values
        codes = [BASIC_PROFILE_CODE]
        if masked:
            codes.append(CLEAN_PIXEL_DATA_CODE)
        codes += [(o.code, o.meaning) for o in Option if o in self.options]
        seq = []
        for value, meaning in codes:
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            seq.append(item)
        ds.DeidentificationMethodCodeSequence = seq
        if self._full_dates:
            ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
        elif self._modified_dates:
            ds.LongitudinalTemporalInformationModified = "MODIFIED"
        else:
            ds.LongitudinalTemporalInformationModified = "REMOVED"


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


def _mask_overlay(ds: Dataset, group: int, mask: DeviceMask) -> None:
    """Blank the mask's rectangles in a packed 1-bit overlay plane (PS3.3 C.9.2)."""
    rows = int(ds.get(Tag(group, 0x0010)).value)
    cols = int(ds.get(Tag(group, 0x0011)).value)
    frames = int(ds[Tag(group, 0x0015)].value) if Tag(group, 0x0015) in ds else 1
    origin = ds[Tag(group, 0x0050)].value if Tag(group, 0x0050) in ds else [1, 1]
    r0, c0 = int(origin[0]) - 1, int(origin[1]) - 1
    elem = ds[Tag(group, 0x3000)]
    n = rows * cols * frames
    bits = np.unpackbits(np.frombuffer(elem.value, dtype=np.uint8), bitorder="little")[:n]
    plane = bits.reshape(frames, rows, cols).copy()
    for x, y, w, h in mask.regions:
        ys, xs = max(0, y - r0), max(0, x - c0)
        plane[:, ys : max(0, y + h - r0), xs : max(0, x + w - c0)] = 0
    packed = np.packbits(plane.reshape(-1), bitorder="little").tobytes()
    if len(packed) % 2:
        packed += b"\x00"
    elem.value = packed
