"""``model`` or ``model@version``: how a hospital names the model (and pins its version).

Shared by the hospital (node config routes, :class:`~secure_infer.hospital.client.VendorClient`)
and the vendor (its registry resolves a reference to one served version; a bare name means the
vendor's current version of that model). The reference travels as is in the URL path
(``/v1/models/demo-lesion@1.2.0/infer``; ``@`` is allowed in a path segment, RFC 3986 pchar).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ModelRef", "parse_model_ref"]

_NAME = r"[a-z0-9][a-z0-9._-]*"  # the manifest's name pattern
_VERSION = r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}"
_REF = re.compile(rf"^(?P<name>{_NAME})(?:@(?P<version>{_VERSION}))?$")


@dataclass(frozen=True, order=True)
class ModelRef:
    """A model name and, optionally, the one version wanted (``None``: the vendor's current)."""

    name: str
    version: str | None = None

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"

    def matches(self, other: ModelRef) -> bool:
        """Whether ``other`` (a concrete ``name@version``) is covered by this reference: same
        name, and the same version unless this one names none."""
        return self.name == other.name and self.version in (None, other.version)


def parse_model_ref(text: str) -> ModelRef:
    """Parse ``name`` or ``name@version``; ``ValueError`` saying what is expected."""
    m = _REF.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(
            f"{text!r} is not a model reference: expected NAME or NAME@VERSION (name: lower-case"
            " letters, digits, '.', '_', '-'; version: letters, digits, '.', '_', '+', '-')"
        )
    return ModelRef(m.group("name"), m.group("version"))
