"""Pair datasets on the driver: find the files, read them with Ray Data, tokenize in the stream.

Nothing here holds a dataset in one process: Ray Data reads the files in tasks, tokenizes them in
tasks (so the training step never waits for a tokenizer), and each Ray Train worker pulls its
own shard (``ray.train.get_dataset_shard``). The driver only counts rows, which for Parquet reads
the footers alone.

Every dataset that reaches the workers has these columns:

- ``input_ids`` (list<int32>) and, when the tokenizer makes them, ``token_type_ids`` (list<int8>):
  the pair, tokenized and truncated, not padded (padding happens per batch, on the worker);
- ``label`` (float32); ``weight`` (float32): 1 for a real pair, 0 for the filler rows that make
  the row count a multiple of the number of workers (see :func:`pad_to_multiple`);
- ``pair_id`` when ``data.id_column`` is set.
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

from rerank_ray.config import PAIR_COLUMNS, ConfigError, DataConfig

if TYPE_CHECKING:
    import ray.data

FORMAT_EXTENSIONS = {
    "parquet": (".parquet", ".pq"),
    "jsonl": (".jsonl", ".json", ".ndjson"),
    "csv": (".csv",),
    "tsv": (".tsv", ".tab"),
}


class DataError(ValueError):
    """Bad input data. The message names the file, the column and, where known, the row."""


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
        from rerank_ray.redact import redact

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


def read_raw(files: list[str], fmt: str, seed: int | None = None) -> ray.data.Dataset:
    """A Ray dataset of the files' rows, all columns. ``seed`` shuffles the file order every
    epoch (differently each epoch, reproducibly): a streaming-friendly shuffle, unlike a global
    ``random_shuffle`` that would gather the whole set."""
    import ray.data
    from ray.data import FileShuffleConfig

    shuffle = FileShuffleConfig(seed=seed, reseed_after_execution=True) if seed is not None and len(files) > 1 else None
    if fmt == "parquet":
        return ray.data.read_parquet(files, shuffle=shuffle)
    if fmt == "jsonl":
        return ray.data.read_json(files, lines=True, shuffle=shuffle, file_extensions=None)
    if fmt in ("csv", "tsv"):
        import pyarrow.csv as pacsv

        kwargs: dict[str, Any] = {}
        if fmt == "tsv":
            # Texts hold quotes; a TSV has no quoting.
            kwargs["parse_options"] = pacsv.ParseOptions(delimiter="\t", quote_char=False)
        return ray.data.read_csv(files, shuffle=shuffle, **kwargs)
    raise ConfigError(f"data.format {fmt!r} is not readable")


def column_mapping(data: DataConfig) -> dict[str, str]:
    """file column -> canonical column, for the columns a run needs."""
    mapping = {data.columns.get(name, name): name for name in PAIR_COLUMNS}
    if data.id_column:
        mapping[data.id_column] = "pair_id"
    return mapping


def check_columns(schema_names: list[str], mapping: dict[str, str], files: list[str], what: str) -> None:
    """Fail before training when a needed column is missing, naming the file and the fix."""
    missing = [src for src in mapping if src not in schema_names]
    if missing:
        src = missing[0]
        canonical = mapping[src]
        hint = (
            f"map it with data.columns.{canonical}=<your column>"
            if canonical in PAIR_COLUMNS
            else "check data.id_column"
        )
        shown = files[0] if len(files) == 1 else f"{files[0]} (and {len(files) - 1} more)"
        raise DataError(
            f"{what}: column {src!r} (for {canonical}) is missing in {shown}; "
            f"the files have columns {schema_names}; {hint}"
        )


#: Files whose columns are checked before training (all footers for Parquet are cheap; text
#: formats are read only up to :data:`PEEK_BYTES` each).
MAX_FILES_PEEKED = 64
PEEK_BYTES = 1 << 20


def _open_input(path: str):
    import pyarrow.fs as pafs

    if _is_uri(path):
        fs, inner = pafs.FileSystem.from_uri(path)
        return fs.open_input_file(inner) if path.lower().endswith((".parquet", ".pq")) else fs.open_input_stream(inner)
    return pa.OSFile(path, "rb") if path.lower().endswith((".parquet", ".pq")) else pa.input_stream(path)


def peek(path: str, fmt: str) -> tuple[pa.Schema, int | None]:
    """(schema, row count if known cheaply) of one file, reading a footer or its first megabyte."""
    import io

    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    try:
        with _open_input(path) as handle:
            if fmt == "parquet":
                meta = pq.ParquetFile(handle).metadata
                return meta.schema.to_arrow_schema(), meta.num_rows
            head = handle.read(PEEK_BYTES)
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"cannot read {path}: {err}") from err
    if not head.strip():
        raise DataError(f"{path} is empty")
    if len(head) == PEEK_BYTES:
        head = head[: head.rfind(b"\n") + 1] or head  # whole lines only
    try:
        if fmt == "jsonl":
            table = pajson.read_json(io.BytesIO(head))
        else:
            parse = pacsv.ParseOptions(delimiter="\t", quote_char=False) if fmt == "tsv" else pacsv.ParseOptions()
            table = pacsv.read_csv(io.BytesIO(head), parse_options=parse)
    except pa.ArrowInvalid as err:
        raise DataError(f"{path} is not valid {fmt.upper()}: {err}") from err
    return table.schema, None


@dataclass
class SplitFiles:
    """One split's files, checked on the driver before Ray starts."""

    what: str
    files: list[str]
    format: str
    footer_rows: int | None
    """Row count from Parquet footers, when every file's footer was read."""


def inspect_split(specs: list[str], data: DataConfig, what: str) -> SplitFiles:
    """Find one split's files and check their columns on the files themselves (footers, or the
    first megabyte), so a missing column fails in seconds, naming the file, before Ray starts."""
    files, fmt = resolve_paths(specs, data.format, what)
    mapping = column_mapping(data)
    rows = []
    for path in files[:MAX_FILES_PEEKED]:
        schema, count = peek(path, fmt)
        check_columns(list(schema.names), mapping, [path], what)
        rows.append(count)
    known = fmt == "parquet" and len(files) <= MAX_FILES_PEEKED
    return SplitFiles(what=what, files=files, format=fmt, footer_rows=int(sum(rows)) if known else None)


@dataclass
class PairSource:
    """One split (train or eval) as a Ray dataset with canonical columns, before tokenization."""

    what: str
    files: list[str]
    format: str
    dataset: Any
    num_rows: int


def open_pairs(split: SplitFiles, data: DataConfig, seed: int | None) -> PairSource:
    """Read one split with Ray Data, rename its columns to the canonical names, count its rows."""
    raw = read_raw(split.files, split.format, seed=seed)
    mapping = column_mapping(data)
    renamed = raw.select_columns(list(mapping)).rename_columns(mapping)
    num_rows = split.footer_rows if split.footer_rows is not None else renamed.count()
    if num_rows == 0:
        raise DataError(
            f"{split.what}: {split.files[0]} holds no rows"
            if len(split.files) == 1
            else f"{split.what}: no rows in {len(split.files)} files"
        )
    return PairSource(what=split.what, files=split.files, format=split.format, dataset=renamed, num_rows=num_rows)


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


def _text_column(batch: pa.Table, name: str) -> list[str]:
    values = batch.column(name).to_pylist()
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise DataError(f"column {name!r}: row {i} of a read block holds {value!r}, not text")
    return values


def tokenize_batch(batch: pa.Table, handle: TokenizerHandle, max_length: int, label_scale: float) -> pa.Table:
    """Ray Data map: canonical text columns -> token ids, label, weight (and pair_id)."""
    tokenizer = handle.get()
    encoded = encode_pairs(tokenizer, _text_column(batch, "sentence_0"), _text_column(batch, "sentence_1"), max_length)
    columns: dict[str, pa.Array] = {
        "input_ids": pa.array(encoded["input_ids"], type=pa.list_(pa.int32())),
    }
    if "token_type_ids" in encoded:
        columns["token_type_ids"] = pa.array(encoded["token_type_ids"], type=pa.list_(pa.int8()))
    labels = batch.column("label")
    if not pa.types.is_floating(labels.type) and not pa.types.is_integer(labels.type):
        raise DataError(f"column 'label' holds {labels.type}, not numbers")
    labels = labels.cast(pa.float32())
    if label_scale != 1.0:
        import pyarrow.compute as pc

        labels = pc.multiply(labels, pa.scalar(label_scale, pa.float32()))
    columns["label"] = labels
    columns["weight"] = pa.array([1.0] * batch.num_rows, type=pa.float32())
    if "pair_id" in batch.column_names:
        columns["pair_id"] = batch.column("pair_id").cast(pa.string())
    return pa.table(columns)


def tokenize(source: PairSource, handle: TokenizerHandle, max_length: int, data: DataConfig) -> ray.data.Dataset:
    return source.dataset.map_batches(
        tokenize_batch,
        batch_format="pyarrow",
        batch_size=data.tokenize_batch_size,
        fn_kwargs={"handle": handle, "max_length": max_length, "label_scale": data.label_scale},
    )


def filler_rows(tokenizer: Any, count: int, max_length: int, schema: pa.Schema) -> pa.Table:
    """``count`` rows of weight 0: an empty pair, label 0. They never change a gradient or a metric."""
    encoded = encode_pairs(tokenizer, [""] * count, [""] * count, max_length)
    columns: dict[str, pa.Array] = {"input_ids": pa.array(encoded["input_ids"], type=pa.list_(pa.int32()))}
    if "token_type_ids" in schema.names:
        columns["token_type_ids"] = pa.array(encoded["token_type_ids"], type=pa.list_(pa.int8()))
    columns["label"] = pa.array([0.0] * count, type=pa.float32())
    columns["weight"] = pa.array([0.0] * count, type=pa.float32())
    if "pair_id" in schema.names:
        columns["pair_id"] = pa.array([None] * count, type=pa.string())
    return pa.table(columns)


def pad_to_multiple(
    ds: ray.data.Dataset, num_rows: int, world_size: int, tokenizer: Any, max_length: int, id_column: bool
) -> tuple[ray.data.Dataset, int]:
    """Append weight-0 rows so the row count divides by the number of workers.

    Ray Train splits a dataset with ``streaming_split(equal=True)``, which gives every worker the
    same number of rows by dropping the remainder: up to ``world_size - 1`` pairs per epoch would
    never be trained. With the count a multiple of ``world_size`` nothing is dropped, every worker
    runs the same number of steps (so DDP's collectives line up), and the filler rows weigh 0.
    """
    import ray.data

    missing = (-num_rows) % world_size
    if missing == 0:
        return ds, num_rows
    names = ["input_ids"]
    if "token_type_ids" in tokenizer.model_input_names:
        names.append("token_type_ids")
    names += ["label", "weight"] + (["pair_id"] if id_column else [])
    schema = pa.schema([(n, pa.null()) for n in names])
    filler = ray.data.from_arrow(filler_rows(tokenizer, missing, max_length, schema))
    return ds.union(filler), num_rows + missing


def default_max_length(tokenizer: Any, configured: int | None) -> int:
    if configured is not None:
        return configured
    limit = getattr(tokenizer, "model_max_length", None) or 512
    return int(min(limit, 512))
