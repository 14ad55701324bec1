"""Build frozen dataclasses from YAML/JSON mappings, rejecting unknown fields.

blackbox.yml modules and the checks file are loaded through this one function so
that every error names where it happened ("module http_2xx: http.valid_status_codes[1]: ...")
and no typo is silently ignored.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from probemesh.errors import ConfigError

T = TypeVar("T")


def build(cls: type[T], data: object, where: str) -> T:
    """Return cls(**data) after checking field names and types recursively.

    Field metadata may carry ``key`` (the YAML spelling, when it is not a valid
    Python name). A dataclass may define ``validate(self, where)`` to check
    cross-field rules once all fields are typed.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.metadata.get("key", f.name): f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(fields))})"
        )
    kwargs: dict[str, Any] = {}
    for key, field in fields.items():
        if key in data:
            kwargs[field.name] = coerce(hints[field.name], data[key], f"{where}.{key}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required field {key!r}")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(where)
    return obj


def coerce(hint: Any, value: object, where: str) -> Any:
    """Check value against a type hint, converting lists to tuples."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(inner[0], value, where)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)  # type: ignore[arg-type]
    if origin is tuple:
        if value is None:
            return ()
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {
            coerce(args[0], k, f"{where}"): coerce(args[1], v, f"{where}.{k}")
            for k, v in value.items()
        }
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if hint is Any or hint is object:
        return value
    raise TypeError(f"unsupported type hint {hint!r} at {where}")  # a bug, not bad input
