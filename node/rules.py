"""Routing rules: decide what happens to a study, and say why, without leaking PHI.

The rules themselves are data (:class:`node.config.routes.RouteSection`, validated and with
regexes compiled at load); this module only evaluates them. Semantics (docs/rules.md):

* Rules are tried top to bottom; disabled rules are skipped.
* The first matching rule fires. If it has ``continue: true`` evaluation goes on and later
  matching rules fire too (all-match); otherwise evaluation stops there (first-match).
  A matching ``discard`` rule always stops evaluation. No matching rule: nothing happens.
* An attribute test on a missing or empty attribute is false (except ``exists: false``). On a
  multi-valued attribute it holds if one value satisfies every operator given.
* ``equals``/``in`` with a number compare numerically, otherwise as stripped strings.
  ``regex`` is searched (anchor with ``^...$`` for a full match).

Every decision comes with an explanation a human can read. Explanations name attributes but show
values (of the data and of the rule's operands) only for attributes in :data:`SAFE_ATTRIBUTES`,
which are not identifying; anything else is shown as ``<hidden>``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence

from node.config.routes import Action, Condition, RouteSection

__all__ = [
    "SAFE_ATTRIBUTES",
    "Attributes",
    "Evaluation",
    "RuleMatch",
    "describe_action",
    "evaluate",
    "matches",
    "series_selected",
]

Attributes = Dataset | Mapping[str, Any]
"""What rules look at: a pydicom Dataset, or a mapping of DICOM keyword -> value."""

SAFE_ATTRIBUTES: frozenset[str] = frozenset(
    {
        "Modality",
        "BodyPartExamined",
        "SOPClassUID",
        "ViewPosition",
        "ImageType",
        "PhotometricInterpretation",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "SamplesPerPixel",
        "NumberOfFrames",
        "Laterality",
        "ImageLaterality",
        "PatientPosition",
        "PresentationIntentType",
        "ConversionType",
        "Manufacturer",
        "ManufacturerModelName",
    }
)
"""Attributes whose values may appear in explanations and CLI output (not identifying).

Everything else (names, IDs, dates, UIDs other than the SOP Class, free-text descriptions that
technologists fill with anything) is hidden.
"""

_HIDDEN = "<hidden>"


# --- reading attributes ------------------------------------------------------------------------


def _values(data: Attributes, keyword: str) -> list[Any] | None:
    """The attribute's values as a list, or ``None`` when absent or empty."""
    if isinstance(data, Dataset):
        if keyword not in data:
            return None
        value = data[keyword].value
    else:
        value = data.get(keyword)
    if value is None:
        return None
    if isinstance(value, str | bytes):
        return [value] if value.strip() else None
    if isinstance(value, list | tuple | MultiValue | DicomSequence):  # not PersonName, str
        items = [v for v in value if v is not None and not (isinstance(v, str) and not v.strip())]
        return items or None
    return [value]


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1").strip(" \x00")
    return str(value).strip()


@functools.lru_cache(maxsize=256)
def _case_insensitive(pattern: re.Pattern[str]) -> re.Pattern[str]:
    # Cannot fail: the same pattern already compiled when the config was loaded.
    return re.compile(pattern.pattern, pattern.flags | re.IGNORECASE)


def _equal(value: Any, operand: str | int | float, ignore_case: bool) -> bool:
    if isinstance(operand, int | float) and not isinstance(operand, bool):
        number = _as_number(value)
        return number is not None and number == float(operand)
    text, want = _as_text(value), str(operand)
    if ignore_case:
        return text.casefold() == want.casefold()
    return text == want


def _value_ok(cond: Condition, value: Any) -> bool:
    """Whether one value satisfies every operator of an attribute test."""
    if cond.equals is not None and not _equal(value, cond.equals, cond.ignore_case):
        return False
    if cond.in_ is not None and not any(_equal(value, o, cond.ignore_case) for o in cond.in_):
        return False
    if cond.regex is not None:
        pattern = _case_insensitive(cond.regex) if cond.ignore_case else cond.regex
        if pattern.search(_as_text(value)) is None:
            return False
    bounds = ((cond.lt, float.__lt__), (cond.le, float.__le__),
              (cond.gt, float.__gt__), (cond.ge, float.__ge__))
    if any(bound is not None for bound, _ in bounds):
        number = _as_number(value)
        if number is None:
            return False
        for bound, compare in bounds:
            if bound is not None and not compare(number, float(bound)):
                return False
    return True


# --- describing (PHI-free) ---------------------------------------------------------------------


def _show(keyword: str, value: Any) -> str:
    return repr(_as_text(value)) if keyword in SAFE_ATTRIBUTES else _HIDDEN


def _describe_test(cond: Condition) -> str:
    kw = cond.attribute or ""
    safe = kw in SAFE_ATTRIBUTES
    parts = []
    for op in cond.operators():
        if op == "exists":
            parts.append("exists" if cond.exists else "is absent")
        elif op == "in":
            shown = "[" + ", ".join(str(o) for o in cond.in_ or ()) + "]" if safe else _HIDDEN
            parts.append(f"in {shown}")
        elif op == "regex":
            parts.append(f"matches /{cond.regex.pattern}/" if safe and cond.regex else
                         f"matches {_HIDDEN}")
        else:
            operand = getattr(cond, op)  # config text can quote an identifier too: hide it
            parts.append(f"{op} {operand if safe else _HIDDEN}")
    suffix = " (ignoring case)" if cond.ignore_case else ""
    return f"{kw} " + " and ".join(parts) + suffix


def _describe_ae(cond: Condition) -> str:
    m = cond.calling_ae
    assert m is not None
    if m.equals is not None:
        return f"calling AE equals {m.equals}"
    if m.in_ is not None:
        return "calling AE in [" + ", ".join(m.in_) + "]"
    assert m.regex is not None
    return f"calling AE matches /{m.regex.pattern}/"


# --- evaluating --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    data: Attributes
    calling_ae: str | None
    clock: time


def _eval(cond: Condition, ctx: _Context, depth: int, lines: list[str]) -> bool:
    pad = "  " * depth
    if cond.all_ is not None:
        if not cond.all_:
            lines.append(f"{pad}always (empty 'all'): yes")
            return True
        lines.append(f"{pad}all of:")
        for child in cond.all_:
            if not _eval(child, ctx, depth + 1, lines):
                lines.append(f"{pad}=> all: no")
                return False
        lines.append(f"{pad}=> all: yes")
        return True
    if cond.any_ is not None:
        lines.append(f"{pad}any of:")
        for child in cond.any_:
            if _eval(child, ctx, depth + 1, lines):
                lines.append(f"{pad}=> any: yes")
                return True
        lines.append(f"{pad}=> any: no")
        return False
    if cond.not_ is not None:
        lines.append(f"{pad}not:")
        inner = _eval(cond.not_, ctx, depth + 1, lines)
        lines.append(f"{pad}=> not: {_yes(not inner)}")
        return not inner
    if cond.calling_ae is not None:
        m, ae = cond.calling_ae, ctx.calling_ae
        if ae is None:
            ok = False
            seen = "unknown"
        else:
            ae = ae.strip()
            seen = repr(ae)
            if m.equals is not None:
                ok = ae == m.equals
            elif m.in_ is not None:
                ok = ae in m.in_
            else:
                ok = m.regex is not None and m.regex.search(ae) is not None
        lines.append(f"{pad}{_describe_ae(cond)}: {_yes(ok)} (calling AE {seen})")
        return ok
    if cond.time_of_day is not None:
        ok = cond.time_of_day.contains(ctx.clock)
        lines.append(
            f"{pad}time of day in {cond.time_of_day.describe()}: {_yes(ok)}"
            f" (time {ctx.clock.strftime('%H:%M:%S')})"
        )
        return ok
    assert cond.attribute is not None
    kw = cond.attribute
    values = _values(ctx.data, kw)
    if cond.exists is not None:
        ok = (values is not None) == cond.exists
        lines.append(f"{pad}{_describe_test(cond)}: {_yes(ok)}")
        return ok
    if values is None:
        lines.append(f"{pad}{_describe_test(cond)}: no ({kw} absent or empty)")
        return False
    ok = any(_value_ok(cond, v) for v in values)
    shown = ", ".join(_show(kw, v) for v in values) if kw in SAFE_ATTRIBUTES else _HIDDEN
    lines.append(f"{pad}{_describe_test(cond)}: {_yes(ok)} ({kw} = {shown})")
    return ok


def _yes(ok: bool) -> str:
    return "yes" if ok else "no"


def _local_clock(when: datetime | None) -> time:
    if when is None:
        when = datetime.now().astimezone()
    elif when.tzinfo is not None:
        when = when.astimezone()  # rules speak the node's local wall-clock time
    return when.time()


def matches(
    cond: Condition,
    data: Attributes,
    calling_ae: str | None = None,
    when: datetime | None = None,
) -> tuple[bool, tuple[str, ...]]:
    """Evaluate one condition; return the verdict and its PHI-free explanation lines."""
    lines: list[str] = []
    ok = _eval(cond, _Context(data, calling_ae, _local_clock(when)), 0, lines)
    return ok, tuple(lines)


@dataclass(frozen=True)
class RuleMatch:
    """A rule that fired: its position in ``routes``, the rule, and why it matched."""

    index: int
    route: RouteSection
    explanation: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.route.name

    @property
    def action(self) -> Action:
        return self.route.action


@dataclass(frozen=True)
class Evaluation:
    """The outcome of running all rules on one study."""

    matches: tuple[RuleMatch, ...]
    explanation: tuple[str, ...]

    @property
    def actions(self) -> tuple[Action, ...]:
        """Actions to carry out, in rule order (``discard`` is not an action to carry out)."""
        return tuple(m.action for m in self.matches if m.action.discard is None)

    @property
    def discarded(self) -> bool:
        """Whether a ``discard`` rule fired."""
        return any(m.action.discard is not None for m in self.matches)

    def describe(self) -> str:
        """Multi-line human-readable explanation."""
        return "\n".join(self.explanation)


def evaluate(
    routes: Sequence[RouteSection],
    data: Attributes,
    calling_ae: str | None = None,
    when: datetime | None = None,
) -> Evaluation:
    """Run ``routes`` on a study's attributes (first match, or all with ``continue: true``)."""
    ctx = _Context(data, calling_ae, _local_clock(when))
    fired: list[RuleMatch] = []
    out: list[str] = []
    for index, route in enumerate(routes):
        label = f"rule {route.name!r} (routes[{index}])"
        if not route.enabled:
            out.append(f"{label}: disabled, skipped")
            continue
        lines: list[str] = []
        ok = _eval(route.match, ctx, 1, lines)
        out.append(f"{label}: {'MATCH' if ok else 'no match'}")
        out.extend(lines)
        if not ok:
            continue
        fired.append(RuleMatch(index, route, tuple(lines)))
        out.append(f"  -> {describe_action(route.action)}")
        if route.action.discard is not None:
            out.append("  stop: discard ends rule evaluation")
            break
        if not route.continue_:
            out.append("  stop: first match (this rule has no 'continue: true')")
            break
        out.append("  continue: true, evaluating further rules")
    if not fired:
        out.append("no rule matched: the study is not processed")
    return Evaluation(tuple(fired), tuple(out))


def series_selected(
    action: Action, data: Attributes, calling_ae: str | None = None, when: datetime | None = None
) -> tuple[bool, tuple[str, ...]]:
    """Whether a series/instance passes the action's ``series_filter`` (no filter: yes)."""
    spec = action.infer or action.forward_deidentified
    flt = spec.series_filter if spec is not None else None
    if flt is None:
        return True, ("no series filter: every series",)
    return matches(flt, data, calling_ae, when)


def describe_action(action: Action) -> str:
    """One line saying what the action would do (no PHI: only config names)."""
    if action.infer is not None:
        a = action.infer
        text = (
            f"infer: encrypted inference with model {a.model!r} at vendor peer {a.vendor!r},"
            f" SR to {', '.join(a.destinations)}"
        )
        return text + (" (series filter applies)" if a.series_filter is not None else "")
    if action.forward_deidentified is not None:
        f = action.forward_deidentified
        opts = ", ".join(f.options) if f.options else "basic profile only"
        text = f"forward_deidentified: de-identified copy ({opts}) to {f.destination}"
        return text + (" (series filter applies)" if f.series_filter is not None else "")
    reason = action.discard.reason if action.discard is not None else ""
    return "discard" + (f": {reason}" if reason else "")
