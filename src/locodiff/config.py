"""Typed configuration: dataclasses loaded from TOML/dicts with validation, hashed for caching.

Every stage declares its options as a frozen dataclass with defaults and a one-line comment per
field. ``from_dict`` checks that keys exist and that values have the declared type, naming the
offending key path in its error. ``config_hash`` identifies a config for caches and run folders.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from .errors import ConfigError, InputError

T = TypeVar("T")


def _check_value(tp: Any, value: Any, where: str) -> Any:
    """Return ``value`` converted to type ``tp`` (recursing into dataclasses), or raise."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table of {tp.__name__} options, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        alternatives = [arg for arg in args if arg is not type(None)]
        if len(alternatives) == 1:  # an optional value: its own error says best what is wrong
            return _check_value(alternatives[0], value, where)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(arg, value, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if origin in (tuple, list):
        return _check_sequence(tp, origin, value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        _, vt = get_args(tp) or (str, Any)
        return {k: _check_value(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp in _SCALARS:
        return _SCALARS[tp](value, where)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _check_sequence(tp: Any, origin: Any, value: Any, where: str) -> Any:
    args = get_args(tp)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        items = [_check_value(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
    else:
        item_tp = args[0] if args else Any
        items = [_check_value(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


_SCALARS = {float: _float, int: _int, bool: _bool, str: _str}


def _check_not_negative(value: Any, where: str) -> None:
    """Numbers in a config are counts, sizes, rates, seeds or weights: never negative, unless
    their field declares ``SIGNED`` (an angle, an offset, a log-scale mean, a correlation)."""
    numbers = value if isinstance(value, (list, tuple)) else [value]
    for v in numbers:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
            raise ConfigError(f"{where}: expected a number >= 0, got {value!r}")


def _moved_to_sections(data: dict[str, Any], moved: dict[str, str]) -> dict[str, Any]:
    """Options given under an old flat name (``MOVED``: old -> "section.name") put where they live
    now, so older configs and saved runs still read; the old name wins over the section's value."""
    data = dict(data)
    for old, new in moved.items():
        if old in data and data[old] is None:  # saved as unset where it did not apply
            del data[old]
        elif old in data:
            section, name = new.split(".")
            data[section] = {**(data.get(section) or {}), name: data.pop(old)}
    return data


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a plain dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a table, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    data = _moved_to_sections(data, getattr(cls, "MOVED", {}))
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown option(s) {unknown}; known options are {sorted(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _check_value(hints[name], value, key)
        if not fields[name].metadata.get("signed"):
            _check_not_negative(kwargs[name], key)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{where or cls.__name__}: {e}") from None
    except ConfigError:
        raise
    except InputError as e:  # a section's own check (e.g. an unknown colour): name where it sits
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None


def to_dict(obj: Any) -> Any:
    """Plain JSON-able form of a (nested) dataclass config."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively overlay ``override`` on ``base`` (tables merge, other values replace)."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def _check_config_path(path: Path) -> None:
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a folder; give a .toml file (or a study's study_config.json)")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    _check_config_path(path)
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A config from TOML, or from JSON (e.g. the ``study_config.json`` a study saves)."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        return load_toml(path)
    _check_config_path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a JSON object at the top level")
    return data


# Field metadata for the identity rule (``identity_dict``): an option that does not change what
# a stage produces (how long or how verbosely it runs, a label for people) is left out of the
# identity of the folder it writes; an option added after folders existed is left out while it
# holds its default, so those folders keep their names.
NOT_IDENTITY = {"identity": "never"}
SIGNED = {"signed": True}  # field metadata: the option may be negative (``from_dict`` refuses it otherwise)
IDENTITY_UNLESS_DEFAULT = {"identity": "unless_default"}


def identity_dict(obj: Any) -> Any:
    """``to_dict`` of a config minus what does not change its results (see ``NOT_IDENTITY``).

    A dataclass may restate its identity with ``legacy_identity(identity)``: how folders were
    named before some of its options moved into a section, so those folders keep their names.
    """
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            rule, value = f.metadata.get("identity"), getattr(obj, f.name)
            if rule == "never" or (rule == "unless_default" and value == _default(f)):
                continue
            out[f.name] = identity_dict(value)
        return obj.legacy_identity(out) if hasattr(obj, "legacy_identity") else out
    if isinstance(obj, (list, tuple)):
        return [identity_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: identity_dict(v) for k, v in obj.items()}
    return obj


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING


def config_hash(obj: Any, length: int = 12) -> str:
    """Stable short hash of a config (dataclass or dict), for cache keys and run folders."""
    text = json.dumps(to_dict(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def parse_set_option(assignment: str) -> dict[str, Any]:
    """Turn ``"a.b.c=VALUE"`` (VALUE in TOML syntax, bare words as strings) into a nested dict."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.batch_size=32")
    key, raw = assignment.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out
