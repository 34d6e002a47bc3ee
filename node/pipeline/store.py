"""The step store: each finished step's typed result, one small JSON file per step.

A result is a frozen dataclass (:class:`StepResult`) naming its step; the store writes it with
:func:`durable_io.atomic_write` (temp file, fsync, rename, directory fsync) before the next step
starts, and reads it back into the same type. A step whose result is in the store is not done
again, which is what makes a job resumable after a crash at any point.

File names are ``<scope>-<step>[-<detail>].json`` (``received.json``, ``r0-deid.json``,
``r0-deliver-pacs.json``): the layout of the step folders written before results were typed, so
a job interrupted across an upgrade resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar, get_args, get_origin, get_type_hints

from durable_io import atomic_write
from node.jobs import JobError

__all__ = ["StepResult", "StepStore"]


@dataclass(frozen=True)
class StepResult:
    """Base of every step's result; subclasses set :attr:`step` and hold JSON-able fields
    (``int``, ``float``, ``str``, ``bool``, ``tuple[X, ...]``, ``dict[str, X]``)."""

    step: ClassVar[str]


R = TypeVar("R", bound=StepResult)


def _decode(tp: Any, value: Any) -> Any:
    """``value`` as read from JSON, turned into the field type ``tp`` (lists -> tuples)."""
    origin = get_origin(tp)
    if origin is tuple:
        (item, _ellipsis) = get_args(tp)
        return tuple(_decode(item, v) for v in value)
    if origin is dict:
        _key, item = get_args(tp)
        return {str(k): _decode(item, v) for k, v in value.items()}
    if origin is types.UnionType:
        return value
    if tp in (int, float, str, bool):
        if not isinstance(value, (int, float, str, bool)):
            raise TypeError(f"expected {tp.__name__}, found {type(value).__name__}")
        return tp(value)
    return value


def _from_json(kind: type[R], data: Any) -> R:
    hints = get_type_hints(kind)
    fields = {f.name for f in dataclasses.fields(kind)}
    if not isinstance(data, dict) or set(data) != fields:
        raise TypeError(f"fields {sorted(data) if isinstance(data, dict) else data!r}")
    return kind(**{name: _decode(hints[name], data[name]) for name in fields})


class StepStore:
    """Results of a job's steps as small JSON files, each written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def name(kind: type[StepResult], scope: str | None = None, detail: str | None = None) -> str:
        """File stem of ``kind``'s result in ``scope`` (a rule, ``r<index>``) for ``detail``
        (a destination)."""
        return "-".join(p for p in (scope, kind.step, detail) if p)

    def path(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def get(self, kind: type[R], scope: str | None = None, detail: str | None = None) -> R | None:
        """The stored result of this step, or ``None`` if the step has not finished."""
        path = self.path(self.name(kind, scope, detail))
        try:
            data = json.loads(path.read_text())
            return _from_json(kind, data)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError) as exc:
            raise JobError(
                f"step record {path.name} of this job is damaged ({type(exc).__name__}); "
                "delete it to have the step done again"
            ) from None

    def put(self, result: R, scope: str | None = None, detail: str | None = None) -> R:
        """Store ``result`` durably and return it."""
        text = json.dumps(dataclasses.asdict(result), sort_keys=True)
        name = self.name(type(result), scope, detail)
        atomic_write(self.path(name), text.encode("utf-8"), mode=0o600)
        return result
