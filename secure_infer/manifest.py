"""The vendor model manifest: everything public about a model.

The hospital fetches the manifest (never the weights). It describes the input, the public
preprocessing, an optional public prefix network run in clear at the hospital, and the output
labels with their finding codes and decision thresholds, which the SR builder turns into TID 1500
content. ``onnx`` names the private model file; it is read only on the vendor side and is
removed from the copy served to hospitals (see :meth:`Manifest.public`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from secure_infer.errors import InferenceError

__all__ = [
    "Code",
    "InputSpec",
    "Manifest",
    "ManifestError",
    "OutputLabel",
    "Preprocessing",
    "load_manifest",
]


class ManifestError(InferenceError):
    """A manifest file is missing, not YAML or not valid; ``problems`` has one line each."""

    code = "invalid_manifest"

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Code(_Frozen):
    """A coded concept (SNOMED CT ``SCT``, DICOM ``DCM``, ...)."""

    scheme: str = Field(min_length=1, description="coding scheme designator, e.g. SCT or DCM")
    value: str = Field(min_length=1)
    meaning: str = Field(min_length=1)


class InputSpec(_Frozen):
    """Shape and value range of the tensor the (private) model expects."""

    shape: tuple[int, int, int] = Field(description="channels, rows, columns")
    range: tuple[float, float] = (0.0, 1.0)


class Window(_Frozen):
    center: float
    width: float = Field(gt=0)


class Normalize(_Frozen):
    mean: float = 0.0
    std: float = Field(default=1.0, gt=0)


class Preprocessing(_Frozen):
    """Public preprocessing applied by the hospital before encryption, in this order:
    rescale slope/intercept, window (or min-max when ``window`` is null), resize, normalize."""

    window: Window | None = None
    resize: tuple[int, int] | None = None
    normalize: Normalize = Normalize()
    photometric_invert_monochrome1: bool = True


class OutputLabel(_Frozen):
    """One output of the model, reported as one TID 1500 measurement group."""

    name: str = Field(min_length=1)
    index: int = Field(ge=0, description="position in the model's output vector")
    activation: Literal["sigmoid", "softmax", "none"] = "sigmoid"
    finding: Code
    threshold: float = Field(ge=0.0, le=1.0)
    level: Literal["study", "image"] = "study"


class Manifest(_Frozen):
    """A vendor model package's public description."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    version: str = Field(min_length=1)
    manufacturer: str
    model_name: str
    intended_use: str
    not_for_primary_diagnosis: bool = True
    input: InputSpec
    preprocessing: Preprocessing = Preprocessing()
    outputs: tuple[OutputLabel, ...] = Field(min_length=1)
    onnx: str | None = Field(default=None, description="private model file (vendor side only)")
    prefix_onnx: str | None = Field(
        default=None, description="optional public prefix network the hospital runs in clear"
    )
    engine: Literal["ckks", "cheetah", "auto"] = Field(
        default="ckks",
        description="ckks (non-interactive HE), cheetah (two-party computation with SPU), or "
        "auto (CKKS when the model compiles for it, else Cheetah); absent means ckks",
    )

    @model_validator(mode="after")
    def _unique_outputs(self) -> Manifest:
        names = [o.name for o in self.outputs]
        if len(set(names)) != len(names):
            raise ValueError("outputs: label names must be unique")
        return self

    def public(self) -> Manifest:
        """The copy a hospital may see: without the private model file name."""
        return self.model_copy(update={"onnx": None})


def load_manifest(path: str | Path) -> Manifest:
    """Load a manifest YAML file; relative file names in it stay relative to its folder."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(str(p), ["file not found"]) from None
    except yaml.YAMLError as exc:
        raise ManifestError(str(p), [f"not valid YAML: {exc}"]) from None
    if not isinstance(data, dict):
        raise ManifestError(str(p), ["must be a mapping"])
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems = [
            ".".join(str(x) for x in e["loc"]) + ": " + e["msg"] for e in exc.errors()
        ]
        raise ManifestError(str(p), problems) from None
