"""Typed, immutable configuration loaded from YAML.

``load_config(path)`` returns a frozen :class:`NodeConfig` or raises :class:`ConfigError` listing
every problem with its YAML path. ``load_model(path, Model)`` does the same for any section model
(the reading and formatting are secure_infer's, shared with the vendor's own config).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from node.config.errors import ConfigError, format_loc
from node.config.model import NodeConfig, NodeSection
from secure_infer import load_yaml_model, parse_yaml_model

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


def parse_model(data: Any, model: type[M], source: str = "<config>") -> M:
    """Validate already-parsed YAML data against ``model`` (every problem in one ConfigError)."""
    return parse_yaml_model(data, model, source, ConfigError)


def load_model(path: str | Path, model: type[M]) -> M:
    """Load a YAML file into ``model`` (a frozen pydantic model)."""
    return load_yaml_model(path, model, ConfigError)


def load_config(path: str | Path) -> NodeConfig:
    """Load and validate a hospital node config file."""
    return load_model(path, NodeConfig)
