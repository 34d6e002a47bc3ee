"""Two-party CKKS inference: parameters, keys, ONNX -> HE plan compiler, evaluator, client, server.

Knows nothing of DICOM networking.
"""

from __future__ import annotations

__all__: list[str] = []
