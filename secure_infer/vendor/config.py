"""The vendor peer's config file (``python -m secure_infer.vendor serve --config FILE``).

Loaded with :func:`secure_infer.yamlconfig.load_yaml_model` so every problem is reported with
its YAML path (:class:`VendorConfigError`). Relative paths are resolved against the config
file's folder by :func:`load_vendor_config`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from secure_infer.errors import InferenceError
from secure_infer.yamlconfig import FrozenModel, Port, load_yaml_model

__all__ = [
    "HospitalAccessSection",
    "VendorAccessSection",
    "VendorConfig",
    "VendorConfigError",
    "VendorLimitsSection",
    "VendorListenSection",
    "VendorRegistrySection",
    "VendorScaleSection",
    "VendorTlsSection",
    "VendorTwoPcModel",
    "VendorTwoPcSection",
    "load_vendor_config",
]


class VendorConfigError(InferenceError):
    """The vendor's config file is missing, unreadable, not YAML, or not valid.

    ``problems`` lists every problem found (not only the first), one line each, named by its
    YAML path.
    """

    code = "invalid_config"

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        joined = "\n  ".join(self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n  {joined}")


class VendorListenSection(FrozenModel):
    """Where the HTTPS server listens."""

    host: str = "127.0.0.1"
    port: Port = 8443
    max_connections: int = Field(default=64, ge=1, description="uvicorn answers 503 beyond this")


class VendorTlsSection(FrozenModel):
    """Mutual TLS: the server's certificate and the CA that signs hospital certificates."""

    cert: Path
    key: Path
    client_ca: Path
    crl: Path | None = Field(
        default=None,
        description="the client CA's CRL (PEM/DER); re-read when it changes, checked per request",
    )


class VendorLimitsSection(FrozenModel):
    """Resource limits that keep one hospital from starving the others."""

    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_context_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    max_frames: int = Field(default=1024, ge=1)
    workers: int = Field(default=1, ge=1, le=64)
    queue_size: int = Field(default=4, ge=0, le=1024)
    read_timeout_seconds: float = Field(default=60.0, gt=0)
    evaluate_timeout_seconds: float = Field(default=300.0, gt=0)
    context_cache: int = Field(default=8, ge=1)


def _check_refs(items: tuple[str, ...], star: bool) -> tuple[str, ...]:
    from secure_infer.modelref import parse_model_ref

    for item in items:
        if star and item == "*":
            continue
        parse_model_ref(item)  # ValueError names what is expected
    return items


class HospitalAccessSection(FrozenModel):
    """What one hospital (client certificate CN) may do at this vendor."""

    models: tuple[str, ...] = Field(
        default=("*",), description="'*', a model name (any version) or name@version"
    )
    max_contexts: int | None = Field(default=None, ge=0, description="stored contexts")
    requests_per_minute: int | None = Field(default=None, ge=1, description="uploads + infers")

    @field_validator("models")
    @classmethod
    def _refs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _check_refs(v, star=True)


class VendorAccessSection(FrozenModel):
    """Per-hospital access rules; without this section every hospital may use every model."""

    hospitals: dict[str, HospitalAccessSection] = Field(default_factory=dict)
    default: HospitalAccessSection | None = Field(
        default=None, description="rules for a CN not listed; omitted: such hospitals get 403"
    )


class VendorRegistrySection(FrozenModel):
    """Versions served: which one is current, which are retired, how a model is checked."""

    current: dict[str, str] = Field(
        default_factory=dict, description="model name -> its current version (default: highest)"
    )
    retired: tuple[str, ...] = Field(default=(), description="name@version not served")
    check: Literal["encrypted", "clear"] = Field(
        default="encrypted", description="the check a model passes before it goes live"
    )
    check_tolerance: float = Field(default=1e-3, gt=0)

    @field_validator("retired")
    @classmethod
    def _retired_refs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from secure_infer.modelref import parse_model_ref

        for item in _check_refs(v, star=False):
            if parse_model_ref(item).version is None:
                raise ValueError(f"{item!r}: retire one version, name@version")
        return v


class TwoPcFixedPoint(FrozenModel):
    """SPU's ring and fraction bits (overrides what the loader chose)."""

    field: str = Field(default="FM64", pattern=r"^(FM64|FM128)$")
    fraction_bits: int = Field(default=18, ge=1, le=60)


class VendorTwoPcModel(FrozenModel):
    """A model served with the two-party (Cheetah) engine.

    ``loader`` is a ``module:function`` installed at the vendor; it is called with ``source``
    (the vendor's private file: its ONNX or weights) and returns ``(Program, weights)`` or
    ``(Program, weights, FixedPoint)`` (see :mod:`secure_infer.twopc.program`).
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    version: str = Field(min_length=1)
    loader: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    source: Path
    fixed_point: TwoPcFixedPoint | None = None


class VendorTwoPcSection(FrozenModel):
    """Two-party sessions: each one a worker process with its own TLS link to the hospital."""

    models: tuple[VendorTwoPcModel, ...] = ()
    link_host: str = Field(
        default="127.0.0.1", description="address the session workers listen on and announce"
    )
    max_sessions: int = Field(default=2, ge=1, le=64)
    session_timeout_seconds: float = Field(default=3600.0, gt=0)
    connect_timeout_seconds: float = Field(default=30.0, gt=0)
    recv_timeout_seconds: float = Field(
        default=120.0, gt=0, description="a silent peer ends the session after this"
    )
    start_timeout_seconds: float = Field(default=120.0, gt=0)
    max_images_per_session: int = Field(default=10_000, ge=1)


class VendorScaleSection(FrozenModel):
    """Where the evaluation runs: this machine's process pool, or Ray actors on a cluster.

    With ``backend: ray`` the front end joins the cluster at ``ray_address`` and starts
    ``limits.workers`` actors of ``worker_cpus`` CPUs each (docs/vendor-scale.md).
    ``contexts_dir`` lets several front ends share one context store (content-addressed, so
    concurrent writers are safe); ``node_cache_dir`` is the per-machine context cache on the
    worker machines.
    """

    backend: Literal["local", "ray"] = "local"
    ray_address: str = "auto"
    ray_namespace: str = Field(default="blindread-vendor", min_length=1)
    worker_cpus: float = Field(default=1.0, gt=0)
    node_cache_dir: Path | None = None
    contexts_dir: Path | None = None


class VendorConfig(FrozenModel):
    """Root of the vendor peer's config."""

    listen: VendorListenSection = VendorListenSection()
    tls: VendorTlsSection
    models: tuple[Path, ...] = Field(default=(), description="manifest.yaml files")
    models_dir: Path | None = Field(
        default=None, description="every <dir>/*/manifest.yaml is served too"
    )
    state_dir: Path = Path("/var/lib/blindread-vendor")
    limits: VendorLimitsSection = VendorLimitsSection()
    registry: VendorRegistrySection = VendorRegistrySection()
    access: VendorAccessSection | None = None
    chain_anchor: Path | None = Field(
        default=None,
        description="copy of the chain's signed head in a directory of its own (rollback check)",
    )
    twopc: VendorTwoPcSection = VendorTwoPcSection()
    scale: VendorScaleSection = VendorScaleSection()
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")

    @model_validator(mode="after")
    def _some_model(self) -> VendorConfig:
        if not self.models and self.models_dir is None and not self.twopc.models:
            raise ValueError(
                "models: list at least one manifest.yaml, or set models_dir (or twopc.models)"
            )
        return self

    def manifest_paths(self) -> tuple[Path, ...]:
        """Every manifest served: ``models`` then the sorted ``models_dir/*/manifest.yaml``."""
        found = list(self.models)
        if self.models_dir is not None:
            found.extend(sorted(self.models_dir.glob("*/manifest.yaml")))
        return tuple(dict.fromkeys(found))


def _resolve(base: Path, p: Path) -> Path:
    return p if p.is_absolute() else (base / p)


def load_vendor_config(path: str | Path) -> VendorConfig:
    """Load, validate and resolve relative paths against the file's folder."""
    p = Path(path)
    cfg = load_yaml_model(p, VendorConfig, VendorConfigError)
    base = p.resolve().parent
    tls = cfg.tls.model_copy(
        update={k: _resolve(base, getattr(cfg.tls, k)) for k in ("cert", "key", "client_ca")}
        | ({"crl": _resolve(base, cfg.tls.crl)} if cfg.tls.crl is not None else {})
    )
    scale = cfg.scale.model_copy(
        update={
            k: _resolve(base, getattr(cfg.scale, k))
            for k in ("node_cache_dir", "contexts_dir")
            if getattr(cfg.scale, k) is not None
        }
    )
    return cfg.model_copy(
        update={
            "scale": scale,
            "tls": tls,
            "models": tuple(_resolve(base, m) for m in cfg.models),
            "models_dir": None if cfg.models_dir is None else _resolve(base, cfg.models_dir),
            "state_dir": _resolve(base, cfg.state_dir),
            "chain_anchor": None if cfg.chain_anchor is None else _resolve(base, cfg.chain_anchor),
            "twopc": cfg.twopc.model_copy(
                update={
                    "models": tuple(
                        m.model_copy(update={"source": _resolve(base, m.source)})
                        for m in cfg.twopc.models
                    )
                }
            ),
        }
    )
