"""Typed config helpers shared by every component (numpy-only, no torch).

Each component owns one ``@dataclass`` config. ``from_dict`` builds it from a
plain dict (JSON, CLI) and refuses unknown keys instead of silently ignoring
them, so a typo in a config never trains the wrong model.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config dict does not match its dataclass (unknown key, wrong type)."""


def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys are errors.

    Nested dataclass fields are built recursively; tuples are restored from
    JSON lists.
    """
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{cls.__name__}: unknown key(s) {unknown}; valid keys are {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        hint = hints.get(name)
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass → JSON-able dict (tuples become lists)."""
    return dataclasses.asdict(obj)


def replace(obj: T, **changes: Any) -> T:
    """``dataclasses.replace`` that refuses unknown keys with a clear message."""
    return from_dict(type(obj), {**to_dict(obj), **changes})


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` applied recursively (nested dicts merged, everything else replaced)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out
