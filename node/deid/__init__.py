"""De-identification: the PS3.15 Annex E profile with options, keyed UIDs/pseudonyms/date shifts,
safe-private allow-list and the burned-in PHI policy.

Typical use (pipeline, in memory)::

    deid = Deidentifier(["clean_descriptors"], DeidKeys.load_or_create(cfg.node.keys))
    result = deid.deidentify(ds)
    if result.blocked: ...            # result.blocked_reason, audit entry already emitted
    else: send(result.dataset); vault.store(result.study_pseudonym, result.identifiers)
"""

from __future__ import annotations

from node.deid.burned import BurnedInPolicy, BurnedInRule, DeviceMask
from node.deid.engine import Deidentifier, DeidResult, EventCallback
from node.deid.keyed import DeidKeys, UidMapper, date_shift_days, patient_pseudonym
from node.deid.options import KNOWN_NAMES, Option, OptionError, ProfileOptions, parse_options
from node.deid.private import SafePrivateAllowList, SafePrivateTag
from node.deid.scrub import PhiScrubber
from node.deid.table import CompiledProfile, compile_profile

__all__ = [
    "KNOWN_NAMES",
    "BurnedInPolicy",
    "BurnedInRule",
    "CompiledProfile",
    "DeidKeys",
    "DeidResult",
    "Deidentifier",
    "DeviceMask",
    "EventCallback",
    "Option",
    "OptionError",
    "PhiScrubber",
    "ProfileOptions",
    "SafePrivateAllowList",
    "SafePrivateTag",
    "UidMapper",
    "compile_profile",
    "date_shift_days",
    "parse_options",
    "patient_pseudonym",
]
