"""Scorer for the synthetic PHI corpus: every planted value gone or transformed as the profile says.

``score(manifest, in_dir, out_dir, options)`` returns one :class:`Check` per assertion (several
hundred for the default corpus); the tests require all of them to pass. Checks:

- no planted name (any variant, accent/case-insensitive), ID, accession, address, phone, birth
  date, source AE title, or unsafe private value appears anywhere in any output (all elements,
  all sequence depths, private blocks, file meta), nor device/institution/date/UID strings unless
  the option that retains them is on;
- no original instance UID survives (unless retain_uids); replacement UIDs are ``2.25.`` and
  valid; the same original maps to the same replacement in every file; references (SR evidence,
  ReferencedImageSequence, SourceImageSequence, Frame of Reference, file meta) resolve;
- one pseudonym per patient, used for Patient ID and Patient's Name in every file;
- dates shifted by one per-patient offset, preserving intervals and DT time/offset (modified
  dates), kept (full dates) or removed (basic); ages over 89 capped at 090Y;
- (0012,0062/0063/0064) and (0028,0303) exactly reflect the options applied;
- burned-in instances blocked (or, with a device mask, released with the band blanked and every
  other pixel unchanged); pixel data of all other instances byte-identical;
- private elements: only the allow-listed one survives, and only under retain_safe_private;
- SR: person names in content items gone; text items scrubbed (clean_structured_content) or
  replaced by dummy values with the tree structure and codes kept (basic).
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from tests.support.phi_corpus import DOSE_MASK, SAFE_CREATOR, Manifest

__all__ = ["Check", "failures", "score"]

_CODES = {
    "retain_safe_private": "113111",
    "retain_uids": "113110",
    "retain_device_identity": "113109",
    "retain_institution_identity": "113112",
    "retain_patient_characteristics": "113108",
    "retain_long_full_dates": "113106",
    "retain_long_modified_dates": "113107",
    "clean_descriptors": "113105",
    "clean_structured_content": "113104",
    "clean_graphics": "113103",
}


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str = ""


def _norm(s: str) -> str:
    d = unicodedata.normalize("NFKD", s)
    return "".join(c for c in d if not unicodedata.combining(c)).casefold()


def _strings(ds: Dataset) -> Iterator[str]:
    """Every value of every element, recursively, as text (pixel data excluded)."""
    for elem in ds:
        if elem.tag == 0x7FE00010:
            continue
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _strings(item)
            continue
        v = elem.value
        if isinstance(v, bytes):
            yield v.decode("latin-1", "ignore")
        elif isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
            yield "\\".join(str(x) for x in v)
        elif v is not None:
            yield str(v)


def _all_text(ds: Dataset) -> str:
    parts = list(_strings(ds))
    if hasattr(ds, "file_meta"):
        parts += list(_strings(ds.file_meta))
    return _norm("\n".join(parts))


def _find_all(ds: Dataset, keyword: str) -> list[Any]:
    out = []
    for elem in ds.iterall():
        if elem.keyword == keyword:
            out.append(elem.value)
    return out


def _date(s: str) -> dt.date:
    return dt.date(int(s[:4]), int(s[4:6]), int(s[6:8]))


def score(
    manifest: Manifest,
    in_dir: Path,
    out_dir: Path,
    options: Iterable[str] = (),
    *,
    mask_configured: bool = False,
) -> list[Check]:
    """Score one de-identified copy of the corpus."""
    opts = set(options)
    checks: list[Check] = []

    def check(name: str, ok: bool, detail: str = "") -> None:
        checks.append(Check(name, bool(ok), detail))

    forbidden = set(manifest.phi_strings) | manifest.unsafe_private_values
    if "retain_device_identity" not in opts:
        forbidden |= manifest.device_strings
    if "retain_institution_identity" not in opts:
        forbidden |= manifest.institution_strings
    if "retain_long_full_dates" not in opts and "retain_uids" not in opts:
        forbidden |= manifest.date_strings
    if "retain_uids" not in opts:
        forbidden |= manifest.uids
    forbidden_norm = {_norm(s): s for s in forbidden if len(s) >= 2}

    uid_seen: dict[str, str] = {}  # original -> replacement across files
    deltas: dict[int, int] = {}  # patient index -> date shift seen first
    for p in manifest.patients:
        outs: dict[str, Dataset] = {}
        ins: dict[str, Dataset] = {}
        for rel, role in p.files.items():
            ins[rel] = pydicom.dcmread(in_dir / rel)
            path = out_dir / rel
            blocked_expected = role == "us" or (role == "dose" and not mask_configured)
            if blocked_expected:
                check(f"{rel}: burned-in instance blocked", not path.exists())
                continue
            check(f"{rel}: written", path.exists())
            if path.exists():
                outs[rel] = pydicom.dcmread(path)

        for rel, ds in outs.items():
            text = _all_text(ds)
            for norm, orig in forbidden_norm.items():
                check(f"{rel}: planted value {orig!r} absent", norm not in text)
            src = ins[rel]
            # --- UIDs
            for kw in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
                old, new = str(src[kw].value), str(ds[kw].value)
                if "retain_uids" in opts:
                    check(f"{rel}: {kw} retained", old == new)
                    continue
                check(
                    f"{rel}: {kw} replaced by 2.25 UID",
                    new.startswith("2.25.") and len(new) <= 64 and new != old,
                )
                prev = uid_seen.setdefault(old, new)
                check(f"{rel}: {kw} mapped consistently", prev == new)
            check(
                f"{rel}: file meta SOP Instance UID = SOP Instance UID",
                ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID,
            )
            # --- patient pseudonym
            pid = str(ds.get("PatientID", ""))
            check(f"{rel}: Patient ID pseudonymized", pid and pid != p.patient_id)
            check(f"{rel}: Patient's Name is the pseudonym", str(ds.PatientName) == pid)
            # --- stamps
            check(f"{rel}: Patient Identity Removed YES", ds.get("PatientIdentityRemoved") == "YES")
            codes = {i.CodeValue for i in ds.DeidentificationMethodCodeSequence}
            want = {"113100"} | {_CODES[o] for o in opts}
            if p.files[rel] == "dose":
                want.add("113101")
            check(f"{rel}: method codes = options applied", codes == want, f"{codes} != {want}")
            check(
                f"{rel}: De-identification Method present", bool(ds.get("DeidentificationMethod"))
            )
            ltim = ds.get("LongitudinalTemporalInformationModified")
            exp_ltim = (
                "UNMODIFIED"
                if "retain_long_full_dates" in opts
                else "MODIFIED"
                if "retain_long_modified_dates" in opts
                else "REMOVED"
            )
            check(f"{rel}: (0028,0303) = {exp_ltim}", ltim == exp_ltim)
            # --- dates
            if "retain_long_modified_dates" in opts:
                delta = (_date(str(ds.StudyDate)) - _date(str(src.StudyDate))).days
                check(f"{rel}: study date shifted into the past", delta < 0)
                first = deltas.setdefault(manifest.patients.index(p), delta)
                check(f"{rel}: one shift per patient", first == delta)
                if "AcquisitionDateTime" in src:
                    a_in, a_out = str(src.AcquisitionDateTime), str(ds.AcquisitionDateTime)
                    check(f"{rel}: DT time and UTC offset kept", a_in[8:] == a_out[8:])
                    check(
                        f"{rel}: DT shifted by the same offset",
                        (_date(a_out) - _date(a_in)).days == delta,
                    )
                if "ContentDate" in src:
                    check(
                        f"{rel}: interval study->content kept",
                        (_date(str(ds.ContentDate)) - _date(str(ds.StudyDate))).days
                        == (_date(str(src.ContentDate)) - _date(str(src.StudyDate))).days,
                    )
                check(
                    f"{rel}: times kept (whole-day shift)",
                    str(ds.get("StudyTime", "")) == str(src.StudyTime),
                )
            elif "retain_long_full_dates" in opts:
                check(f"{rel}: full dates kept", ds.StudyDate == src.StudyDate)
            else:
                check(f"{rel}: study date emptied", not ds.get("StudyDate"))
                check(
                    f"{rel}: acquisition datetime not kept",
                    str(ds.get("AcquisitionDateTime", "") or "")
                    != str(src.get("AcquisitionDateTime", ""))
                    or "AcquisitionDateTime" not in src,
                )
            check(f"{rel}: birth date removed", not ds.get("PatientBirthDate"))
            # --- patient characteristics
            if "retain_patient_characteristics" in opts:
                check(f"{rel}: age over 89 capped", ds.get("PatientAge") == "090Y")
                check(f"{rel}: sex kept", ds.get("PatientSex") == "M")
            else:
                check(f"{rel}: age removed", "PatientAge" not in ds)
            # --- private blocks
            safe_kept = False
            for elem in ds:
                if elem.tag.is_private and not elem.tag.is_private_creator:
                    creator_tag = (elem.tag.group << 16) | (elem.tag.element >> 8)
                    creator = str(ds[creator_tag].value) if creator_tag in ds else ""
                    ok = (
                        creator == SAFE_CREATOR
                        and (elem.tag.element & 0xFF) == 0x10
                        and "retain_safe_private" in opts
                    )
                    check(f"{rel}: private {elem.tag} allowed", ok)
                    safe_kept |= ok
            if "retain_safe_private" in opts and p.files[rel] == "ct":
                check(f"{rel}: allow-listed private element kept", safe_kept)
            # --- pixels
            role = p.files[rel]
            if role == "ct":
                check(f"{rel}: pixel data byte-identical", ds.PixelData == src.PixelData)
            if role == "dose":
                arr_in = np.frombuffer(src.PixelData, np.uint8).reshape(16, 16)
                arr_out = np.frombuffer(ds.PixelData, np.uint8).reshape(16, 16)
                region = DOSE_MASK["regions"][0]
                y1 = region["y"] + region["height"]
                check(f"{rel}: burned-in band blanked", not arr_out[:y1].any())
                check(f"{rel}: other pixels unchanged", np.array_equal(arr_out[y1:], arr_in[y1:]))
                check(f"{rel}: Burned In Annotation now NO", ds.get("BurnedInAnnotation") == "NO")
            # --- SR content
            if role == "sr":
                texts = [str(v) for v in _find_all(ds, "TextValue")]
                if "clean_structured_content" in opts:
                    check(
                        f"{rel}: SR text item kept but scrubbed",
                        len(texts) == 1 and "No nodule." in texts[0] and "***" in texts[0],
                    )
                    dates = [str(v) for v in _find_all(ds, "Date")]
                    if "retain_long_modified_dates" in opts:
                        check(
                            f"{rel}: SR DATE item shifted",
                            dates and all(d != p.study_date for d in dates),
                        )
                    uid_items = [str(v) for v in _find_all(ds, "UID")]
                    if "retain_uids" not in opts:
                        check(
                            f"{rel}: SR UIDREF item mapped to the study's new UID",
                            uid_items == [str(ds.StudyInstanceUID)],
                        )
                else:
                    check(
                        f"{rel}: SR text items replaced by dummies (basic profile)",
                        texts == ["ANONYMIZED"],
                    )
                    dates = [str(v) for v in _find_all(ds, "Date")]
                    if not opts & {"retain_long_modified_dates", "retain_long_full_dates"}:
                        check(f"{rel}: SR DATE item replaced by a dummy", dates == ["19000101"])
                if "clean_structured_content" in opts:

                    def content_codes(d: Dataset) -> set[str]:
                        tree = Dataset()
                        tree.ContentSequence = d.ContentSequence
                        tree.ConceptNameCodeSequence = d.ConceptNameCodeSequence
                        return {str(v) for v in _find_all(tree, "CodeValue")}

                    check(
                        f"{rel}: SR content code values intact",
                        content_codes(src) == content_codes(ds),
                    )
                pnames = [str(v) for v in _find_all(ds, "PersonName")]
                check(
                    f"{rel}: SR person names replaced", all(v in ("", "ANONYMIZED") for v in pnames)
                )

        # --- references across series and documents
        if "retain_uids" not in opts and outs:
            sops = {str(d.SOPInstanceUID) for d in outs.values()}
            for rel, ds in outs.items():
                for ref in _find_all(ds, "ReferencedSOPInstanceUID"):
                    if str(ref) == str(ds.StudyInstanceUID):
                        continue  # the study reference in ReferencedStudySequence
                    check(
                        f"{rel}: reference resolves to a de-identified instance",
                        str(ref) in sops or str(ref) == str(ds.StudyInstanceUID),
                    )
            ct_outs = [d for r, d in outs.items() if p.files[r] == "ct"]
            check(
                f"patient {manifest.patients.index(p)}: one Frame of Reference across series",
                len({str(d.FrameOfReferenceUID) for d in ct_outs}) == 1,
            )
            check(
                f"patient {manifest.patients.index(p)}: one study UID across files",
                len({str(d.StudyInstanceUID) for d in outs.values()}) == 1,
            )
            check(
                f"patient {manifest.patients.index(p)}: one pseudonym across files",
                len({str(d.PatientID) for d in outs.values()}) == 1,
            )
            # series 2 references series 1 instance 0 (ReferencedImageSequence)
            ct2 = next(d for r, d in outs.items() if r.endswith("ct_2.dcm"))
            ct0 = next(d for r, d in outs.items() if r.endswith("ct_0.dcm"))
            check(
                f"patient {manifest.patients.index(p)}: ReferencedImageSequence chain",
                ct2.ReferencedImageSequence[0].ReferencedSOPInstanceUID == ct0.SOPInstanceUID,
            )
    pseudonyms = set()
    for p in manifest.patients:
        for rel in p.files:
            path = out_dir / rel
            if path.exists():
                pseudonyms.add((manifest.patients.index(p), str(pydicom.dcmread(path).PatientID)))
    check(
        "pseudonyms distinct between patients",
        len({ps for _, ps in pseudonyms}) == len(manifest.patients),
    )
    return checks


def failures(checks: list[Check]) -> list[str]:
    """The names (and details) of the checks that failed."""
    return [f"{c.name} {c.detail}".strip() for c in checks if not c.passed]
