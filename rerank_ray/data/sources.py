"""A split's sources as the config gives them (``data.train``, ``data.eval``), and the column map
each split reads its files with.

A source is a path (file, folder, glob, URI, ``hf://datasets/...``), a Hugging Face dataset
mapping (``{dataset: org/name, split: ..., subset: ..., revision: ...}``, :mod:`rerank_ray.data.hub`)
or a file mapping ``{path: ...}``. Either mapping may carry ``columns``: the canonical -> file
column map of that source, instead of ``data.columns``. It is what lets a run train on a
``save_to_disk`` folder with canonical names while it evaluates on a spreadsheet with its own
header: ``data.columns`` is one map for every file of both splits.

A split is read as one stream with one row checker (one map from file columns to canonical
ones), so the sources of one split that give ``columns`` must give the same; a split's sources
that give none read with ``data.columns``.
"""

from __future__ import annotations

from dataclasses import replace

from rerank_ray.config import DataConfig, DataSource
from rerank_ray.errors import ConfigError


def location(spec: DataSource) -> str | dict[str, str]:
    """Where a source reads from: the path of a file mapping, a hub mapping without its
    ``columns``, or the path string itself."""
    if not isinstance(spec, dict):
        return spec
    if "path" in spec:
        return str(spec["path"])
    return {key: value for key, value in spec.items() if key != "columns"}


def own_columns(spec: DataSource) -> dict[str, str] | None:
    """The ``columns`` a mapping source gives, or None."""
    return spec.get("columns") if isinstance(spec, dict) else None


def split_data(data: DataConfig, specs: list[DataSource], what: str) -> DataConfig:
    """``data`` with the column map the split ``what`` reads with: its sources' own ``columns``
    where they give one (all the same), else ``data.columns``."""
    given = [(i, columns) for i, spec in enumerate(specs) if (columns := own_columns(spec)) is not None]
    if not given:
        return data
    first_index, columns = given[0]
    for index, other in given[1:]:
        if other != columns:
            raise ConfigError(
                f"{what}[{index}] maps its columns as {other}, {what}[{first_index}] as {columns}: a split's "
                "files are read with one column map. Give the sources the same columns, or rename the "
                "columns of one in its files"
            )
    plain = [i for i, spec in enumerate(specs) if own_columns(spec) is None]
    if plain and data.columns != columns:
        raise ConfigError(
            f"{what}[{plain[0]}] gives no columns (so data.columns, {data.columns}) while {what}[{first_index}] "
            f"gives {columns}: a split's files are read with one column map. Give every source of {what} "
            "the same columns"
        )
    return replace(data, columns=dict(columns))
