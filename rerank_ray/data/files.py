"""Pair datasets on the driver: find the files, read them with Ray Data, tokenize in the stream.

Nothing here holds a dataset in one process: Ray Data reads the files in tasks, tokenizes them in
tasks (so the training step never waits for a tokenizer), and each Ray Train worker pulls its
own shard (``ray.train.get_dataset_shard``). The driver only counts rows, which for Parquet reads
the footers alone.

Every dataset that reaches the workers has these columns:

- ``input_ids`` (list<int32>) and, when the tokenizer makes them, ``token_type_ids`` (list<int8>):
  the pair, tokenized and truncated, not padded (padding happens per batch, on the worker);
- ``label``: float32, or int64 class ids for a multi-class head (CrossEntropyLoss), so class
  labels stay integers from the file to the loss and the evaluator; ``weight`` (float32): 1 for a real pair, 0 for the filler rows that make
  the row count a multiple of the number of workers (see :func:`pad_to_multiple`) and for bad rows
  skipped with ``data.on_bad_row: skip``;
- ``skip`` (int8): why a row was skipped (:data:`rerank_ray.validation.REASONS`), 0 for a good row;
- ``row_key`` (int64): the row's file and row number, its stable key (:mod:`rerank_ray.position`);
  -1 for filler rows;
- ``pair_id`` when ``data.id_column`` is set; ``group_id`` (int64, the query of a reranking eval
  pair, see :mod:`rerank_ray.reranking`).

Files are read and every row is checked by :mod:`rerank_ray.reading` (with the checks of
:mod:`rerank_ray.validation`), on a sample of every file before Ray starts and on every row as it
streams.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from rerank_ray.config import PAIR_COLUMNS, Config, ConfigError, DataConfig
from rerank_ray.validation import DataError, RowChecker, label_rule

__all__ = ["DataError"]  # re-exported: raised for bad input everywhere in the data path

if TYPE_CHECKING:
    import ray.data

FORMAT_EXTENSIONS = {
    "parquet": (".parquet", ".pq"),
    "jsonl": (".jsonl", ".json", ".ndjson"),
    "csv": (".csv",),
    "tsv": (".tsv", ".tab"),
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
        from rerank_ray.redaction import redact

        raise ConfigError(
            f"{what}: {redact(spec)}: options in a data URI's query are not supported; give them to "
            "pyarrow through the environment of the driver and the nodes instead, e.g. "
            "AWS_ENDPOINT_URL=http://host:9000 (and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) for an "
            "S3-compatible store"
        )


def resolve_paths(specs: list[str], fmt: str, what: str) -> tuple[list[str], str]:
    """Expand files, folders and globs into a sorted file list, and settle the format.

    Raises ConfigError naming the spec that matched nothing or the files whose format differs.
    """
    files: list[str] = []
    for spec in specs:
        if _is_uri(spec) and not spec.startswith("file://"):
            _reject_uri_options(spec, what)
            found = _list_uri(spec)
        else:
            local = spec.removeprefix("file://")
            local = os.path.expanduser(local)
            if _has_glob(local):
                found = sorted(p for p in glob.glob(local, recursive=True) if os.path.isfile(p))
            elif os.path.isdir(local):
                found = sorted(str(p) for p in Path(local).rglob("*") if p.is_file())
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
        formats = {_format_of(p) for p in files}
        if None in formats:
            unknown = next(p for p in files if _format_of(p) is None)
            raise ConfigError(f"{what}: cannot tell the format of {unknown}; set data.format")
        if len(formats) > 1:
            raise ConfigError(f"{what}: files of several formats ({', '.join(sorted(formats))}); keep one per set")
        fmt = formats.pop()
    return files, fmt


def _all_exts() -> list[str]:
    return [e for v in FORMAT_EXTENSIONS.values() for e in v]


# ---------------------------------------------------------------------------------------------
# Reading


def column_mapping(data: DataConfig, query_id_column: str | None = None) -> dict[str, str]:
    """file column -> canonical column, for the columns a run needs (``query_id``: the query of a
    reranking eval pair, when a column names it)."""
    mapping = {data.columns.get(name, name): name for name in PAIR_COLUMNS}
    if data.id_column:
        mapping[data.id_column] = "pair_id"
    if query_id_column:
        mapping[query_id_column] = "query_id"
    return mapping


def make_checker(config: Config, split: str, files: list[str]) -> RowChecker:
    """The row checks of one split (``train`` or ``eval``)."""
    mapping = column_mapping(config.data, config.eval.query_id_column if split == "eval" else None)
    return RowChecker(
        what=f"data.{split}",
        files=files,
        file_columns={canonical: column for column, canonical in mapping.items()},
        rule=label_rule(config, split),
        label_scale=config.data.label_scale,
        on_bad_row=config.data.on_bad_row,
    )


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
    checker: RowChecker | None = None
    sample_skipped: dict[str, int] | None = None
    """With ``on_bad_row: skip``: bad rows found in the sample, by reason."""


def inspect_split(specs: list[str], config: Config, split: str) -> SplitFiles:
    """Find one split's files and check a sample of each on the files themselves (columns, column
    types across files, and the first rows' values), so bad input fails in seconds, naming the
    file and row, before Ray starts."""
    from rerank_ray import reading
    from rerank_ray.validation import tally, tally_dict

    what = f"data.{split}"
    files, fmt = resolve_paths(specs, config.data.format, what)
    checker = make_checker(config, split, files)
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
    rows = []
    counts = tally([])
    for index, path in enumerate(files[:MAX_FILES_PEEKED]):
        opener = reading.open_local_or_uri(path, fmt)
        for chunk in reading.read_file(opener, fmt, index, checker, limit=SAMPLE_ROWS):
            counts += tally(chunk.column("skip").to_numpy())
        rows.append(reading.parquet_row_count(opener) if fmt == "parquet" else None)
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


@dataclass
class PairSource:
    """One split (train or eval) as a Ray dataset of checked rows, before tokenization."""

    what: str
    files: list[str]
    format: str
    dataset: Any
    num_rows: int
    """Rows in the files (with ``on_bad_row: skip``, bad rows included: they stay as placeholders)."""
    name: str | None = None
    """Name for the model card. None: the folder of the first file."""


def open_pairs(split: SplitFiles, data: DataConfig, seed: int | None) -> PairSource:
    """Read one split with Ray Data (rows checked as they stream), count its rows."""
    from rerank_ray import reading

    dataset = reading.read_pairs(
        split.files, split.format, split.checker, seed=seed, shuffle_buffer_rows=data.shuffle_buffer_rows
    )
    # Parquet: the footers' count. Text files: a pass over the files that also checks every row,
    # so a bad value in a text file fails here, before training.
    num_rows = split.footer_rows if split.footer_rows is not None else dataset.count()
    if num_rows == 0:
        raise DataError(
            f"{split.what}: {split.files[0]} holds no rows"
            if len(split.files) == 1
            else f"{split.what}: no rows in {len(split.files)} files"
        )
    return PairSource(what=split.what, files=split.files, format=split.format, dataset=dataset, num_rows=num_rows)


# ---------------------------------------------------------------------------------------------
# Tokenization (runs inside Ray Data tasks)

_TOKENIZER_CACHE: dict[str, Any] = {}


class TokenizerHandle:
    """Carries a tokenizer to Ray Data tasks once per process: the object store holds one copy
    and each worker process deserializes it the first time only."""

    def __init__(self, tokenizer: Any, key: str):
        import ray

        self.ref = ray.put(tokenizer)
        self.key = key

    def get(self) -> Any:
        if self.key not in _TOKENIZER_CACHE:
            import ray

            _TOKENIZER_CACHE[self.key] = ray.get(self.ref)
        return _TOKENIZER_CACHE[self.key]


def encode_pairs(tokenizer: Any, first: list[str], second: list[str], max_length: int) -> dict[str, list]:
    """The tokenizer call sentence-transformers' CrossEncoder makes, without padding."""
    return tokenizer(
        first,
        second,
        truncation="longest_first",
        max_length=max_length,
        padding=False,
        return_attention_mask=False,
        return_token_type_ids="token_type_ids" in tokenizer.model_input_names,
    )


def tokenize_batch(batch: pa.Table, handle: TokenizerHandle, max_length: int, class_ids: bool = False) -> pa.Table:
    """Ray Data map: checked rows -> token ids, label, weight, skip, row_key (and pair_id, group_id).

    Skipped rows arrive with empty texts; they are tokenized like filler rows and weigh 0.
    ``class_ids``: labels are class ids of a multi-class head (already checked to be whole numbers
    in range, :func:`rerank_ray.validation.label_rule`) and become int64 for the loss."""
    tokenizer = handle.get()
    encoded = encode_pairs(
        tokenizer, batch.column("sentence_0").to_pylist(), batch.column("sentence_1").to_pylist(), max_length
    )
    columns: dict[str, pa.Array] = {
        "input_ids": pa.array(encoded["input_ids"], type=pa.list_(pa.int32())),
    }
    if "token_type_ids" in encoded:
        columns["token_type_ids"] = pa.array(encoded["token_type_ids"], type=pa.list_(pa.int8()))
    skip = batch.column("skip").to_numpy()
    columns["label"] = batch.column("label").cast(label_type(class_ids))
    columns["weight"] = pa.array((skip == 0).astype("float32"))
    columns["skip"] = batch.column("skip")
    columns["row_key"] = batch.column("row_key")
    for name in batch.column_names:  # pair_id, and any other column the reader passed through
        if name not in ("sentence_0", "sentence_1", "label", "skip", "row_key"):
            columns[name] = batch.column(name)
    return pa.table(columns)


def label_type(class_ids: bool) -> pa.DataType:
    """The ``label`` column's type: int64 class ids (CrossEntropyLoss), else float32 targets."""
    return pa.int64() if class_ids else pa.float32()


def tokenize(
    dataset: ray.data.Dataset, handle: TokenizerHandle, max_length: int, data: DataConfig, class_ids: bool = False
) -> ray.data.Dataset:
    return dataset.map_batches(
        tokenize_batch,
        batch_format="pyarrow",
        batch_size=data.tokenize_batch_size,
        fn_kwargs={"handle": handle, "max_length": max_length, "class_ids": class_ids},
    )


def filler_rows(
    tokenizer: Any, count: int, max_length: int, id_column: bool, *, class_ids: bool = False, group_ids: bool = False
) -> pa.Table:
    """``count`` rows of weight 0: an empty pair, label 0. They never change a gradient or a metric."""
    wanted, count = count, max(count, 1)  # a tokenizer refuses an empty batch
    encoded = encode_pairs(tokenizer, [""] * count, [""] * count, max_length)
    columns: dict[str, pa.Array] = {"input_ids": pa.array(encoded["input_ids"], type=pa.list_(pa.int32()))}
    if "token_type_ids" in encoded:
        columns["token_type_ids"] = pa.array(encoded["token_type_ids"], type=pa.list_(pa.int8()))
    columns["label"] = pa.array([0] * count, type=label_type(class_ids))
    columns["weight"] = pa.array([0.0] * count, type=pa.float32())
    columns["skip"] = pa.array([0] * count, type=pa.int8())
    columns["row_key"] = pa.array([-1] * count, type=pa.int64())
    if id_column:
        columns["pair_id"] = pa.array([None] * count, type=pa.string())
    if group_ids:
        columns["group_id"] = pa.array([-1] * count, type=pa.int64())
    return pa.table(columns).slice(0, wanted)


def pad_to_multiple(
    ds: ray.data.Dataset, num_rows: int, world_size: int, filler: pa.Table
) -> tuple[ray.data.Dataset, int]:
    """Append weight-0 rows (taken from ``filler``, which holds ``world_size - 1``) so the row
    count divides by the number of workers.

    Ray Train splits a dataset with ``streaming_split(equal=True)``, which gives every worker the
    same number of rows by dropping the remainder: up to ``world_size - 1`` pairs per epoch would
    never be trained. With the count a multiple of ``world_size`` nothing is dropped, every worker
    runs the same number of steps (so DDP's collectives line up), and the filler rows weigh 0.
    """
    import ray.data

    missing = (-num_rows) % world_size
    if missing == 0:
        return ds, num_rows
    return ds.union(ray.data.from_arrow(filler.slice(0, missing))), num_rows + missing


@dataclass
class PairStream:
    """How to build a tokenized, padded stream of one split: on the driver for whole epochs, and
    in Ray Train's controller, minus the rows already trained, for the rest of an interrupted
    epoch (:class:`rerank_ray.position.RestOfEpoch`)."""

    source: PairSource
    handle: TokenizerHandle
    max_length: int
    data: DataConfig
    world_size: int
    filler: pa.Table
    class_ids: bool = False
    """Labels are class ids (CrossEntropyLoss): int64 from the file to the loss and the evaluator."""

    @property
    def files(self) -> list[str]:
        return self.source.files

    @property
    def num_rows(self) -> int:
        return self.source.num_rows

    @property
    def files_digest(self) -> str:
        from rerank_ray.position import files_digest

        return files_digest(self.source.files)

    def build(self, exclude: Any = None) -> tuple[ray.data.Dataset, int]:
        """(dataset, rows including filler). ``exclude``: row-key ranges to leave out."""
        from rerank_ray.position import count_in_ranges, drop_trained

        dataset, rows = self.source.dataset, self.source.num_rows
        if exclude is not None and len(exclude):
            dataset = dataset.map_batches(drop_trained, batch_format="pyarrow", fn_kwargs={"ranges": exclude})
            rows -= count_in_ranges(exclude)
        tokenized = tokenize(dataset, self.handle, self.max_length, self.data, self.class_ids)
        return pad_to_multiple(tokenized, rows, self.world_size, self.filler)


def default_max_length(tokenizer: Any, configured: int | None) -> int:
    if configured is not None:
        return configured
    limit = getattr(tokenizer, "model_max_length", None) or 512
    return int(min(limit, 512))
