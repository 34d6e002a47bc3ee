"""Typed configuration from YAML: frozen models, and problems reported with their YAML path.

The vendor's config (:mod:`secure_infer.vendor.config`) and the hospital node's config (the
``node`` package) are read the same way: YAML -> a frozen pydantic model that rejects unknown
keys, so a typo is an error at start-up instead of a silently ignored setting, and every problem
is one line naming its path and what is expected, e.g. ``listen.port: must be <= 65535, got
70000`` or ``routes[2].action: unknown key``. Each caller passes its own error type
(``error(source, problems)``), so the vendor raises an :class:`~secure_infer.InferenceError` and
the node its own ``ConfigError`` with the same lines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

__all__ = [
    "FrozenModel",
    "Port",
    "ProblemsError",
    "format_loc",
    "format_validation_error",
    "load_yaml_model",
    "parse_yaml_model",
    "read_yaml",
]

M = TypeVar("M", bound=BaseModel)

ProblemsError = Callable[[str, list[str]], Exception]
"""Builds the exception to raise from a source (file name) and its problem lines."""


class FrozenModel(BaseModel):
    """Immutable config object; unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)


Port = Annotated[int, Field(ge=1, le=65535)]
"""A TCP port number."""


def format_loc(loc: Iterable[int | str]) -> str:
    """``('routes', 2, 'action')`` -> ``routes[2].action``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<top level>"


_MESSAGES = {
    "less_than_equal": "must be <= {le}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "greater_than": "must be > {gt}",
    "missing": "required key is missing",
    "extra_forbidden": "unknown key",
}


def _describe(err: ErrorDetails) -> str:
    ctx: dict[str, Any] = dict(err.get("ctx") or {})
    template = _MESSAGES.get(err["type"])
    if template is not None:
        try:
            msg = template.format(**ctx)
        except KeyError:
            msg = err["msg"]
    else:
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
    if err["type"] not in ("missing", "extra_forbidden") and "input" in err:
        shown = repr(err["input"])
        if len(shown) > 80:
            shown = shown[:77] + "..."
        if shown not in msg:  # a message that already quotes the value needs no repeat
            msg += f", got {shown}"
    return msg


def format_validation_error(exc: ValidationError, prefix: Sequence[int | str] = ()) -> list[str]:
    """Turn a pydantic ``ValidationError`` into one ``path: problem`` line per error."""
    lines = []
    for err in exc.errors():
        loc = [*prefix, *[p for p in err["loc"] if not _is_union_tag(p)]]
        lines.append(f"{format_loc(loc)}: {_describe(err)}")
    return lines


def _is_union_tag(part: int | str) -> bool:
    # pydantic inserts the tag of a discriminated union / function validator into loc
    return isinstance(part, str) and (part.startswith("function-") or "[" in part)


def read_yaml(path: Path, error: ProblemsError) -> Any:
    """The parsed YAML of ``path``; a missing, unreadable or malformed file raises ``error``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(str(path), ["file not found"]) from None
    except OSError as exc:
        raise error(str(path), [f"cannot read file: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise error(str(path), ["not UTF-8 text"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise error(str(path), [f"not valid YAML at {where}: {exc.problem}"]) from None
    except yaml.YAMLError as exc:
        raise error(str(path), [f"not valid YAML: {exc}"]) from None


def parse_yaml_model(data: Any, model: type[M], source: str, error: ProblemsError) -> M:
    """Validate already-parsed YAML ``data`` against ``model``; every problem in one ``error``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise error(source, [f"<top level>: must be a mapping, got {type(data).__name__}"])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(source, format_validation_error(exc)) from None


def load_yaml_model(path: str | Path, model: type[M], error: ProblemsError) -> M:
    """Load a YAML file into ``model`` (a frozen pydantic model)."""
    p = Path(path)
    return parse_yaml_model(read_yaml(p, error), model, str(p), error)
