"""Loading a config: YAML files, dotted ``key=value`` overrides, and a checked build of nested
dataclasses from a plain dict (the YAML's, or the dict a Ray worker gets).

Generic: it knows no section. A key the dataclass lacks is refused with the closest known one, a
value of the wrong type names the key and the type it takes; the few lossless conversions YAML
needs are made (``5e-5`` read as a string, one path for a list of paths).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from rerank_ray.config.sections import DataSource
from rerank_ray.errors import ConfigError


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (model:, data:, ...), not {type(raw).__name__}")
    return raw


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set ``section.key=value`` in a nested dict; the value is parsed as YAML (``[a, b]``, ``null``)."""
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {override!r} must look like section.key=value")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {key}: cannot parse value {text!r}: {err}") from err
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        where = prefix.rstrip(".") or "the config"
        raise ConfigError(f"{where} must be a mapping, got {type(raw).__name__}: {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [key for key in raw if key not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else f"; known keys: {', '.join(fields)}"
        raise ConfigError(f"unknown config key {prefix}{key}{hint}")
    kwargs = {}
    for name, value in raw.items():
        hint = hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            kwargs[name] = build(hint, value, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = coerce_value(value, hint, f"{prefix}{name}")
    return cls(**kwargs)


def type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def coerce_value(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the field's type; accept the few lossless conversions YAML needs."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    wrong = ConfigError(f"{key} must be {type_name(hint)}, got {type(value).__name__}: {value!r}")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce_value(value, arg, key)
            except ConfigError:
                continue
        raise wrong
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key} must be one of {', '.join(repr(a) for a in args)}, got {value!r}")
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise wrong
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise wrong
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML reads "5e-5" (no dot) as a string; accept any string that is a plain number.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise wrong from None
        raise wrong
    if hint is str:
        if isinstance(value, str):
            return value
        raise wrong
    if origin is list:
        (item_type,) = args
        if item_type is str and isinstance(value, str):
            return [value]  # a single path is a list of one
        if item_type is DataSource and isinstance(value, (str, dict)):
            return [coerce_value(value, item_type, key)]  # a single source, path or mapping
        if not isinstance(value, list):
            raise wrong
        return [coerce_value(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        key_type, value_type = args
        if not isinstance(value, dict):
            raise wrong
        return {
            coerce_value(k, key_type, f"{key} key"): coerce_value(v, value_type, f"{key}.{k}") for k, v in value.items()
        }
    raise TypeError(f"config field {key} has a type the loader does not handle: {hint}")


def field_docs(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, type, docstring) for every leaf field of the dataclass ``cls``, read from the
    docstrings under its fields in its source."""
    source = inspect.getsource(cls)
    tree = ast.parse(source)
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())  # type: ignore[union-attr]
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            rows.extend(field_docs(hint, prefix=f"{prefix}{f.name}."))
        else:
            rows.append((f"{prefix}{f.name}", type_name(hint), docs.get(f.name, "")))
    return rows
