"""Pair files on the driver: find them, settle their format and columns, check a sample of each.

Everything here runs before Ray starts, so a missing file, a missing column or a bad value near
the top of a file fails in seconds, naming the file, the row, the column and the fix. The files
themselves are streamed later, in Ray Data tasks (:mod:`rerank_ray.data.stream`), through the same
reader (:mod:`rerank_ray.data.reading`) and the same row checks (:mod:`rerank_ray.data.checks`).
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from rerank_ray.config import Config, DataConfig, DataSource
from rerank_ray.data import hub, reading
from rerank_ray.data.checks import RowChecker, label_rule, tally, tally_dict
from rerank_ray.data.queries import EvalQueries
from rerank_ray.data.shapes import PAIRS, Shape, find_shape, shape_columns
from rerank_ray.data.sources import location, split_data
from rerank_ray.errors import ConfigError
from rerank_ray.losses import check_loss_shape
from rerank_ray.redaction import redact

FORMAT_EXTENSIONS = {
    "parquet": (".parquet", ".pq"),
    "jsonl": (".jsonl", ".json", ".ndjson"),
    "csv": (".csv",),
    "tsv": (".tsv", ".tab"),
    "arrow": (".arrow",),  # Arrow IPC streams, as Dataset.save_to_disk writes them
}


# ---------------------------------------------------------------------------------------------
# Finding files


def _is_uri(path: str) -> bool:
    return "://" in path


def _has_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _format_of(path: str) -> str | None:
    lower = path.lower()
    for fmt, extensions in FORMAT_EXTENSIONS.items():
        if lower.endswith(extensions):
            return fmt
    return None


def _list_uri(pattern: str) -> list[str]:
    """Files under a URI (folder or glob), through pyarrow's filesystems (s3, gs, hdfs, ...)."""
    import pyarrow.fs as pafs

    scheme, _, rest = pattern.partition("://")
    base = rest
    if _has_glob(rest):
        base = rest[: min(rest.find(ch) for ch in "*?[" if ch in rest)].rsplit("/", 1)[0]
    try:
        fs, base_path = pafs.FileSystem.from_uri(f"{scheme}://{base}")
    except (pa.ArrowInvalid, OSError) as err:
        raise ConfigError(f"cannot open {pattern}: {err}") from err
    info = fs.get_file_info(base_path)
    if info.type == pafs.FileType.File and not _has_glob(rest):
        return [pattern]
    if info.type == pafs.FileType.NotFound:
        raise ConfigError(f"data path not found: {pattern}")
    selector = pafs.FileSelector(base_path, recursive=True)
    files = [f.path for f in fs.get_file_info(selector) if f.type == pafs.FileType.File]
    prefix = base_path[: len(base_path) - len(base_path.lstrip("/"))]
    uris = [f"{scheme}://{p[len(prefix) :] if prefix else p}" for p in files]
    if _has_glob(rest):
        uris = [u for u in uris if fnmatch.fnmatch(u, pattern)]
    return sorted(uris)


_URI_QUERY = re.compile(r"\?[A-Za-z_][A-Za-z0-9_]*=")


def _reject_uri_options(spec: str, what: str) -> None:
    """pyarrow options in a data URI's query would be lost on the files found under it (and ``?``
    is a glob character here): name the way that works for data, the provider's environment."""
    if _URI_QUERY.search(spec):
        raise ConfigError(
            f"{what}: {redact(spec)}: options in a data URI's query are not supported; give them to "
            "pyarrow through the environment of the driver and the nodes instead, e.g. "
            "AWS_ENDPOINT_URL=http://host:9000 (and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) for an "
            "S3-compatible store"
        )


def resolve_paths(specs: list[DataSource], fmt: str, what: str) -> tuple[list[str], str]:
    """Expand files, folders, globs and Hugging Face datasets (:mod:`rerank_ray.data.hub`) into a
    sorted file list, and settle the format.

    Raises ConfigError naming the spec that matched nothing or the files whose format differs.
    """
    role = "train" if what.endswith("train") else "eval"  # data.train, data.eval, --data
    files: list[str] = []
    for given in specs:
        spec = location(given)  # without a mapping's own columns (split_data reads them)
        source = hub.parse(spec, what)
        if source is not None and os.path.isdir(source.dataset) and hub.is_saved_dataset(source.dataset):
            files.extend(hub.saved_dataset_files(source.dataset, role, what, source.split))
            fmt = _same_format(fmt, "arrow", what, source.describe())
            continue
        if source is not None:
            found, found_fmt = hub.resolve_source(source, role, what)
            files.extend(found)
            fmt = _same_format(fmt, found_fmt, what, source.describe())
            continue
        assert isinstance(spec, str)
        if _is_uri(spec) and not spec.startswith("file://"):
            _reject_uri_options(spec, what)
            found = _list_uri(spec)
        else:
            local = spec.removeprefix("file://")
            local = os.path.expanduser(local)
            if _has_glob(local):
                found = sorted(p for p in glob.glob(local, recursive=True) if os.path.isfile(p))
            elif os.path.isdir(local) and hub.is_saved_dataset(local):
                found = hub.saved_dataset_files(local, role, what)
            elif os.path.isdir(local):
                found = hub.hub_layout_files(local, role, what) or sorted(
                    str(p) for p in Path(local).rglob("*") if p.is_file()
                )
            elif os.path.isfile(local):
                found = [local]
            else:
                raise ConfigError(f"{what}: data file not found: {spec}")
            found = [os.path.abspath(p) for p in found]
        if fmt == "auto" or len(found) > 1:
            # Folders hold other files too (_SUCCESS, README): keep the data files.
            wanted = (
                FORMAT_EXTENSIONS[fmt] if fmt != "auto" else tuple(e for v in FORMAT_EXTENSIONS.values() for e in v)
            )
            kept = [p for p in found if p.lower().endswith(wanted)]
            found = kept if kept or fmt == "auto" else found
        if not found:
            raise ConfigError(f"{what}: {spec} matched no data files (looked for {', '.join(_all_exts())})")
        files.extend(found)
    if fmt == "auto":
        unknown = next((p for p in files if _format_of(p) is None), None)
        if unknown is not None:
            raise ConfigError(f"{what}: cannot tell the format of {unknown}; set data.format")
        formats = {f for f in map(_format_of, files) if f is not None}
        if len(formats) > 1:
            raise ConfigError(f"{what}: files of several formats ({', '.join(sorted(formats))}); keep one per set")
        fmt = formats.pop()
    return files, fmt


def _same_format(fmt: str, found: str, what: str, source: str) -> str:
    if fmt not in ("auto", found):
        raise ConfigError(f"{what}: {source} holds {found} files, but data.format is {fmt}: set data.format=auto")
    return found


def _all_exts() -> list[str]:
    return [e for v in FORMAT_EXTENSIONS.values() for e in v]


# ---------------------------------------------------------------------------------------------
# Reading


def column_mapping(data: DataConfig, query_id_column: str | None = None, shape: Shape = PAIRS) -> dict[str, str]:
    """file column -> canonical column, for the columns a run needs (``query_id``: the query of a
    reranking eval pair, when a column names it)."""
    mapping = {column: canonical for canonical, column in shape_columns(shape, data).items()}
    if data.id_column:
        mapping[data.id_column] = "pair_id"
    if query_id_column:
        mapping[query_id_column] = "query_id"
    return mapping


def make_checker(
    config: Config, split: str, files: list[str], shape: Shape = PAIRS, data: DataConfig | None = None
) -> RowChecker:
    """The row checks of one split (``train`` or ``eval``), reading its files with ``data``'s
    column map (default: ``config.data``'s)."""
    own = data is not None and data.columns != config.data.columns
    data = data or config.data
    mapping = column_mapping(data, config.eval.query_id_column if split == "eval" else None, shape)
    file_columns = {canonical: column for column, canonical in mapping.items()}
    # A split read with its sources' own map: a missing column is mapped there, not in data.columns.
    fixes = {
        canonical: f"map it in the columns of data.{split}'s source mapping ({{{canonical}: <your column>}})"
        for canonical in file_columns
        if canonical not in ("pair_id", "query_id")
    }
    return RowChecker(
        what=f"data.{split}",
        files=files,
        column_fixes=fixes if own else {},
        file_columns=file_columns,
        rule=label_rule(config, split),
        label_scale=config.data.label_scale,
        on_bad_row=config.data.on_bad_row,
        shape=shape,
    )


def training_shape(config: Config, files: list[str], fmt: str, data: DataConfig | None = None) -> Shape:
    """The training set's shape, from its first file's columns (named by ``data``'s column map,
    default ``config.data``'s), checked against the loss (a :class:`ConfigError` before Ray
    starts when the loss cannot take it)."""
    present = reading.peek_columns(reading.open_local_or_uri(files[0], fmt), fmt)
    shape = find_shape(present or [], data or config.data)
    check_loss_shape(config.train.loss, shape.name, shape.has_label, f"data.train ({files[0]})")
    return shape


#: Files checked before training (their first :data:`SAMPLE_ROWS` rows; Parquet footers give the
#: row count), so bad input near the top of a file fails in seconds, before Ray starts. Every
#: other row is checked as it streams.
MAX_FILES_PEEKED = 64
SAMPLE_ROWS = 1000


@dataclass
class SplitFiles:
    """One split's files, checked on the driver before Ray starts."""

    what: str
    files: list[str]
    format: str
    footer_rows: int | None
    """Row count from Parquet footers, when every file's footer was read."""
    checker: RowChecker
    sample_skipped: dict[str, int] | None = None
    """With ``on_bad_row: skip``: bad rows found in the sample, by reason."""
    eval_queries: EvalQueries | None = None
    """A reranking eval split's queries counted (:mod:`rerank_ray.data.queries`)."""


def inspect_split(specs: list[DataSource], config: Config, split: str) -> SplitFiles:
    """Find one split's files and check a sample of each on the files themselves (columns, column
    types across files, and the first rows' values), so bad input fails in seconds, naming the
    file and row, before Ray starts."""
    what = f"data.{split}"
    files, fmt = resolve_paths(specs, config.data.format, what)
    data = split_data(config.data, specs, what)  # the split's column map: its sources' own, or data.columns
    # Training sets come in several shapes; eval sets are labelled pairs (reranking: with a query id).
    shape = training_shape(config, files, fmt, data) if split == "train" else PAIRS
    checker = make_checker(config, split, files, shape, data)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        # The first file's types name the file a disagreeing shard differs from.
        try:
            with reading.open_local_or_uri(files[0], fmt)() as handle:
                first_schema = pq.ParquetFile(handle).schema_arrow
            checker.reference = {
                canonical: (str(first_schema.field(column).type), files[0])
                for canonical, column in checker.file_columns.items()
                if column in first_schema.names
            }
        except (OSError, pa.ArrowException):
            pass  # the read below names the problem
    rows: list[int] = []
    counts = tally(np.zeros(0, dtype=np.int8))
    for index, path in enumerate(files[:MAX_FILES_PEEKED]):
        opener = reading.open_local_or_uri(path, fmt)
        for chunk in reading.read_file(opener, fmt, index, checker, limit=SAMPLE_ROWS):
            counts += tally(chunk.column("skip").to_numpy())
        if fmt == "parquet":
            rows.append(reading.parquet_row_count(opener))
    known = fmt == "parquet" and len(files) <= MAX_FILES_PEEKED
    skipped = tally_dict(counts)
    return SplitFiles(
        what=what,
        files=files,
        format=fmt,
        footer_rows=int(sum(rows)) if known else None,
        checker=checker,
        sample_skipped=skipped,
    )
