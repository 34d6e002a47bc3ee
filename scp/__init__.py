"""DICOM networking: association policy, Storage SCP with durable spool, study completion, SCU.

Knows nothing of encryption, routing rules or the node's config file.
"""

from __future__ import annotations

__all__: list[str] = []
