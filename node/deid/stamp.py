"""What was done, recorded in the instance: (0012,0062/0063/0064) and (0028,0303).

Patient Identity Removed = YES; De-identification Method lists the profile and option names;
De-identification Method Code Sequence holds 113100, 113101 when pixels were masked, and the
CID 7050 code of every option applied; Longitudinal Temporal Information Modified says whether
dates were removed, shifted or kept.
"""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from node.deid.options import BASIC_PROFILE_CODE, CLEAN_PIXEL_DATA_CODE, Option, ProfileOptions

__all__ = ["MethodStamp"]


class MethodStamp:
    """Adds the de-identification method elements for one option set."""

    def __init__(self, options: ProfileOptions) -> None:
        self.options = options
        self._method_values = ["BlindRead PS3.15 E.1-1 Basic Profile", *options.names()]
        self._cache: dict[tuple[bool, bool], list[tuple[Any, Any]]] = {}

    def apply(self, ds: Dataset, masked: bool) -> None:
        """Record what was done: (0012,0062/0063/0064) and (0028,0303).

        The four elements are the same for every instance of an option set, so for datasets
        read from a little-endian file they are encoded once and inserted as raw elements.
        """
        implicit, little = ds.original_encoding
        if implicit is None or not little:
            self._apply_slow(ds, masked)
            return
        key = (bool(implicit), masked)
        elems = self._cache.get(key)
        if elems is None:
            tmp = Dataset()
            self._apply_slow(tmp, masked)
            fp = DicomBytesIO()
            fp.is_implicit_VR, fp.is_little_endian = bool(implicit), True
            write_dataset(fp, tmp)
            fp.seek(0)
            decoded = read_dataset(fp, bool(implicit), True)  # type: ignore[arg-type]
            elems = self._cache[key] = list(decoded._dict.items())
        for tag, raw in elems:
            ds._dict[tag] = raw

    def _apply_slow(self, ds: Dataset, masked: bool) -> None:
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
        if Option.RETAIN_LONG_FULL_DATES in self.options:
            ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
        elif Option.RETAIN_LONG_MODIFIED_DATES in self.options:
            ds.LongitudinalTemporalInformationModified = "MODIFIED"
        else:
            ds.LongitudinalTemporalInformationModified = "REMOVED"
