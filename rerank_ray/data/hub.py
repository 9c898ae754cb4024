"""Hugging Face datasets as sources of ``data.train`` / ``data.eval``, resolved into data files.

Three forms:

- a dataset on the hub: ``hf://datasets/org/name`` (``@revision`` after the name), or a mapping
  ``{dataset: org/name, split: train, subset: ..., revision: ...}`` (``dataset`` may also be a
  local folder in the hub's layout);
- a local folder in the hub's layout (``data/train-00000-of-00001.parquet``, ``test.csv``, a
  README whose ``configs:`` names the files): the split's files only, not the whole folder;
- a ``Dataset.save_to_disk`` folder (``state.json`` and Arrow files), or one split of a saved
  ``DatasetDict`` (``dataset_dict.json``).

``datasets`` resolves the files (``load_dataset_builder``, ``get_data_patterns``: the hub's own
conventions); they then stream through the same reader as any pair file
(:mod:`rerank_ray.data.reading`), so row numbers in errors, row checks and exact resume work
unchanged. Nothing is downloaded or converted up front: files on the hub are read through
``huggingface_hub``'s filesystem as Ray Data streams them.

The split, when not named: ``train`` for ``data.train``; ``validation``, else ``test``, for
``data.eval``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from rerank_ray.errors import ConfigError

HUB_PREFIX = "hf://datasets/"
#: A ``Dataset.save_to_disk`` folder holds these; a saved ``DatasetDict`` holds DICT_MARKER.
SAVED_MARKERS = ("state.json", "dataset_info.json")
DICT_MARKER = "dataset_dict.json"
#: The split each role reads when the source does not name one, in order of preference.
ROLE_SPLITS = {"train": ("train",), "eval": ("validation", "test")}
#: ``datasets``' packaged builders whose files the reader takes, and the format it reads them as.
BUILDER_FORMATS = {"parquet": "parquet", "json": "jsonl", "csv": "csv", "arrow": "arrow"}
MAPPING_KEYS = ("dataset", "split", "subset", "revision")


@dataclass
class HubSource:
    dataset: str
    split: str | None = None
    subset: str | None = None
    revision: str | None = None

    def describe(self) -> str:
        parts = [self.dataset] + [f"{k} {v}" for k, v in (("subset", self.subset), ("split", self.split)) if v]
        return ", ".join(parts) + (f" @ {self.revision}" if self.revision else "")


def parse(spec: str | dict[str, str], what: str) -> HubSource | None:
    """The hub source a spec names (a mapping or an ``hf://datasets/`` path); None for a path."""
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - set(MAPPING_KEYS))
        if unknown or not spec.get("dataset"):
            raise ConfigError(
                f"{what}: a dataset mapping takes the keys {list(MAPPING_KEYS)} ('dataset' required) and columns, "
                f"got {sorted(spec)}: e.g. {{dataset: org/name, split: train}}"
            )
        return HubSource(spec["dataset"], spec.get("split"), spec.get("subset"), spec.get("revision"))
    if spec.startswith(HUB_PREFIX):
        name, _, revision = spec.removeprefix(HUB_PREFIX).strip("/").partition("@")
        if name.count("/") > 1:  # a path inside the repository: a file or glob the reader lists itself
            return None
        return HubSource(name, revision=revision or None)
    return None


def is_saved_dataset(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, DICT_MARKER)) or all(
        os.path.isfile(os.path.join(folder, marker)) for marker in SAVED_MARKERS
    )


def saved_dataset_files(folder: str, role: str, what: str, split: str | None = None) -> list[str]:
    """The Arrow files of a ``save_to_disk`` folder (a saved DatasetDict: of the role's split)."""
    if os.path.isfile(os.path.join(folder, DICT_MARKER)):
        with open(os.path.join(folder, DICT_MARKER)) as f:
            splits = json.load(f)["splits"]
        chosen = _choose_split(splits, role, split, what, folder)
        return saved_dataset_files(os.path.join(folder, chosen), role, what)
    with open(os.path.join(folder, "state.json")) as f:
        state = json.load(f)
    files = [os.path.join(folder, entry["filename"]) for entry in state.get("_data_files", [])]
    missing = [path for path in files if not os.path.isfile(path)]
    if not files or missing:
        raise ConfigError(
            f"{what}: {folder} is a save_to_disk folder whose state.json lists "
            + (f"missing files {missing[:3]}" if missing else "no data files")
            + ": save the dataset again"
        )
    return files


def _choose_split(splits: list[str], role: str, split: str | None, what: str, source: str) -> str:
    if split is not None:
        if split not in splits:
            raise ConfigError(f"{what}: {source} has no split {split!r}; its splits are {sorted(splits)}")
        return split
    chosen = next((name for name in ROLE_SPLITS[role] if name in splits), None)
    if chosen is None:
        raise ConfigError(
            f"{what}: {source} has the splits {sorted(splits)}, none of {list(ROLE_SPLITS[role])}: name the split, "
            f"e.g. {{dataset: {source}, split: {sorted(splits)[0]}}}"
        )
    return chosen


def hub_layout_files(folder: str, role: str, what: str) -> list[str] | None:
    """A local folder in the hub's layout: its role's split's files. None for a plain folder of
    pair files (no split in its file names, no ``configs:`` in a README): read whole, as before."""
    from datasets.data_files import get_data_patterns

    try:
        patterns = get_data_patterns(folder)
    except Exception:  # datasets finds no data file it knows: a plain folder, read as one
        return None
    if set(map(str, patterns)) == {"train"} and list(patterns.values())[0] == ["**"]:
        return None
    files, _ = resolve_source(HubSource(folder), role, what)
    return files


def resolve_source(source: HubSource, role: str, what: str) -> tuple[list[str], str]:
    """(data files, reader format) of a dataset on the hub or a local folder in the hub's
    layout, through ``datasets.load_dataset_builder`` (the hub's own file conventions)."""
    from datasets import load_dataset_builder

    try:
        builder = load_dataset_builder(source.dataset, source.subset, revision=source.revision)
    except Exception as err:
        raise ConfigError(
            f"{what}: cannot resolve the dataset {source.describe()}: {type(err).__name__}: {err}. Check the "
            "name, subset and revision; a private or gated dataset needs HF_TOKEN; offline (HF_HUB_OFFLINE=1) "
            "only a dataset already in the local cache resolves"
        ) from err
    fmt = BUILDER_FORMATS.get(builder.name)
    if fmt is None:
        raise ConfigError(
            f"{what}: the dataset {source.describe()} is read by datasets' {builder.name!r} builder; rerank-ray "
            f"streams {sorted(BUILDER_FORMATS)} files: convert it (e.g. Dataset.to_parquet) and point data at the files"
        )
    data_files = builder.config.data_files or {}
    split = _choose_split([str(s) for s in data_files], role, source.split, what, source.describe())
    files = [str(path) for path in data_files[split]]
    if fmt == "csv" and all(path.lower().endswith((".tsv", ".tab")) for path in files):
        fmt = "tsv"
    return files, fmt


def hub_filesystem() -> Any:
    """``huggingface_hub``'s filesystem for ``hf://`` files, as a pyarrow filesystem."""
    import pyarrow.fs as pafs
    from huggingface_hub import HfFileSystem

    return pafs.PyFileSystem(pafs.FSSpecHandler(HfFileSystem()))
