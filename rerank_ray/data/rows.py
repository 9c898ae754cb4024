"""Whole rows of pair, tuple, list or corpus files, every column kept, for the batch-inference
commands (``score``, ``mine``), which add columns to rows rather than train on them.

Training reads through :mod:`rerank_ray.data.reading` (row checks, positions, canonical
columns); these commands need neither, so they read with pyarrow's own readers, a file per Ray
Data read task, and key each row so that its order can be restored: Ray Data's readers and
operators do not promise the input's order (Ray 2.60's Parquet reader gave rows 4-7 of a file
before rows 0-3 in a run with ``preserve_order`` on).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

#: Each row's key while it passes through Ray Data: (file index << 32) + row number.
ORDER = "__rerank_ray_row"
#: The formats these commands read.
READERS = ("parquet", "jsonl", "csv", "tsv")


def row_keys(file_index: int, rows: int) -> pa.Array:
    return pa.array((file_index << 32) + np.arange(rows, dtype=np.int64), pa.int64())


def rows_datasource(files: list[str], fmt: str) -> Any:
    """A Ray Data datasource of the files' rows, every column kept, each row with its key
    (:data:`ORDER`: the file's index in the sorted list, then the row's number in it)."""
    from ray.data.datasource import FileBasedDatasource

    class RowsDatasource(FileBasedDatasource):
        def __init__(self) -> None:
            super().__init__(files, file_extensions=None)
            self._index = {path: i for i, path in enumerate(self._paths())}

        def get_name(self) -> str:
            return "ReadRows"

        def _read_stream(self, f: Any, path: str) -> Any:
            table = read_table(f, fmt)
            yield table.append_column(ORDER, row_keys(self._index[path], table.num_rows))

        def _open_input_source(self, filesystem: Any, path: str, **open_args: Any) -> Any:
            if fmt == "parquet":
                return filesystem.open_input_file(path)
            return super()._open_input_source(filesystem, path, **open_args)

    return RowsDatasource()


def read_table(handle: Any, fmt: str) -> pa.Table:
    """One whole file (a shard: one read task holds it), by pyarrow's reader of its format."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(handle)
    if fmt == "jsonl":
        import pyarrow.json as pajson

        return pajson.read_json(handle)
    import pyarrow.csv as pacsv

    parse = pacsv.ParseOptions(delimiter="\t", quote_char=False) if fmt == "tsv" else pacsv.ParseOptions()
    return pacsv.read_csv(handle, parse_options=parse)


def flat_values(column: pa.ChunkedArray | pa.Array) -> list[Any]:
    """A column's values, a list column's flattened."""
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        import pyarrow.compute as pc

        return pc.list_flatten(column).to_pylist()
    return column.to_pylist()
