"""The vendor's model registry: several versions of a model side by side, one of them current.

A model is served under ``name@version`` (:class:`~secure_infer.modelref.ModelRef`); a request
for a bare name gets the model's *current* version: the one pinned in the config
(``registry.current``) or in the admin overlay, else the highest version (natural order:
1.10 after 1.9).

A registry is immutable. :func:`build_registry` makes the next one from a list of manifests:
a manifest already live (same file, same modification time and size of it and its ONNX files)
is reused as is; every other one is compiled and checked (:func:`secure_infer.check.
preflight_error`, encrypted by default) *before* it goes live. A model that fails stays out
with one ``ERROR`` log line naming it and why; if an older build of the same ``name@version``
was live, that one keeps serving. The server swaps the whole registry at once (and the worker
pool with it), so a request sees one consistent set of models.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secure_infer.errors import InferenceError, ModelNotFoundError
from secure_infer.manifest import load_manifest
from secure_infer.modelref import ModelRef

__all__ = ["Refused", "Registry", "ServedModel", "build_registry", "version_order"]

log = logging.getLogger(__name__)


def version_order(version: str) -> tuple[tuple[int, int, str], ...]:
    """Natural sort key of versions: digit runs compare as numbers (1.10 > 1.9 > 1.2.0-rc),
    everything else as text; a pre-release tag sorts before the release it precedes."""
    parts = [p for p in re.split(r"(\d+)", version) if p]
    def key(p: str) -> tuple[int, int, str]:
        if p.isdigit():
            return (1, int(p), "")
        return (2, 0, p) if p[0] in ".+" else (0, 0, p)  # 1.2.0.1 after, 1.2.0-rc1 before 1.2.0

    return (*(key(p) for p in parts), (1, -1, ""))


def _stamp(paths: Iterable[Path]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for p in paths:
        st = p.stat()
        out.append((str(p), st.st_mtime_ns, st.st_size))
    return tuple(out)


@dataclass(frozen=True)
class ServedModel:
    """One live ``name@version``: the compiled model, its manifest file, its public prefix."""

    vm: Any  # VendorModel (imported lazily: TenSEAL)
    manifest_path: Path
    prefix: bytes | None
    stamp: tuple[tuple[str, int, int], ...]

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.vm.manifest.name, self.vm.manifest.version)

    @property
    def key(self) -> str:
        """``name@version``: what the worker pool is asked to evaluate with."""
        return str(self.ref)


@dataclass(frozen=True)
class Refused:
    """A manifest that did not go live, and why (for the log, the status file and the CLI)."""

    manifest: str
    reason: str
    model: str | None = None
    kept_previous: bool = False


@dataclass(frozen=True)
class Registry:
    """The models served now (immutable; replaced whole on reload)."""

    models: Mapping[str, ServedModel] = field(default_factory=dict)  # key: name@version
    current: Mapping[str, str] = field(default_factory=dict)  # name -> version
    generation: int = 0

    def resolve(self, ref: ModelRef) -> ServedModel:
        """The served model for ``ref`` (a bare name: its current version); 404 otherwise."""
        version = ref.version if ref.version is not None else self.current.get(ref.name)
        if version is None:
            raise ModelNotFoundError(
                f"model '{ref.name}' is not served; known: {', '.join(self.names()) or 'none'}"
            )
        served = self.models.get(f"{ref.name}@{version}")
        if served is None:
            have = sorted((m.vm.manifest.version for m in self.models.values()
                           if m.vm.manifest.name == ref.name), key=version_order)
            raise ModelNotFoundError(
                f"version '{version}' of model '{ref.name}' is not served (retired or never"
                f" added); served versions: {', '.join(have) or 'none'}",
                code="version_not_found",
            )
        return served

    def names(self) -> list[str]:
        return sorted(self.current)

    def manifests(self) -> tuple[Path, ...]:
        """The manifest of every live model (what each worker loads)."""
        return tuple(m.manifest_path for m in self.models.values())

    def listing(self) -> list[dict[str, Any]]:
        """``/v1/models``: every served version, the current one marked."""
        return [
            {"name": m.vm.manifest.name, "version": m.vm.manifest.version,
             "current": self.current.get(m.vm.manifest.name) == m.vm.manifest.version}
            for m in sorted(self.models.values(), key=_listing_order)
        ]


def _listing_order(s: ServedModel) -> tuple[str, tuple[tuple[int, int, str], ...]]:
    return (s.vm.manifest.name, version_order(s.vm.manifest.version))


def _files_of(manifest_path: Path) -> list[Path]:
    m = load_manifest(manifest_path)
    files = [manifest_path]
    for name in (m.onnx, m.prefix_onnx):
        if name:
            files.append(manifest_path.parent / name)
    return files


def _compile(manifest_path: Path, encrypted_check: bool, tolerance: float) -> ServedModel:
    """Compile and check one model (raises InferenceError/ValueError/OSError with the reason)."""
    from secure_infer.check import preflight_error
    from secure_infer.vendor.model import VendorModel

    stamp = _stamp(_files_of(manifest_path))
    vm = VendorModel.load(manifest_path)
    m = vm.manifest
    assert m.onnx is not None  # VendorModel.load refuses a manifest without one
    prefix_path = manifest_path.parent / m.prefix_onnx if m.prefix_onnx else None
    err = preflight_error(vm, manifest_path.parent / m.onnx, prefix_path,
                          encrypted=encrypted_check)
    if not err <= tolerance:
        raise InferenceError(
            f"check failed: max |outputs - onnxruntime| = {err:.3g} > tolerance {tolerance:g}",
            code="model_check_failed",
        )
    prefix = prefix_path.read_bytes() if prefix_path is not None else None
    log.info("model %s@%s checked (%s, max error %.2g): ready", m.name, m.version,
             "encrypted" if encrypted_check else "clear", err)
    return ServedModel(vm, manifest_path, prefix, stamp)


def build_registry(
    manifests: Iterable[Path],
    *,
    pins: Mapping[str, str] | None = None,
    retired: Iterable[str] = (),
    previous: Registry | None = None,
    encrypted_check: bool = True,
    tolerance: float = 1e-3,
) -> tuple[Registry, list[Refused]]:
    """The next registry from ``manifests``; and every manifest refused, with its reason.

    ``retired`` holds ``name@version`` references taken out of service (still on disk, never
    served). ``pins`` names a model's current version (ignored, with a refusal line, if that
    version is not live).
    """
    retired_set = set(retired)
    prev = previous or Registry()
    live: dict[str, ServedModel] = {}
    refused: list[Refused] = []
    for path in dict.fromkeys(Path(p) for p in manifests):
        try:
            m = load_manifest(path)
            key = f"{m.name}@{m.version}"
        except (InferenceError, OSError, ValueError) as exc:
            refused.append(Refused(str(path), f"unreadable manifest: {exc}"))
            log.error("model manifest %s refused: %s", path, exc)
            continue
        if key in retired_set:
            log.info("model %s (%s) is retired: not served", key, path)
            continue
        if key in live:
            reason = f"{key} is already served from {live[key].manifest_path}"
            refused.append(Refused(str(path), reason, key))
            log.error("model %s from %s refused: %s", key, path, reason)
            continue
        old = prev.models.get(key)
        try:
            if old is not None and old.manifest_path == path and old.stamp == _stamp(
                _files_of(path)
            ):
                live[key] = old  # unchanged: no recompile
                continue
            live[key] = _compile(path, encrypted_check, tolerance)
        except (InferenceError, OSError, ValueError) as exc:
            kept = old is not None
            if kept:
                assert old is not None
                live[key] = old
            refused.append(Refused(str(path), str(exc), key, kept))
            log.error(
                "model %s from %s refused, it stays out: %s%s", key, path, exc,
                "; the previous build keeps serving" if kept else "",
            )
    current: dict[str, str] = {}
    for served in live.values():
        name, version = served.vm.manifest.name, served.vm.manifest.version
        if name not in current or version_order(version) > version_order(current[name]):
            current[name] = version
    for name, version in (pins or {}).items():
        if f"{name}@{version}" in live:
            current[name] = version
        else:
            reason = f"current version pinned to {name}@{version}, which is not live"
            refused.append(Refused("(pin)", reason, f"{name}@{version}"))
            log.error("%s; %s stays current", reason,
                      f"{name}@{current[name]}" if name in current else "nothing")
    return Registry(live, current, prev.generation + 1), refused
