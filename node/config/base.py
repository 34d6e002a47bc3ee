"""Building blocks shared by every config section.

Every section is a frozen pydantic model that rejects unknown keys, so a typo in an admin's YAML
is an error at start-up instead of a silently ignored setting.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

__all__ = ["AETitle", "FrozenModel", "Port"]


class FrozenModel(BaseModel):
    """Immutable config object; unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)


_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def _check_ae(value: str) -> str:
    if not _AE_RE.match(value) or value.strip() == "":
        raise ValueError(
            "must be a DICOM AE title: 1-16 printable ASCII characters, no backslash, not blank"
        )
    return value.strip()


AETitle = Annotated[str, AfterValidator(_check_ae)]
"""A DICOM Application Entity title (PS3.5 AE VR)."""

Port = Annotated[int, Field(ge=1, le=65535)]
"""A TCP port number."""
