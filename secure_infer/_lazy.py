"""Lazy public names for secure_infer's packages (PEP 562 module ``__getattr__``).

``import secure_infer`` (or ``.hospital``, ``.vendor``) must stay cheap: the node's CLI and the
vendor's ``--help`` should not load TenSEAL, onnxruntime or uvicorn. Each package lists its
public names in a ``name -> submodule`` table and gets its ``__getattr__`` from here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_getattr"]


def lazy_getattr(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``package.<where[name]>`` on first
    use of ``name``."""

    def __getattr__(name: str) -> Any:  # noqa: N807 (PEP 562 needs this name)
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__
