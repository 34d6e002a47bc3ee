"""Config section for routing rules: what happens to a completed study.

A rule is ``{name, match, action, continue}``. ``match`` is a condition tree built only from
data (no ``eval`` of admin text): attribute tests on DICOM keywords (validated against pydicom's
data dictionary), the calling AE title, the time of day, and ``all``/``any``/``not``. Regexes
are compiled here, at load time, so a bad pattern is a config error naming its YAML path.

References to destinations, vendor peers and models are checked against the rest of the node
config by :func:`reference_scope`, which :class:`node.config.NodeConfig` enters while it
validates (a context variable, so each reference error carries its own YAML path such as
``routes[2].action.infer.model``). Evaluation lives in :mod:`node.rules`.
"""

from __future__ import annotations

import contextvars
import difflib
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import time
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydicom.datadict import dictionary_VR, keyword_dict

from node.config.base import FrozenModel
from node.config.sr import SrSection
from secure_infer import parse_model_ref

__all__ = [
    "Action",
    "CallingAeMatch",
    "Condition",
    "DiscardAction",
    "ForwardAction",
    "InferAction",
    "RouteReferences",
    "RouteSection",
    "SrOptions",
    "TimeRange",
    "reference_scope",
]

Scalar = str | int | float
"""A value compared with a DICOM attribute; numbers compare numerically."""


# --- references to the rest of the node config ------------------------------------------------


@dataclass(frozen=True)
class RouteReferences:
    """Names a route may refer to; ``None`` means "not known here, do not check"."""

    destinations: frozenset[str] | None = None
    vendors: Mapping[str, frozenset[str]] | None = field(default=None)
    deid_profiles: frozenset[str] | None = None
    # rule names seen so far in this validation pass (routes are validated in order)
    seen_names: set[str] | None = field(default=None, compare=False)


_NO_REFS = RouteReferences()
_REFS: contextvars.ContextVar[RouteReferences] = contextvars.ContextVar(
    "blindread_route_refs", default=_NO_REFS
)


@contextmanager
def reference_scope(refs: RouteReferences) -> Iterator[None]:
    """Check route references against ``refs`` while validating inside this block."""
    token = _REFS.set(refs)
    try:
        yield
    finally:
        _REFS.reset(token)


def _known(names: frozenset[str] | set[str]) -> str:
    return ", ".join(sorted(names)) if names else "(none configured)"


# --- leaf validators ---------------------------------------------------------------------------


def _check_keyword(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("must be a DICOM keyword such as Modality")
    if value in keyword_dict:
        return value
    close = difflib.get_close_matches(value, list(keyword_dict), n=1, cutoff=0.75)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ValueError(f"unknown DICOM keyword {value!r}{hint}")


DicomKeyword = Annotated[str, BeforeValidator(_check_keyword)]
"""A DICOM attribute keyword known to pydicom's data dictionary (``Modality``, ...)."""


def _compile_regex(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {value!r}: {exc.msg}") from None
    return value


Regex = Annotated[re.Pattern[str], BeforeValidator(_compile_regex)]
"""A regular expression, compiled when the config is loaded (searched, not full-matched)."""


def _parse_time(value: Any) -> Any:
    # Unquoted ``22:00`` is a base-60 integer (1320) in YAML 1.1, i.e. minutes since midnight.
    if isinstance(value, bool):
        raise ValueError("must be a time of day 'HH:MM'")
    if isinstance(value, int):
        if not 0 <= value <= 24 * 60:
            raise ValueError("must be a time of day 'HH:MM' (quote it: '22:00:30')")
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"(\d{1,2}):(\d{2})(?::(\d{2}))?", value.strip())
        if m:
            h, mi, s = int(m[1]), int(m[2]), int(m[3] or 0)
            if (h < 24 and mi < 60 and s < 60) or (h == 24 and mi == 0 and s == 0):
                return h * 60 + mi if s == 0 else h * 60 + mi + s / 60
    raise ValueError("must be a time of day 'HH:MM' or 'HH:MM:SS' (00:00 to 24:00)")


TimeOfDay = Annotated[float, BeforeValidator(_parse_time)]
"""Minutes since midnight, written ``'HH:MM'`` in YAML."""


# --- conditions --------------------------------------------------------------------------------


class TimeRange(FrozenModel):
    """``from`` (inclusive) to ``to`` (exclusive), local time; wraps midnight when from > to."""

    start: TimeOfDay = Field(alias="from")
    end: TimeOfDay = Field(alias="to")

    @model_validator(mode="after")
    def _not_empty(self) -> TimeRange:
        if self.start == self.end:
            raise ValueError("empty time range: 'from' equals 'to' (all day is 00:00 to 24:00)")
        return self

    def contains(self, t: time) -> bool:
        """Whether the wall-clock time ``t`` falls in this range."""
        minutes = t.hour * 60 + t.minute + t.second / 60 + t.microsecond / 60e6
        if self.start < self.end:
            return self.start <= minutes < self.end
        return minutes >= self.start or minutes < self.end

    def describe(self) -> str:
        return f"{_fmt_minutes(self.start)}-{_fmt_minutes(self.end)}"


def _fmt_minutes(m: float) -> str:
    total = round(m * 60)
    h, rest = divmod(total, 3600)
    mi, s = divmod(rest, 60)
    return f"{h:02d}:{mi:02d}" + (f":{s:02d}" if s else "")


def _ae_shorthand(value: Any) -> Any:
    return {"equals": value} if isinstance(value, str) else value


class CallingAeMatch(FrozenModel):
    """Test on the calling AE title: ``CT1``, ``{in: [CT1, CT2]}`` or ``{regex: '^CT'}``."""

    equals: str | None = None
    in_: tuple[str, ...] | None = Field(default=None, alias="in")
    regex: Regex | None = None

    @model_validator(mode="after")
    def _one_operator(self) -> CallingAeMatch:
        given = [n for n, v in (("equals", self.equals), ("in", self.in_), ("regex", self.regex))
                 if v is not None]
        if len(given) != 1:
            raise ValueError("needs exactly one of equals, in, regex")
        return self


_SUBJECTS = ("all", "any", "not", "attribute", "calling_ae", "time_of_day")
_ATTRIBUTE_OPERATORS = ("equals", "in", "regex", "lt", "le", "gt", "ge", "exists")


class Condition(FrozenModel):
    """One node of a match tree: a combinator or a single test (see docs/rules.md).

    Exactly one subject key is allowed: ``all``, ``any``, ``not``, ``attribute``,
    ``calling_ae`` or ``time_of_day``. An ``attribute`` test takes one or more operators
    (all must hold): ``equals``, ``in``, ``regex``, ``lt``, ``le``, ``gt``, ``ge``, ``exists``.
    """

    all_: tuple[Condition, ...] | None = Field(default=None, alias="all")
    any_: tuple[Condition, ...] | None = Field(default=None, alias="any")
    not_: Condition | None = Field(default=None, alias="not")
    attribute: DicomKeyword | None = None
    calling_ae: Annotated[CallingAeMatch | None, BeforeValidator(_ae_shorthand)] = None
    time_of_day: TimeRange | None = None

    equals: Scalar | None = None
    in_: tuple[Scalar, ...] | None = Field(default=None, alias="in")
    regex: Regex | None = None
    lt: float | None = None
    le: float | None = None
    gt: float | None = None
    ge: float | None = None
    exists: bool | None = None
    ignore_case: bool = False

    @model_validator(mode="after")
    def _shape(self) -> Condition:
        subjects = [k for k in _SUBJECTS if self._get(k) is not None]
        if len(subjects) != 1:
            found = ", ".join(subjects) if subjects else "none"
            raise ValueError(f"needs exactly one of {', '.join(_SUBJECTS)}; found {found}")
        operators = self.operators()
        if self.attribute is None:
            if operators or self.ignore_case:
                raise ValueError(
                    f"operators ({', '.join(operators) or 'ignore_case'}) are only allowed"
                    " next to 'attribute'"
                )
            return self
        if not operators:
            raise ValueError(
                f"attribute test needs at least one of {', '.join(_ATTRIBUTE_OPERATORS)}"
            )
        if self.exists is not None and len(operators) > 1:
            raise ValueError("'exists' cannot be combined with other operators")
        if dictionary_VR(self.attribute) == "SQ" and operators != ["exists"]:
            raise ValueError(f"{self.attribute} is a sequence: only 'exists' can test it")
        return self

    def _get(self, key: str) -> Any:
        return getattr(self, {"all": "all_", "any": "any_", "not": "not_", "in": "in_"}.get(key,
                                                                                           key))

    def operators(self) -> list[str]:
        """The attribute operators given, in a fixed order."""
        return [k for k in _ATTRIBUTE_OPERATORS if self._get(k) is not None]


# --- actions -----------------------------------------------------------------------------------


_NO_BACKSLASH = r"^[^\\\x00-\x1f]*$"


class SrOptions(FrozenModel):
    """Per-route overrides of the node's ``sr:`` section; omitted keys use the node default.

    Only keys of :class:`node.config.sr.SrSection` are allowed (a test keeps them in step);
    :meth:`InferAction.sr_settings` merges them and validates the result as a whole.
    """

    series_number: int | None = Field(default=None, ge=1, le=2**31 - 1)
    series_description: str | None = Field(default=None, max_length=64, pattern=_NO_BACKSLASH)
    secondary_capture: bool | None = None


def _check_destination(name: str) -> str:
    known = _REFS.get().destinations
    if known is not None and name not in known:
        raise ValueError(f"unknown destination {name!r}; known: {_known(known)}")
    return name


class InferAction(FrozenModel):
    """Run encrypted inference with ``model`` at vendor peer ``vendor``; send the SR on."""

    # 'vendor' is declared before 'model' so the model check can see the validated vendor.
    vendor: str
    model: str
    # non-empty is checked after the items (not min_length, which pydantic also reports when an
    # item failed: "Tuple should have at least 1 item after validation, not 0")
    destinations: tuple[Annotated[str, AfterValidator(_check_destination)], ...]
    sr: SrOptions = SrOptions()
    series_filter: Condition | None = Field(
        default=None, description="only series/instances matching this go to the model"
    )

    @field_validator("destinations")
    @classmethod
    def _some_destination(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("must name at least one destination")
        return value

    @field_validator("vendor")
    @classmethod
    def _vendor_known(cls, value: str) -> str:
        vendors = _REFS.get().vendors
        if vendors is not None and value not in vendors:
            raise ValueError(f"unknown vendor peer {value!r}; known: {_known(set(vendors))}")
        return value

    @field_validator("model")
    @classmethod
    def _model_known(cls, value: str, info: ValidationInfo) -> str:
        vendors = _REFS.get().vendors
        vendor = info.data.get("vendor")
        try:
            ref = parse_model_ref(value)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        if (
            vendors is not None
            and isinstance(vendor, str)
            and vendor in vendors
            and value not in vendors[vendor]
            and ref.name not in vendors[vendor]  # a listed name allows a pinned version of it
        ):
            raise ValueError(
                f"unknown model {value!r} at vendor {vendor!r}; known: {_known(vendors[vendor])}"
            )
        return value

    def sr_settings(self, base: SrSection) -> SrSection:
        """The node's ``sr:`` section with this route's overrides applied (and re-validated)."""
        overrides = self.sr.model_dump(exclude_none=True)
        return SrSection.model_validate({**base.model_dump(), **overrides})

    @field_validator("destinations")
    @classmethod
    def _destinations_unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("a destination is listed twice")
        return value


def _check_option_name(name: str) -> str:
    if not re.fullmatch(r"[a-z][a-z_]*", name):
        raise ValueError("must be a snake_case de-identification option such as"
                         " retain_long_modified_dates")
    return name


DeidOptionName = Annotated[str, AfterValidator(_check_option_name)]
"""A PS3.15 option by the de-identification engine's name (the engine checks it is known)."""


class ForwardAction(FrozenModel):
    """Send a de-identified copy (PS3.15 basic profile) to ``destination``.

    The profile options used are those of ``deid.profiles[profile]`` (or ``deid.options`` when
    no profile is named) plus ``options``; option names are the de-identification engine's
    snake_case names (``retain_long_modified_dates``, ...), checked by it.
    """

    destination: str
    profile: str | None = Field(default=None, description="a key under deid.profiles")
    options: tuple[DeidOptionName, ...] = Field(
        default=(), description="extra PS3.15 options, e.g. retain_long_modified_dates"
    )
    series_filter: Condition | None = None

    @field_validator("destination")
    @classmethod
    def _destination_known(cls, value: str) -> str:
        return _check_destination(value)

    @field_validator("profile")
    @classmethod
    def _profile_known(cls, value: str | None) -> str | None:
        known = _REFS.get().deid_profiles
        if value is not None and known is not None and value not in known:
            raise ValueError(f"unknown de-identification profile {value!r}; known: {_known(known)}")
        return value



class DiscardAction(FrozenModel):
    """Do nothing with the study and stop evaluating rules."""

    reason: str = ""


def _action_shorthand(value: Any) -> Any:
    return {"discard": {}} if value == "discard" else value


class Action(FrozenModel):
    """Exactly one of ``infer``, ``forward_deidentified``, ``discard`` (or just ``discard``)."""

    infer: InferAction | None = None
    forward_deidentified: ForwardAction | None = None
    discard: DiscardAction | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        value = _action_shorthand(value)
        if isinstance(value, dict) and value.get("discard", 0) is None:
            value = {**value, "discard": {}}  # ``discard:`` with no body
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Action:
        given = [k for k in ("infer", "forward_deidentified", "discard") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                "needs exactly one of infer, forward_deidentified, discard; found "
                + (", ".join(given) or "none")
            )
        return self

    @property
    def kind(self) -> str:
        """``infer``, ``forward_deidentified`` or ``discard``."""
        if self.infer is not None:
            return "infer"
        if self.forward_deidentified is not None:
            return "forward_deidentified"
        return "discard"


# --- the rule ----------------------------------------------------------------------------------


class RouteSection(FrozenModel):
    """One routing rule.

    Rules are evaluated top to bottom and the first matching rule fires. A rule with
    ``continue: true`` lets evaluation go on after it fires, so later matching rules fire too
    (all-match); ``discard`` always stops evaluation. An omitted ``match`` matches every study.
    """

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    enabled: bool = True
    match: Condition = Field(default_factory=lambda: Condition.model_validate({"all": []}))
    action: Action
    continue_: bool = Field(default=False, alias="continue")

    @field_validator("name")
    @classmethod
    def _unique_name(cls, value: str) -> str:
        seen = _REFS.get().seen_names
        if seen is not None:
            if value in seen:
                raise ValueError(f"rule name {value!r} is already used by an earlier rule")
            seen.add(value)
        return value

    @model_validator(mode="after")
    def _discard_stops(self) -> RouteSection:
        if self.continue_ and self.action.discard is not None:
            raise ValueError("'continue: true' cannot be used with discard (discard stops)")
        return self
