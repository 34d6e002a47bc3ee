"""Typed configuration from YAML: frozen models, and problems reported with their YAML path.

The vendor's config (:mod:`secure_infer.vendor.config`) and the hospital node's config (the
``node`` package) are read the same way: YAML -> a frozen pydantic model that rejects unknown
keys, so a typo is an error at start-up instead of a silently ignored setting, and every problem
is one line naming its path and what is expected, e.g. ``listen.port: must be <= 65535, got
70000`` or ``routes[2].action: unknown key``. Each caller passes its own error type
(``error(source, problems)``), so the vendor raises an :class:`~secure_infer.InferenceError` and
the node its own ``ConfigError`` with the same lines.

The YAML itself is read strictly (:func:`safe_load_strict`): a key given twice in one mapping is
an error (PyYAML would keep the last one silently, so a second ``scp:`` replaced the first and
its calling-AE allow-list), nesting deeper than :data:`MAX_DEPTH` levels is an error (instead of
a ``RecursionError`` traceback), and a file larger than :data:`MAX_BYTES` is refused unread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import ErrorDetails

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "FrozenModel",
    "Port",
    "ProblemsError",
    "YAMLStrictError",
    "format_loc",
    "format_validation_error",
    "load_yaml_model",
    "parse_yaml_model",
    "read_yaml",
    "safe_load_strict",
]

M = TypeVar("M", bound=BaseModel)

ProblemsError = Callable[[str, list[str]], Exception]
"""Builds the exception to raise from a source (file name) and its problem lines."""


class FrozenModel(BaseModel):
    """Immutable config object; unknown keys are errors; numbers and booleans are strict.

    pydantic's lax mode reads YAML's ``yes`` (a boolean) as the integer 1 and the integer 1 or
    the string ``"on"`` as ``True``: ``max_attempts: yes`` would become one attempt without a
    word. :meth:`_strict_scalars` refuses a boolean where a number is expected and anything but a
    boolean where a boolean is expected (a number may still be given for a float).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_scalars(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is None:
            return value
        kinds = _scalar_kinds(field.annotation)
        if bool in kinds and int not in kinds and float not in kinds:
            if not isinstance(value, bool) and value is not None:
                raise ValueError("must be true or false")
        elif (int in kinds or float in kinds) and bool not in kinds and isinstance(value, bool):
            raise ValueError(
                "must be a number, not a boolean (YAML reads yes/no/on/off as booleans)"
            )
        return value


def _scalar_kinds(annotation: Any) -> set[type]:
    """The scalar types among ``annotation`` and the members of its union (``int | None``)."""
    args = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    return {a for a in args if a in (bool, int, float)}


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


MAX_BYTES = 1 << 20
"""A config file larger than this (1 MiB) is refused before it is parsed."""

MAX_DEPTH = 64
"""Mappings and sequences nested deeper than this are refused (a config needs a handful)."""


class YAMLStrictError(yaml.YAMLError):
    """Valid YAML that the strict loader refuses: a duplicate key, or nesting too deep.

    ``str()`` is one line, ``line L, column C: what``, with 1-based positions.
    """

    def __init__(self, mark: yaml.Mark, problem: str) -> None:
        self.mark = mark
        self.problem = problem
        super().__init__(f"line {mark.line + 1}, column {mark.column + 1}: {problem}")


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate mapping keys and too-deep nesting."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        # the composer recurses once per nesting level; count it here, before Python's own
        # recursion limit turns a hostile file into a RecursionError traceback
        if self.check_event(yaml.CollectionStartEvent):
            if self._depth >= MAX_DEPTH:
                event = self.peek_event()
                raise YAMLStrictError(event.start_mark, f"nested more than {MAX_DEPTH} levels deep")
            self._depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # checked before flatten_mapping: keys merged in by `<<: *anchor` may be overridden
        # (that is what a merge is for); two keys written in the same mapping may not
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # unhashable key: the base constructor reports it
                continue
            if first is not None:
                raise YAMLStrictError(
                    key_node.start_mark,
                    f"duplicate key {_show_key(key)} (first at line {first.start_mark.line + 1})",
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _show_key(key: Any) -> str:
    shown = repr(key)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def safe_load_strict(text: str) -> Any:
    """``yaml.safe_load`` that also refuses duplicate keys and nesting deeper than MAX_DEPTH.

    Raises :class:`YAMLStrictError` for those, ``yaml.YAMLError`` for malformed YAML.
    """
    loader = _StrictLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(path: Path, error: ProblemsError) -> Any:
    """The parsed YAML of ``path``; a missing, unreadable, too large, malformed or ambiguous
    (duplicate keys, nesting deeper than :data:`MAX_DEPTH`) file raises ``error``."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise error(str(path), ["file not found"]) from None
    except OSError as exc:
        raise error(str(path), [f"cannot read file: {exc.strerror}"]) from None
    if len(raw) > MAX_BYTES:
        raise error(str(path), [f"file is larger than {MAX_BYTES // (1 << 20)} MiB; refused"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error(str(path), ["not UTF-8 text"]) from None
    try:
        return safe_load_strict(text)
    except YAMLStrictError as exc:
        raise error(str(path), [str(exc)]) from None
    except RecursionError:  # belt and braces: MAX_DEPTH should always come first
        raise error(str(path), [f"nested more than {MAX_DEPTH} levels deep"]) from None
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
