"""The config error type and how pydantic's errors become admin-readable lines.

Each line names the YAML path and what was expected, e.g.
``scp.port: must be <= 65535, got 70000`` or ``routes[2].action: unknown key 'modle'``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from node.errors import NodeError

__all__ = ["ConfigError", "format_loc", "format_validation_error"]


class ConfigError(NodeError):
    """A config file is missing, unreadable, not YAML, or not valid.

    ``problems`` lists every problem found (not only the first), one line each.
    """

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        joined = "\n  ".join(self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n  {joined}")


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
