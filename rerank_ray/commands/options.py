"""A command's options declared once: a dataclass, a docstring under each field, and the flags
generated from it (``batch_size`` -> ``--batch-size``, its docstring the flag's help).

A field without a default is a required flag; ``bool`` a switch; a list takes one or more
values; a ``dict[str, str]`` takes ``KEY=VALUE`` items (the column mappings); a ``Literal`` its
choices. Flags not given are left out of the parsed arguments, so a dataclass default (or a
YAML file's value, for ``mine``) stands.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Literal

from rerank_ray import console
from rerank_ray.config import field_docs, is_canonical_column
from rerank_ray.errors import ConfigError


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    aliases: dict[str, list[str]] | None = None,
    metavars: dict[str, str] | None = None,
    all_optional: bool = False,
) -> None:
    """One flag per field of the dataclass ``cls``. ``aliases``: more names of a field's flag;
    ``all_optional``: no flag is required (``mine`` takes its required keys from a YAML file too,
    and checks them itself)."""
    docs = {key: doc for key, _, doc in field_docs(cls)}
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        options: dict[str, Any] = {"dest": field.name, "help": docs.get(field.name, "")}
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        if required and not all_optional:
            options["required"] = True
        else:
            options["default"] = argparse.SUPPRESS
        options.update(_value_options(hint))
        if metavars and field.name in metavars:
            options["metavar"] = metavars[field.name]
        names = [flag_name(field.name), *(aliases or {}).get(field.name, [])]
        parser.add_argument(*names, **options)


def _value_options(hint: Any) -> dict[str, Any]:
    """argparse's options for a field of type ``hint``."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if hint is bool:
        return {"action": "store_true"}
    if origin is dict:
        return {"nargs": "*", "metavar": "CANONICAL=COLUMN", "type": str}
    if origin is list:
        return {"nargs": "+", "metavar": "PATH"}
    if origin is Literal:
        return {"choices": list(typing.get_args(hint))}
    if args and typing.get_origin(args[0]) is Literal:
        return {"choices": list(typing.get_args(args[0]))}
    if hint in (int, float):
        return {"type": hint}
    if args and args[0] in (int, float):
        return {"type": args[0]}
    return {}


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The flags given for ``cls``'s fields, by field name; ``KEY=VALUE`` lists become mappings."""
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        if not hasattr(args, field.name):
            continue
        value = getattr(args, field.name)
        if typing.get_origin(hints[field.name]) is dict:
            value = parse_columns(value, flag_name(field.name))
        values[field.name] = value
    return values


def parse_columns(items: list[str] | None, flag: str = "--columns") -> dict[str, str]:
    """``sentence_0=query`` items -> {canonical: file column}: any canonical column of a shape
    (``sentence_0``, ``sentence_1``, ``label``; ``query``, ``positive``, ``negative_1``..,
    ``documents``, ``labels``), as ``data.columns`` takes."""
    columns = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not is_canonical_column(key) or not value:
            raise ConfigError(
                f"{flag} {item!r}: expected <canonical column>=<your column>, the canonical columns being "
                "sentence_0, sentence_1, label (pairs); query, positive, negative_1.., documents, labels"
            )
        columns[key] = value
    return columns


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help=f"print everything Ray and the libraries write too (as {console.VERBOSE_ENV}=1)",
    )


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """A run's config: a YAML file, then ``section.key=value`` overrides."""
    parser.add_argument("--config", "-c", required=True, help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="overrides, applied in order")
    add_verbose(parser)
