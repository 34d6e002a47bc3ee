"""Building blocks shared by every config section.

Every section is a frozen pydantic model that rejects unknown keys, so a typo in an admin's YAML
is an error at start-up instead of a silently ignored setting. :class:`FrozenModel` and
:data:`Port` are secure_infer's (the vendor's config is built from the same blocks); the DICOM
AE title is the node's own.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

from secure_infer import FrozenModel, Port

__all__ = ["AETitle", "FrozenModel", "Port"]


_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def _check_ae(value: str) -> str:
    if not _AE_RE.match(value) or value.strip() == "":
        raise ValueError(
            "must be a DICOM AE title: 1-16 printable ASCII characters, no backslash, not blank"
        )
    return value.strip()


AETitle = Annotated[str, AfterValidator(_check_ae)]
"""A DICOM Application Entity title (PS3.5 AE VR)."""
