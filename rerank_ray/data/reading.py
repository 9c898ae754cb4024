"""Reading pair files with each row's place in its file, checking rows as they are parsed.

Ray Data's readers tell a row's file (``include_paths``) but not its row number in that file
(only a hash of it, and only for Parquet). The row number is what an error message must name,
and (file, row) is the stable key a checkpoint's data position records (:mod:`rerank_ray.data.position`).
So pair files are read by :class:`PairFileDatasource`, a subclass of Ray Data's own
``FileBasedDatasource``: Ray Data still lists, shuffles (per epoch), schedules (local files on the
driver's node), retries and streams the files; we only parse one file from its first byte, number
its rows and pass each parsed chunk through the split's :class:`~rerank_ray.data.checks.RowChecker`.

Parsing is pyarrow's (Parquet row groups, the streaming CSV and JSON readers). When pyarrow gives
up part-way through a text file (a malformed line, a value of another type), the rest of that file
is parsed line by line in Python, so the bad line is named, or with ``data.on_bad_row: skip``
kept as a placeholder, instead of failing the whole file without a row number.

Every chunk leaves the reader with the same columns: ``sentence_0``, ``sentence_1`` (string),
``label`` (float32, scaled), ``skip`` (int8 reason code), ``row_key`` (int64) and ``pair_id``
(string) when ``data.id_column`` is set.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from rerank_ray.data.checks import RowChecker
from rerank_ray.data.hub import hub_filesystem

#: Rows per chunk that leaves the reader (and per chunk of the line-by-line fallback).
CHUNK_ROWS = 8192
#: Bytes per block of pyarrow's streaming CSV / JSON readers.
TEXT_BLOCK_BYTES = 8 << 20
TEXT_FORMATS = ("jsonl", "csv", "tsv")
#: The UTF-8 byte-order mark spreadsheet programs write before a CSV's header: not part of the
#: first column's name (nor of a JSON line).
BOM = b"\xef\xbb\xbf"

Opener = Callable[[], Any]


def read_file(
    open_file: Opener, fmt: str, file_index: int, checker: RowChecker, limit: int | None = None
) -> Iterator[pa.Table]:
    """Checked chunks of one file, from its first row (at most ``limit`` rows)."""
    if fmt == "parquet":
        yield from _read_parquet(open_file, file_index, checker, limit)
    elif fmt == "arrow":
        yield from _read_arrow(open_file, file_index, checker, limit)
    else:
        yield from _read_text(open_file, fmt, file_index, checker, limit)


def _source_columns(checker: RowChecker) -> list[str]:
    return list(dict.fromkeys(checker.file_columns.values()))


def _canonical(table: pa.Table, checker: RowChecker) -> pa.Table:
    """The file's columns under their canonical names."""
    return pa.table({canonical: table.column(column) for canonical, column in checker.file_columns.items()})


# ---------------------------------------------------------------------------------------------
# Parquet


def _check_schema(schema: pa.Schema, file_index: int, checker: RowChecker) -> None:
    """A binary file's columns, from its schema before any row: each one the run needs is there,
    and of a type that holds it."""
    for canonical, column in checker.file_columns.items():
        if column not in schema.names:
            raise checker.missing_column(file_index, canonical, list(schema.names))
    checker.check_types(file_index, schema)


def _read_parquet(open_file: Opener, file_index: int, checker: RowChecker, limit: int | None) -> Iterator[pa.Table]:
    import pyarrow.parquet as pq

    with open_file() as handle:
        if handle.size() == 0:
            raise checker.file_error(
                file_index, "the file is empty (0 bytes)", "re-export it, or remove it from the data"
            )
        try:
            parquet = pq.ParquetFile(handle)
        except (OSError, pa.ArrowException) as err:
            raise checker.file_error(
                file_index,
                f"cannot be read as Parquet ({_one_line(err)})",
                "the file is truncated or not Parquet: re-export it",
            ) from err
        _check_schema(parquet.schema_arrow, file_index, checker)
        if parquet.metadata.num_rows == 0:
            raise checker.file_error(file_index, "the file holds no rows", "remove it from the data, or re-export it")
        row = 0
        for group in range(parquet.num_row_groups):
            group_rows = parquet.metadata.row_group(group).num_rows
            group_start = row
            try:
                batches = parquet.iter_batches(
                    batch_size=CHUNK_ROWS, row_groups=[group], columns=_source_columns(checker)
                )
                for batch in batches:
                    table = pa.Table.from_batches([batch])
                    if limit is not None:
                        table = table.slice(0, max(0, limit - row))
                    yield checker.check(_canonical(table, checker), file_index, row)
                    row += table.num_rows
                    if limit is not None and row >= limit:
                        return
            except (OSError, pa.ArrowException) as err:
                raise checker.file_error(
                    file_index,
                    f"row group {group} (rows {group_start + 1}..{group_start + group_rows}) cannot be read "
                    f"({_one_line(err)})",
                    "the file is corrupt or truncated: re-export it",
                ) from err
            # pyarrow decodes a row group whose pages are damaged to fewer rows (none, seen with a
            # flipped byte: benchmarks/fuzz_inputs.py) without an error; the footer's count is the
            # file's word, which the epoch plan counted on.
            if row - group_start != group_rows:
                raise checker.file_error(
                    file_index,
                    f"row group {group} (rows {group_start + 1}..{group_start + group_rows}) decodes to "
                    f"{row - group_start} rows where the file's footer says {group_rows}",
                    "the file is corrupt: re-export it",
                )


def _read_arrow(open_file: Opener, file_index: int, checker: RowChecker, limit: int | None) -> Iterator[pa.Table]:
    """An Arrow IPC stream (``Dataset.save_to_disk`` writes its data so), batch by batch."""
    with open_file() as handle:
        try:
            reader = pa.ipc.open_stream(handle)
        except (OSError, pa.ArrowException) as err:
            raise checker.file_error(
                file_index,
                f"cannot be read as an Arrow stream ({_one_line(err)})",
                "the file is truncated or not an Arrow IPC stream (Dataset.save_to_disk writes one): save it again",
            ) from err
        _check_schema(reader.schema, file_index, checker)
        row = 0
        try:
            for batch in reader:
                table = pa.Table.from_batches([batch]).select(_source_columns(checker))
                if limit is not None:
                    table = table.slice(0, max(0, limit - row))
                for start in range(0, table.num_rows, CHUNK_ROWS):
                    chunk = table.slice(start, CHUNK_ROWS)
                    yield checker.check(_canonical(chunk, checker), file_index, row)
                    row += chunk.num_rows
                if limit is not None and row >= limit:
                    return
        except (OSError, pa.ArrowException) as err:
            raise checker.file_error(
                file_index,
                f"rows after {row} cannot be read ({_one_line(err)})",
                "the file is corrupt or truncated: save the dataset again",
            ) from err
        if row == 0:
            raise checker.file_error(file_index, "the file holds no rows", "remove it from the data, or save it again")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def parquet_row_count(open_file: Opener) -> int:
    import pyarrow.parquet as pq

    with open_file() as handle:
        return pq.ParquetFile(handle).metadata.num_rows


# ---------------------------------------------------------------------------------------------
# Text formats: pyarrow first, Python line by line from the row where pyarrow gave up


def _read_text(
    open_file: Opener, fmt: str, file_index: int, checker: RowChecker, limit: int | None
) -> Iterator[pa.Table]:
    row = 0
    try:
        with open_file() as handle:
            buffered = io.BufferedReader(_RawAdapter(handle), buffer_size=1 << 20)
            head = _read_head(buffered).removeprefix(BOM)
            if not head:
                raise checker.file_error(
                    file_index, "the file is empty (0 bytes)", "re-export it, or remove it from the data"
                )
            _check_header(head, fmt, file_index, checker)
            stream = _prepend(head, buffered)
            for table in _arrow_text_chunks(stream, fmt, checker, file_index):
                if limit is not None:
                    table = table.slice(0, max(0, limit - row))
                yield checker.check(_canonical(table, checker), file_index, row)
                row += table.num_rows
                if limit is not None and row >= limit:
                    return
    except pa.ArrowInvalid:
        # pyarrow rejected a block (a malformed line, a value of another type). Parse the
        # rest of the file line by line, so the bad line is named (or skipped).
        yield from _python_text_chunks(open_file, fmt, file_index, checker, skip_rows=row, limit=limit)
        return
    if row == 0:
        raise checker.file_error(file_index, "the file holds no rows", "remove it from the data, or re-export it")


def _read_head(handle: Any) -> bytes:
    """The file's first non-blank line (and any blank lines before it)."""
    head = b""
    while True:
        line = handle.readline()
        head += line
        if not line or line.strip():
            return head


def _header_columns(head: bytes, fmt: str) -> list[str] | None:
    """The column names in a text file's head (:func:`_read_head`): the CSV header, or the keys of
    the first JSON record (None: no head, or a broken first line, which the row checks name)."""
    if not head.strip():
        return None
    first = head.strip().splitlines()[-1]
    if fmt == "jsonl":
        try:
            record = json.loads(first)
        except ValueError:
            return None
        return list(record) if isinstance(record, dict) else None
    text = first.decode("utf-8", "replace")
    return next(csv.reader([text], delimiter="\t", quoting=csv.QUOTE_NONE) if fmt == "tsv" else csv.reader([text]))


def _check_header(head: bytes, fmt: str, file_index: int, checker: RowChecker) -> None:
    """Every needed column in the CSV header, or among the keys of the first JSON record."""
    present = _header_columns(head, fmt)
    if present is None:
        return
    for canonical, column in checker.file_columns.items():
        if column not in present:
            raise checker.missing_column(file_index, canonical, present)


def _prepend(head: bytes, handle: Any) -> Any:
    """A stream that yields ``head`` and then the rest of ``handle`` (we peeked one byte)."""

    class _Joined(io.RawIOBase):
        def __init__(self) -> None:
            self._head = head

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            if self._head:
                n = min(len(buffer), len(self._head))
                buffer[:n], self._head = self._head[:n], self._head[n:]
                return n
            data = handle.read(len(buffer))
            buffer[: len(data)] = data
            return len(data)

    return io.BufferedReader(_Joined(), buffer_size=1 << 20)


def _arrow_text_chunks(stream: Any, fmt: str, checker: RowChecker, file_index: int) -> Iterator[pa.Table]:
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson

    columns = _source_columns(checker)
    if fmt == "jsonl":
        # Texts and ids as strings, labels as numbers: a value of another type (or broken JSON)
        # raises, and the Python path below names the line.
        fields = [(column, _json_type(canonical, checker)) for canonical, column in checker.file_columns.items()]
        reader = pajson.open_json(
            stream,
            read_options=pajson.ReadOptions(block_size=TEXT_BLOCK_BYTES, use_threads=False),
            parse_options=pajson.ParseOptions(
                explicit_schema=pa.schema(list(dict(fields).items())), unexpected_field_behavior="ignore"
            ),
        )
    else:
        parse = pacsv.ParseOptions(delimiter="\t", quote_char=False) if fmt == "tsv" else pacsv.ParseOptions()
        try:
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(block_size=TEXT_BLOCK_BYTES, use_threads=False),
                parse_options=parse,
                # Every needed column as text: labels are parsed by the checker, which can name a bad
                # one; UTF-8 is checked there too, per row, rather than failing the block.
                convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in columns}, include_columns=columns, check_utf8=False
                ),
            )
        except pa.ArrowInvalid as err:
            missing = next((c for c in columns if f"'{c}'" in str(err) and "does not exist" in str(err)), None)
            if missing is not None:
                canonical = next(k for k, v in checker.file_columns.items() if v == missing)
                raise checker.missing_column(file_index, canonical, None) from err
            if "Empty CSV file" in str(err):
                raise checker.file_error(file_index, "the file holds no rows", "remove it from the data") from err
            raise
    for batch in reader:
        if batch.num_rows:
            yield pa.Table.from_batches([batch])


def _json_type(canonical: str, checker: RowChecker) -> pa.DataType:
    """The type pyarrow's JSON reader must find for a column: anything else falls back to the
    Python path, which names the line."""
    if canonical == "documents":
        return pa.list_(pa.string())
    if canonical == "labels" or (canonical == "label" and checker.shape.grouped):
        return pa.list_(pa.float64())
    return pa.float64() if canonical == "label" else pa.string()


def _python_text_chunks(
    open_file: Opener, fmt: str, file_index: int, checker: RowChecker, skip_rows: int, limit: int | None
) -> Iterator[pa.Table]:
    rows: list[dict[str, Any]] = []
    preset: dict[int, tuple[str, str, Any]] = {}
    first_row = row = skip_rows
    with open_file() as handle:
        records: Iterator[bytes | tuple[dict[str, Any], tuple[str, str, Any] | None]] = (
            _json_records(handle) if fmt == "jsonl" else _csv_records(handle, fmt, checker, file_index)
        )
        for index, record in enumerate(records):
            if index < skip_rows:
                continue
            if limit is not None and row >= limit:
                break
            # A JSON line is parsed here, after the skip; a CSV record arrives parsed.
            values, problem = _parse_json_line(record, checker) if isinstance(record, bytes) else record
            if problem is not None:
                preset[len(rows)] = problem
            rows.append(values)
            row += 1
            if len(rows) == CHUNK_ROWS:
                yield checker.check(_rows_table(rows, checker), file_index, first_row, preset)
                rows, preset, first_row = [], {}, row
    if rows:
        yield checker.check(_rows_table(rows, checker), file_index, first_row, preset)
    elif row == 0:
        raise checker.file_error(file_index, "the file holds no rows", "remove it from the data, or re-export it")


def _rows_table(rows: list[dict[str, Any]], checker: RowChecker) -> pa.Table:
    """Parsed rows as a table: texts and ids as strings, labels as text (the checker parses them)."""
    columns = {}
    for canonical in checker.file_columns:
        columns[canonical] = pa.array([r.get(canonical) for r in rows], type=pa.string())
    return pa.table(columns)


def _json_records(handle: Any) -> Iterator[bytes]:
    """Non-blank lines of a JSON Lines file (blank lines are not rows, as for pyarrow)."""
    for line in _lines(handle):
        if line.strip():
            yield line


def _lines(handle: Any) -> Iterator[bytes]:
    buffered = io.BufferedReader(_RawAdapter(handle), buffer_size=1 << 20)
    first = buffered.readline()
    if first:
        yield first.removeprefix(BOM)
        yield from buffered


class _RawAdapter(io.RawIOBase):
    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._handle.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _shown(text: str) -> str:
    """The start of a line as a message can show it: characters that do not print (NUL bytes,
    undecodable bytes) as escapes, and a word on what a line with NUL bytes usually is."""
    start = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text.strip()[:60])
    return start + ("; NUL bytes: is the line UTF-16?" if "\x00" in text else "")


def _parse_json_line(line: bytes, checker: RowChecker) -> tuple[dict[str, Any], tuple[str, str, Any] | None]:
    """(canonical values as strings or None, a problem the checker cannot see in them)."""
    text = line.decode("utf-8", "surrogateescape")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        return {}, ("malformed_row", "sentence_0", f"{_shown(text)} ({err.msg})")
    if not isinstance(record, dict):
        return {}, ("malformed_row", "sentence_0", _shown(text))
    values: dict[str, Any] = {}
    problem = None
    for canonical, column in checker.file_columns.items():
        value = record.get(column)
        if value is None:
            values[canonical] = None
        elif isinstance(value, str):
            if any("\udc80" <= ch <= "\udcff" for ch in value):
                problem = problem or ("undecodable_text", canonical, value.encode("utf-8", "surrogateescape"))
                values[canonical] = None
            else:
                values[canonical] = value
        elif canonical in checker.shape.text_columns:
            problem = problem or ("not_text", canonical, value)
            values[canonical] = None
        elif isinstance(value, bool):
            values[canonical] = str(value).lower()  # not a number: the checker names it
        else:
            values[canonical] = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return values, problem


def _csv_records(
    handle: Any, fmt: str, checker: RowChecker, file_index: int
) -> Iterator[tuple[dict[str, Any], tuple[str, str, Any] | None]]:
    # utf-8-sig: a byte-order mark before the header is dropped, as on the pyarrow path.
    text = io.TextIOWrapper(
        io.BufferedReader(_RawAdapter(handle)), encoding="utf-8-sig", errors="surrogateescape", newline=""
    )
    reader = csv.reader(text, delimiter="\t", quoting=csv.QUOTE_NONE) if fmt == "tsv" else csv.reader(text, strict=True)
    header = next(reader, None)
    if header is None:
        raise checker.file_error(file_index, "the file holds no rows", "remove it from the data")
    positions = {}
    for canonical, column in checker.file_columns.items():
        if column not in header:
            raise checker.missing_column(file_index, canonical, header)
        positions[canonical] = header.index(column)
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield {}, ("malformed_row", "sentence_0", f"line {reader.line_num}: {err}")
            continue
        if not fields:
            continue  # a blank line is no row, as for pyarrow (a trailing one ends many exports)
        if len(fields) != len(header):
            yield {}, ("malformed_row", "sentence_0", f"{len(fields)} fields, the header has {len(header)}")
            continue
        values: dict[str, Any] = {}
        problem = None
        for canonical, position in positions.items():
            text_value = fields[position]
            if any("\udc80" <= ch <= "\udcff" for ch in text_value):
                problem = problem or ("undecodable_text", canonical, text_value.encode("utf-8", "surrogateescape"))
                values[canonical] = None
            else:
                values[canonical] = text_value
        yield values, problem


def shuffle_rows(chunks: Iterator[pa.Table], rng: np.random.Generator, buffer_rows: int) -> Iterator[pa.Table]:
    """The rows of ``chunks`` in a random order, ``buffer_rows`` at a time: a file of at most
    that many rows comes out wholly permuted, a longer one permuted block by block.

    Why by hand: Ray Data shuffles the order of files (``FileShuffleConfig``) and the workers
    shuffle within windows of a few thousand rows, so a file sorted by source, label or query
    (the STS Benchmark train split is 2,000 captions, then 450 forum posts, then 3,299 news
    pairs) would reach the model one kind at a time. Ray Data's row shuffles
    (``random_shuffle``, ``randomize_block_order``) are all-to-all steps that hold the whole
    dataset before the first row leaves; this holds one buffer per read task."""
    pending: list[pa.Table] = []
    rows = 0
    for chunk in chunks:
        pending.append(chunk)
        rows += chunk.num_rows
        if rows >= buffer_rows:
            yield from _permuted(pending, rng)
            pending, rows = [], 0
    if pending:
        yield from _permuted(pending, rng)


def _permuted(chunks: list[pa.Table], rng: np.random.Generator) -> Iterator[pa.Table]:
    table = pa.concat_tables(chunks)
    table = table.take(pa.array(rng.permutation(table.num_rows)))
    for start in range(0, table.num_rows, CHUNK_ROWS):
        yield table.slice(start, CHUNK_ROWS)


def peek_columns(open_file: Opener, fmt: str) -> list[str] | None:
    """The column names of a file, from its schema, header or first record (None: unreadable; the
    reader names the problem when it reads the file)."""
    try:
        with open_file() as handle:
            if fmt == "parquet":
                import pyarrow.parquet as pq

                return list(pq.ParquetFile(handle).schema_arrow.names)
            if fmt == "arrow":
                return list(pa.ipc.open_stream(handle).schema.names)
            buffered = io.BufferedReader(_RawAdapter(handle), buffer_size=1 << 20)
            head = _read_head(buffered).removeprefix(BOM)
    except (OSError, pa.ArrowException):
        return None
    return _header_columns(head, fmt)


# ---------------------------------------------------------------------------------------------
# Opening files


def open_with(filesystem: Any, path: str, fmt: str) -> Opener:
    """An opener for ``path`` on ``filesystem``: random access for Parquet (its footer comes
    first), a stream for text files."""
    if fmt == "parquet":
        return lambda: filesystem.open_input_file(path)
    return lambda: filesystem.open_input_stream(path)


def open_local_or_uri(path: str, fmt: str) -> Opener:
    """An opener for one file on the driver (local path or any URI pyarrow reads)."""
    import pyarrow.fs as pafs

    if path.startswith("hf://"):  # a file of a dataset on the Hugging Face hub
        filesystem, inner = hub_filesystem(), path.removeprefix("hf://")
    elif "://" in path and not path.startswith("file://"):
        filesystem, inner = pafs.FileSystem.from_uri(path)
    else:
        filesystem, inner = pafs.LocalFileSystem(), path.removeprefix("file://")
    return open_with(filesystem, inner, fmt)
