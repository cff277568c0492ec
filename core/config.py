"""Typed dataclass configs from TOML tables or JSON objects: unknown keys are refused by name,
lists become tuples, nested dataclass fields are built from nested tables."""

from __future__ import annotations

import types
import typing
from dataclasses import asdict, fields, is_dataclass


class ConfigError(ValueError):
    pass


def _optional_of(hint):
    """X for `X | None`, else the hint itself: an optional nested config is a table when given."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else hint
    return hint


def from_table(cls, table: dict, where: str):
    """`cls(**table)`, checked: `[where]: unknown key(s) ...` names what is wrong."""
    if not isinstance(table, dict):
        raise ConfigError(f"[{where}] must be a table, not {type(table).__name__}")
    known = {f.name: f for f in fields(cls) if f.init}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"[{where}]: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in table.items():
        kind = _optional_of(hints[name])
        if is_dataclass(kind) and isinstance(value, dict):
            value = from_table(kind, value, f"{where}.{name}")
        elif isinstance(value, list):
            value = tuple(value) if typing.get_origin(kind) is not list else value
        values[name] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{where}]: {exc}") from None


def keyed_settings(config) -> dict:
    """asdict(config) less what no result depends on: fields marked `result: False`, and those
    marked `keyed_when_set` while at their default (a setting added later: results made before it
    existed keep their keys), in nested configs too."""
    return _unkeyed_dropped(config, asdict(config))


def _unkeyed_dropped(config, body: dict) -> dict:
    for f in fields(config):
        value = getattr(config, f.name)
        if f.metadata.get("result") is False or (f.metadata.get("keyed_when_set") and value == f.default):
            del body[f.name]
        elif is_dataclass(value):
            _unkeyed_dropped(value, body[f.name])
    return body
