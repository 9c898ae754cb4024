"""Pair datasets as Ray Data streams: read in tasks, checked, tokenized, padded for the workers.

Nothing here holds a dataset in one process: Ray Data reads the files in tasks (through
:class:`PairFileDatasource`, which numbers every row), tokenizes them in tasks (so the training step
never waits for a tokenizer), and each Ray Train worker pulls its own shard
(``ray.train.get_dataset_shard``). The driver only counts rows, which for Parquet reads the footers
alone.

Every dataset that reaches the workers has these columns:

- ``input_ids`` (list<int32>) and, when the tokenizer makes them, ``token_type_ids`` (list<int8>):
  the pair as the library's own preprocessing gives it for ``CrossEncoder.predict`` (prompt,
  chat template, truncation: :mod:`rerank_ray.data.encoding`), not padded (padding happens per
  batch, on the worker, on the side the library pads);
- ``label``: float32, or int64 class ids for a multi-class head (CrossEntropyLoss), so class
  labels stay integers from the file to the loss and the evaluator;
- ``weight`` (float32): 1 for a real pair, 0 for the filler rows that make the row count a
  multiple of the number of workers (see :func:`pad_to_multiple`) and for bad rows skipped with
  ``data.on_bad_row: skip``;
- ``skip`` (int8): why a row was skipped (:data:`rerank_ray.data.checks.REASONS`), 0 for a good row;
- ``row_key`` (int64): the row's file and row number, its stable key (:mod:`rerank_ray.data.position`);
  -1 for filler rows;
- ``pair_id`` when ``data.id_column`` is set; ``group_id`` (int64, the query of a reranking eval
  pair, :func:`add_group_ids`; the metrics per query are :mod:`rerank_ray.evaluation.ranking`'s).

Files are read and every row is checked by :mod:`rerank_ray.data.reading` (with the checks of
:mod:`rerank_ray.data.checks`) as it streams; :mod:`rerank_ray.data.files` checked a sample of
every file before Ray started.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from rerank_ray.config import DataConfig
from rerank_ray.data.checks import RowChecker
from rerank_ray.data.encoding import PairEncoder
from rerank_ray.data.files import SplitFiles
from rerank_ray.data.hub import hub_filesystem
from rerank_ray.data.position import count_in_ranges, drop_trained, files_digest
from rerank_ray.data.queries import EvalQueries
from rerank_ray.data.reading import open_with, read_file, shuffle_rows
from rerank_ray.data.shapes import PAIRS, Shape
from rerank_ray.errors import DataError
from rerank_ray.evaluation.ranking import QUERY_ID, query_hashes

if TYPE_CHECKING:
    import ray.data


@dataclass
class PairSource:
    """One split (train or eval) as a Ray dataset of checked rows, before tokenization."""

    what: str
    files: list[str]
    format: str
    dataset: ray.data.Dataset
    num_rows: int
    """Rows in the files (with ``on_bad_row: skip``, bad rows included: they stay as placeholders)."""
    name: str | None = None
    """Name for the model card. None: the folder of the first file."""
    dropped_queries: dict[str, int] = field(default_factory=dict)
    """Reranking queries left out by ``eval.drop_unrankable``, by reason."""
    shape: Shape = PAIRS
    """The rows' shape (:mod:`rerank_ray.data.shapes`)."""


def open_pairs(split: SplitFiles, data: DataConfig, seed: int | None, first_file: int = 0) -> PairSource:
    """Read one split with Ray Data (rows checked as they stream), count its rows. ``first_file``:
    the index of its first file in the row keys (a mixture's training sets number their files
    one after the other, so every row of the mixture has its own key)."""
    dataset = read_pairs(
        split.files,
        split.format,
        split.checker,
        seed=seed,
        shuffle_buffer_rows=data.shuffle_buffer_rows,
        first_file=first_file,
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
    return PairSource(
        what=split.what,
        files=split.files,
        format=split.format,
        dataset=dataset,
        num_rows=num_rows,
        shape=split.checker.shape,
    )


# ---------------------------------------------------------------------------------------------
# Tokenization (runs inside Ray Data tasks)

_ENCODER_CACHE: dict[str, Any] = {}


class EncoderHandle:
    """How Ray Data tasks get the :class:`~rerank_ray.data.encoding.PairEncoder`: ``build`` (a
    picklable callable, e.g. ``functools.partial(load_encoder, model_config, max_length)``) makes
    it in each process the first time it is needed, and the process keeps it.

    Built there rather than pickled on the driver: a model with its own code
    (``trust_remote_code``) has a config class from transformers' dynamic modules, which only a
    process that loaded the model can unpickle."""

    def __init__(self, build: Callable[[], PairEncoder], key: str):
        self.build = build
        self.key = key

    def get(self) -> PairEncoder:
        if self.key not in _ENCODER_CACHE:
            _ENCODER_CACHE[self.key] = self.build()
        return _ENCODER_CACHE[self.key]


def tokenize_batch(batch: pa.Table, handle: EncoderHandle, class_ids: bool = False) -> pa.Table:
    """Ray Data map: checked rows -> token ids, label, weight, skip, row_key (and pair_id, group_id).

    Skipped rows arrive with empty texts; they are tokenized like filler rows and weigh 0.
    ``class_ids``: labels are class ids of a multi-class head (already checked to be whole numbers
    in range, :func:`rerank_ray.data.checks.label_rule`) and become int64 for the loss."""
    encoded = handle.get().encode(batch.column("sentence_0").to_pylist(), batch.column("sentence_1").to_pylist())
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


def weigh_groups(batch: pa.Table) -> pa.Table:
    """Ray Data map for the grouped shapes: append ``weight`` (1 for a good row, 0 for a skipped
    one). Their texts stay texts: the worker tokenizes the pairs of each batch in its prefetch
    thread (:class:`rerank_ray.training.batching.GroupCollator`), where the pairs are formed."""
    skip = batch.column("skip").to_numpy()
    return batch.append_column("weight", pa.array((skip == 0).astype("float32")))


def group_filler_rows(count: int, id_column: bool) -> pa.Table:
    """``count`` grouped rows of weight 0 with no documents (the grouped form of :func:`filler_rows`)."""
    columns: dict[str, pa.Array] = {
        "query": pa.array([""] * count, pa.string()),
        "documents": pa.array([[]] * count, pa.list_(pa.string())),
        "labels": pa.array([[]] * count, pa.list_(pa.float32())),
        "skip": pa.array([0] * count, type=pa.int8()),
        "row_key": pa.array([-1] * count, type=pa.int64()),
    }
    if id_column:
        columns["pair_id"] = pa.array([None] * count, type=pa.string())
    columns["weight"] = pa.array([0.0] * count, type=pa.float32())
    return pa.table(columns)


def label_type(class_ids: bool) -> pa.DataType:
    """The ``label`` column's type: int64 class ids (CrossEntropyLoss), else float32 targets."""
    return pa.int64() if class_ids else pa.float32()


def tokenize(
    dataset: ray.data.Dataset, handle: EncoderHandle, data: DataConfig, class_ids: bool = False
) -> ray.data.Dataset:
    return dataset.map_batches(
        tokenize_batch,  # type: ignore[arg-type]  # Ray's stub wants a one-argument function; fn_kwargs fill the rest
        batch_format="pyarrow",
        batch_size=data.tokenize_batch_size,
        fn_kwargs={"handle": handle, "class_ids": class_ids},
    )


def filler_rows(
    encoder: PairEncoder, count: int, id_column: bool, *, class_ids: bool = False, group_ids: bool = False
) -> pa.Table:
    """``count`` rows of weight 0: an empty pair, label 0. They never change a gradient or a metric."""
    wanted, count = count, max(count, 1)  # a tokenizer refuses an empty batch
    encoded = encoder.encode([""] * count, [""] * count)
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
    epoch (:class:`rerank_ray.training.checkpointing.RestOfEpoch`)."""

    source: PairSource
    handle: EncoderHandle
    data: DataConfig
    world_size: int
    filler: pa.Table
    class_ids: bool = False
    """Labels are class ids (CrossEntropyLoss): int64 from the file to the loss and the evaluator."""
    grouped: bool = False
    """Rows are queries with their documents (:mod:`rerank_ray.data.shapes`), tokenized on the workers."""

    @property
    def files(self) -> list[str]:
        return self.source.files

    @property
    def num_rows(self) -> int:
        return self.source.num_rows

    @property
    def files_digest(self) -> str:
        return files_digest(self.source.files)

    def build(self, exclude: np.ndarray | None = None) -> tuple[ray.data.Dataset, int]:
        """(dataset, rows including filler). ``exclude``: row-key ranges to leave out."""
        dataset, rows = self.source.dataset, self.source.num_rows
        if exclude is not None and len(exclude):
            dataset = dataset.map_batches(
                drop_trained,  # type: ignore[arg-type]  # Ray's stub wants a one-argument function
                batch_format="pyarrow",
                fn_kwargs={"ranges": exclude},
            )
            rows -= count_in_ranges(exclude)
        if self.grouped:
            weighed = dataset.map_batches(weigh_groups, batch_format="pyarrow")
            return pad_to_multiple(weighed, rows, self.world_size, self.filler)
        tokenized = tokenize(dataset, self.handle, self.data, self.class_ids)
        return pad_to_multiple(tokenized, rows, self.world_size, self.filler)


def default_max_length(tokenizer: Any, configured: int | None) -> int:
    if configured is not None:
        return configured
    limit = getattr(tokenizer, "model_max_length", None) or 512
    return int(min(limit, 512))


# ---------------------------------------------------------------------------------------------
# The query of a reranking eval pair (a Ray Data stage)


def add_group_ids(batch: pa.Table, key: str) -> pa.Table:
    """Ray Data map: append ``group_id`` (the hash of column ``key``); drop ``query_id``, whose
    strings the workers do not need."""
    values = batch.column(key).to_pylist()
    missing = next((i for i, v in enumerate(values) if v is None), None)
    if missing is not None:
        raise DataError(f"column {key!r}: row {missing} of a read block has no query; every eval pair needs one")
    table = batch.append_column("group_id", pa.array(query_hashes(values), type=pa.int64()))
    return table.drop_columns([QUERY_ID]) if QUERY_ID in table.column_names else table


def with_group_ids(source: PairSource, key: str) -> PairSource:
    """The eval :class:`PairSource` with a ``group_id`` column from ``key``."""
    dataset = source.dataset.map_batches(
        add_group_ids,  # type: ignore[arg-type]  # Ray's stub wants a one-argument function; fn_kwargs fill the rest
        batch_format="pyarrow",
        fn_kwargs={"key": key},
    )
    return replace(source, dataset=dataset)


def drop_groups(batch: pa.Table, groups: np.ndarray) -> pa.Table:
    """Ray Data map: the rows whose ``group_id`` is not in ``groups``."""
    return batch.filter(pa.array(~np.isin(batch.column("group_id").to_numpy(), groups)))


def without_queries(source: PairSource, queries: EvalQueries) -> PairSource:
    """The eval source less the queries ``eval.drop_unrankable`` leaves out (after
    :func:`with_group_ids`); its row count is the rows kept."""
    if not len(queries.dropped_hashes):
        return source
    dataset = source.dataset.map_batches(
        drop_groups,  # type: ignore[arg-type]  # Ray's stub wants a one-argument function
        batch_format="pyarrow",
        fn_kwargs={"groups": queries.dropped_hashes},
    )
    return replace(
        source, dataset=dataset, num_rows=source.num_rows - queries.dropped_rows, dropped_queries=queries.dropped()
    )


# ---------------------------------------------------------------------------------------------
# The Ray Data datasource

_FILE_INDEX_CACHE: dict[Any, dict[str, int]] = {}


def _make_datasource_class():
    from ray.data.datasource import FileBasedDatasource

    class PairFileDatasource(FileBasedDatasource):
        """Ray Data reads pair files with this: Ray lists, shuffles, schedules, retries; we parse."""

        def __init__(
            self,
            files: list[str],
            fmt: str,
            checker: RowChecker,
            shuffle: Any = None,
            row_shuffle: tuple[int, int] | None = None,
            first_file: int = 0,
        ):
            import ray

            filesystem = None
            if files and files[0].startswith("hf://"):  # a dataset on the Hugging Face hub
                filesystem = hub_filesystem()
                files = [path.removeprefix("hf://") for path in files]
            super().__init__(files, shuffle=shuffle, file_extensions=None, filesystem=filesystem)
            # (seed, buffer rows) of the shuffle of each file's rows; the read tasks of one
            # execution (epoch) get the seed with that execution's index, as the file order does.
            self._row_shuffle = row_shuffle
            self._row_seed: tuple[int, int] | None = None
            resolved = self._paths()
            if len(resolved) != len(files):
                raise DataError(f"{checker.what}: Ray Data found {len(resolved)} files where {len(files)} were listed")
            # The resolved path (no scheme) of each file -> its index in the user's sorted list.
            self._file_index_ref = ray.put({path: first_file + i for i, path in enumerate(resolved)})
            self._format = fmt
            self._checker = checker

        def get_name(self) -> str:
            return "ReadPairs"

        def get_read_tasks(self, parallelism: int, per_task_row_limit: Any = None, data_context: Any = None) -> Any:
            source = self
            if self._row_shuffle is not None:
                # A copy per execution: its read tasks carry this execution's seed.
                source = copy.copy(self)
                source._row_seed = (self._row_shuffle[0], data_context._execution_idx if data_context else 0)
            return FileBasedDatasource.get_read_tasks(
                source, parallelism, per_task_row_limit=per_task_row_limit, data_context=data_context
            )

        def _file_index(self, path: str) -> int:
            import ray

            key = self._file_index_ref.hex()
            if key not in _FILE_INDEX_CACHE:
                _FILE_INDEX_CACHE[key] = ray.get(self._file_index_ref)
            return _FILE_INDEX_CACHE[key][path]

        def _read_stream(self, f: Any, path: str) -> Iterator[pa.Table]:
            # The file Ray Data opened serves the first pass; the line-by-line fallback of a text
            # file opens it again from its first byte.
            reopen = open_with(self._filesystem, path, self._format)
            handles = [f]
            index = self._file_index(path)
            chunks = read_file(lambda: handles.pop() if handles else reopen(), self._format, index, self._checker)
            if self._row_seed is not None and self._row_shuffle is not None:
                # Seeded by (seed, epoch, file): a retried read replays the same order, which
                # Ray Data's retry (it skips the blocks already yielded) relies on.
                rng = np.random.default_rng([*self._row_seed, index])
                chunks = shuffle_rows(chunks, rng, self._row_shuffle[1])
            yield from chunks

        def _open_input_source(self, filesystem: Any, path: str, **open_args: Any) -> Any:
            if self._format == "parquet":
                return filesystem.open_input_file(path)
            return super()._open_input_source(filesystem, path, **open_args)

    return PairFileDatasource


def read_pairs(
    files: list[str],
    fmt: str,
    checker: RowChecker,
    seed: int | None,
    shuffle_buffer_rows: int = 0,
    first_file: int = 0,
) -> ray.data.Dataset:
    """A Ray dataset of the checked rows of ``files``. ``seed`` shuffles, differently and
    reproducibly each epoch, the order of the files and (with ``shuffle_buffer_rows``) the rows of
    each file, that many at a time; the workers shuffle again within their windows."""
    import ray.data
    from ray.data import FileShuffleConfig

    shuffle = FileShuffleConfig(seed=seed, reseed_after_execution=True) if seed is not None and len(files) > 1 else None
    row_shuffle = (seed, shuffle_buffer_rows) if seed is not None and shuffle_buffer_rows > 0 else None
    datasource = _make_datasource_class()(
        files, fmt, checker, shuffle=shuffle, row_shuffle=row_shuffle, first_file=first_file
    )
    return ray.data.read_datasource(datasource)
