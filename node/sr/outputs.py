"""The decrypted model outputs the SR is built from, and their checks against the manifest.

JSON form (see docs/sr.md)::

    {"study":  {"<label>": <probability>, ...},
     "images": {"<SOP Instance UID>": {"<label>": <probability>, ...}, ...}}

``study`` holds every output label whose manifest ``level`` is ``study``; ``images`` holds, for
each analysed image, every label whose level is ``image``.

CKKS is approximate: a decrypted sigmoid can land a hair outside [0, 1]. Values within
:data:`PROBABILITY_TOLERANCE` of the interval are clipped onto it; anything further out means the
pipeline is broken and is refused rather than written into a patient's study.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from node.sr.errors import SrError
from secure_infer import Manifest

__all__ = [
    "PROBABILITY_TOLERANCE",
    "ResultOutputs",
    "as_outputs",
    "check_outputs",
    "load_outputs",
]

PROBABILITY_TOLERANCE = 1e-3


class ResultOutputs(BaseModel):
    """Probabilities per output label: study-level, and per image (keyed by SOP Instance UID)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    study: dict[str, float] = {}
    images: dict[str, dict[str, float]] = {}


def load_outputs(path: str | Path) -> ResultOutputs:
    """Read an outputs JSON file (format in the module docstring)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SrError(f"{p}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SrError(f"{p}: not a readable JSON file ({type(exc).__name__})") from None
    try:
        return ResultOutputs.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            # never echo keys under "images": they are SOP Instance UIDs
            loc = [str(x) for x in err["loc"]]
            if len(loc) >= 2 and loc[0] == "images":
                loc[1] = "<image>"
            lines.append(f"{p}: {'.'.join(loc)}: {err['msg']}")
        raise SrError(lines) from None


def _probability(value: float, where: str, problems: list[str]) -> float:
    if not math.isfinite(value):
        problems.append(f"{where}: probability is not a finite number")
        return 0.0
    if value < -PROBABILITY_TOLERANCE or value > 1.0 + PROBABILITY_TOLERANCE:
        problems.append(f"{where}: probability {value:.6g} is outside [0, 1]")
        return 0.0
    return min(1.0, max(0.0, value))


def check_outputs(
    manifest: Manifest, outputs: ResultOutputs, source_sop_uids: Iterable[str]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Check ``outputs`` against the manifest's labels and the analysed images.

    Returns the study-level and per-image probabilities, clipped onto [0, 1].

    Raises
    ------
    SrError
        Listing every missing or unknown label, image not among the sources, and bad value.
    """
    problems: list[str] = []
    study_labels = [o.name for o in manifest.outputs if o.level == "study"]
    image_labels = [o.name for o in manifest.outputs if o.level == "image"]
    known = set(source_sop_uids)

    study: dict[str, float] = {}
    for name in study_labels:
        if name not in outputs.study:
            problems.append(f"study: missing study-level output '{name}'")
    for name, value in outputs.study.items():
        if name in image_labels:
            problems.append(f"study.{name}: label has level 'image' in the manifest")
        elif name not in study_labels:
            problems.append(f"study.{name}: not an output label of the manifest")
        else:
            study[name] = _probability(value, f"study.{name}", problems)

    images: dict[str, dict[str, float]] = {}
    if image_labels and not outputs.images:
        problems.append("images: the manifest has image-level outputs but no image has results")
    for pos, (sop_uid, probs) in enumerate(outputs.images.items()):
        where = f"images[{pos}]"
        if sop_uid not in known:
            problems.append(f"{where}: SOP Instance UID is not among the source images")
            continue
        per: dict[str, float] = {}
        for name in image_labels:
            if name not in probs:
                problems.append(f"{where}: missing image-level output '{name}'")
        for name, value in probs.items():
            if name not in image_labels:
                level = "'study'" if name in study_labels else "no level (unknown label)"
                problems.append(f"{where}.{name}: label has {level} in the manifest")
            else:
                per[name] = _probability(value, f"{where}.{name}", problems)
        images[sop_uid] = per
    if problems:
        raise SrError(problems)
    return study, images


def as_outputs(
    study: Mapping[str, float], images: Mapping[str, Mapping[str, float]] | None = None
) -> ResultOutputs:
    """Convenience constructor from plain mappings."""
    return ResultOutputs(study=dict(study), images={k: dict(v) for k, v in (images or {}).items()})
