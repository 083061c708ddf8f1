"""Typed config helpers shared by every component (numpy-only, no torch).

Each component owns one ``@dataclass`` config. ``from_dict`` builds it from a
plain dict (JSON, CLI), checks every value against the field's annotation and
refuses unknown keys instead of silently ignoring them, so a typo or a wrong
type in a config never trains the wrong model.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config dict does not match its dataclass (unknown key, wrong type)."""


def _type_name(hint: Any) -> str:
    """Readable name of an annotation: ``int``, ``tuple[float, ...]``, ``int | None``, ``EncoderConfig``."""
    if hint is type(None):
        return "null"
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _is_union(origin: Any) -> bool:
    return origin is typing.Union or origin is types.UnionType


def _check_value(value: Any, hint: Any, key: str, root: str) -> Any:
    """``value`` checked against annotation ``hint`` (and normalised: lists → tuples, ints → floats)."""

    def wrong() -> ConfigError:
        return ConfigError(f"{root}: {key} must be {_type_name(hint)}, got {type(value).__name__} {value!r}")

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{root}: {key} must be an object of {hint.__name__} settings (a JSON object), "
                              f"got {type(value).__name__} {value!r}")
        return _from_dict(hint, value, f"{key}.", root)
    if _is_union(origin):
        for arm in args:
            try:
                return _check_value(value, arm, key, root)
            except ConfigError:
                continue
        raise wrong()
    if hint is type(None):
        if value is not None:
            raise wrong()
        return None
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{root}: {key} must be one of {list(args)}, got {value!r}")
        return value
    if hint is bool:  # JSON true/false only: 0/1 are not booleans here
        if not isinstance(value, (bool, _np_bool())):
            raise wrong()
        return bool(value)
    if hint is int:  # bool is an int subclass in Python, not in a config
        if isinstance(value, (bool, _np_bool())) or not isinstance(value, numbers.Integral):
            raise wrong()
        return int(value)
    if hint is float:  # an int is a fine float (JSON writes 2.0 as 2 in some tools)
        if isinstance(value, (bool, _np_bool())) or not isinstance(value, numbers.Real):
            raise wrong()
        if not math.isfinite(value):  # Python's JSON reads NaN and Infinity: no setting means either
            raise ConfigError(f"{root}: {key} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise wrong()
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise wrong()
        items = [(f"{key}[{i}]", v) for i, v in enumerate(value)]
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):  # list[X] / tuple[X, ...]
            item = args[0] if args else Any
            checked = [_check_value(v, item, k, root) for k, v in items]
            return checked if origin is list else tuple(checked)
        if args and len(args) != len(value):  # fixed-length tuple[X, Y]
            raise ConfigError(f"{root}: {key} must have {len(args)} entries ({_type_name(hint)}), got {value!r}")
        return tuple(_check_value(v, a, k, root) for (k, v), a in zip(items, args)) if args else tuple(value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise wrong()
        if not args:
            return dict(value)
        kt, vt = args
        return {_check_value(k, kt, f"{key} key", root): _check_value(v, vt, f"{key}.{k}", root)
                for k, v in value.items()}
    if isinstance(hint, type):
        if not isinstance(value, hint):
            raise wrong()
        return value
    return value  # an annotation this checker does not know: leave the value to the dataclass


def _np_bool() -> type:
    """numpy's bool type when numpy is importable (configs built from arrays carry it)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a hard dependency
        return bool
    return np.bool_


def _from_dict(cls: type[T], data: Any, prefix: str, root: str) -> T:
    if not isinstance(data, dict):
        where = f" at {prefix[:-1]}" if prefix else ""
        raise ConfigError(f"{root}: expected an object of settings (a JSON object / dict){where}, "
                          f"got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" under {prefix[:-1]!r}" if prefix else ""
        raise ConfigError(
            f"{root}: unknown key(s) {[prefix + str(k) for k in unknown]}; valid keys{where} are {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {name: _check_value(value, hints.get(name, Any), prefix + name, root) for name, value in data.items()}
    return cls(**kwargs)


def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types are ``ConfigError``s.

    Every value is checked against its field's annotation: ``int`` (a bool is
    not an int), ``float`` (an int is accepted and converted), ``bool``,
    ``str``, ``X | None``, ``tuple[...]`` / ``list[...]`` (JSON lists become
    tuples where the field is a tuple), ``dict[...]`` and nested dataclasses
    (built recursively). Messages name the key path (``train.steps``) and the
    expected type. ``data`` must be a dict: a JSON list at the top is refused.
    """
    return _from_dict(cls, {} if data is None else data, "", cls.__name__)


def check_finite(obj: Any, prefix: str = "") -> None:
    """Refuse NaN or ±inf in any float setting of dataclass ``obj`` (nested ones too), naming its dotted key."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_finite(value, f"{prefix}{f.name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}{f.name} must be a finite number, got {value!r}")


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
