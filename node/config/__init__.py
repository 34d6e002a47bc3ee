"""Typed, immutable configuration loaded from YAML.

``load_config(path)`` returns a frozen :class:`NodeConfig` or raises :class:`ConfigError` listing
every problem with its YAML path. ``load_model(path, Model)`` does the same for any section model
(the vendor peer's file uses it too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from node.config.errors import ConfigError, format_loc, format_validation_error
from node.config.model import NodeConfig, NodeSection

__all__ = [
    "ConfigError",
    "NodeConfig",
    "NodeSection",
    "format_loc",
    "load_config",
    "load_model",
    "parse_model",
]

M = TypeVar("M", bound=BaseModel)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read file: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), ["not UTF-8 text"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError(str(path), [f"not valid YAML at {where}: {exc.problem}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None


def parse_model(data: Any, model: type[M], source: str = "<config>") -> M:
    """Validate already-parsed YAML data against ``model``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [f"<top level>: must be a mapping, got {type(data).__name__}"])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, format_validation_error(exc)) from None


def load_model(path: str | Path, model: type[M]) -> M:
    """Load a YAML file into ``model`` (a frozen pydantic model)."""
    p = Path(path)
    return parse_model(_read_yaml(p), model, str(p))


def load_config(path: str | Path) -> NodeConfig:
    """Load and validate a hospital node config file."""
    return load_model(path, NodeConfig)
