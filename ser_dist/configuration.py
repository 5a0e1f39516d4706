"""Config files (YAML/JSON) -> typed dataclasses, with errors that name the unknown or wrong key."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ser_dist.errors import ConfigError

T = TypeVar("T")


def from_mapping(cls: type[T], data: dict[str, Any] | None, *, where: str = "config") -> T:
    """Build dataclass `cls` from a (nested) mapping; defaults live in the dataclasses only."""
    if not isinstance(data, dict | None):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    data = dict(data or {})
    expand = getattr(cls, "expand_mapping", None)  # e.g. TrainConfig's named presets
    if expand is not None:
        data = expand(data)
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, where=f"{where}.{name}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _convert(hint: Any, value: Any, *, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_mapping(hint, value, where=where)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if dataclasses.is_dataclass(option) and isinstance(value, dict):
                return from_mapping(option, value, where=where)
        return value
    if origin is tuple and isinstance(value, list | tuple):
        return tuple(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def load_config_file(path: Path | str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of options")
    return data


def to_mapping(obj: Any) -> Any:
    """Dataclass -> plain dict/list/scalars (enums as their values), for JSON/YAML."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_mapping(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_mapping(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_mapping(v) for k, v in obj.items()}
    return getattr(obj, "value", obj)
