"""What a bad pair row is, the message that names it, and the reason it is counted when skipped.

The reader (:mod:`rerank_ray.data.reading`) passes every chunk of rows it parses through a
:class:`RowChecker` while it still knows the file and the row numbers, both on the driver (a
sample of every file, before Ray starts) and in the Ray Data read tasks (every row, as it
streams). So a bad value fails in seconds when it is near the top of a file, and otherwise when
it is read, in both cases with the file, the row, the column, the value and the fix.

With ``data.on_bad_row: skip`` a bad row is not dropped from the stream: it stays as a
placeholder (empty texts, weight 0, its reason code in the ``skip`` column). The number of rows
per epoch therefore stays what the driver counted before training (Parquet footers, or the count
pass of text files), every worker runs the planned number of steps, and the workers count the
placeholders by reason for the log and ``metrics.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rerank_ray.config import Config
from rerank_ray.data.position import row_keys
from rerank_ray.data.shapes import PAIRS, Shape
from rerank_ray.errors import DataError
from rerank_ray.losses import CLASS_ID, LabelRule, train_label_rule

#: Why a row was skipped; its code in the ``skip`` column is the index + 1 (0: a good row).
REASONS = (
    "null_text",
    "empty_text",
    "undecodable_text",
    "not_text",
    "missing_label",
    "non_numeric_label",
    "label_out_of_range",
    "malformed_row",
    # Grouped shapes (rerank_ray/data/shapes.py): appended, so older checkpoints' tallies keep their codes.
    "not_a_list",
    "empty_list",
    "list_lengths_differ",
    "no_order",
)
CODES = {name: i + 1 for i, name in enumerate(REASONS)}
TEXT_COLUMNS = ("sentence_0", "sentence_1")

_WHAT = {
    "null_text": "is empty (null)",
    "empty_text": "is an empty string",
    "undecodable_text": "is not valid UTF-8 text",
    "not_text": "is not text",
    "missing_label": "has no label",
    "non_numeric_label": "is not a finite number",
    "label_out_of_range": "is out of range",
    "malformed_row": "cannot be parsed",
    "not_a_list": "is not a list",
    "empty_list": "is an empty list",
    "list_lengths_differ": "has a different number of entries than the row's documents",
    "no_order": "holds labels that are all equal: a list needs two different labels to rank",
}
_FIX = {
    "null_text": "fill in or remove the row (if the whole column is missing from this file, map it with data.columns)",
    "empty_text": "fill in or remove the row",
    "undecodable_text": "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
    "not_text": "write the texts as strings",
    "missing_label": "fill in the label or remove the row",
    "non_numeric_label": "write labels as numbers (1 / 0, or a score such as 0.8)",
    "malformed_row": "repair the line (an unbalanced quote, a missing or extra delimiter, broken JSON)",
    "not_a_list": "write a list (a JSON array, or a Parquet list column)",
    "empty_list": "give the query at least two documents, or remove the row",
    "list_lengths_differ": "give one label per document (for an n-tuple's scores: the positive's and each negative's)",
    "no_order": "judge at least one document differently (a positive among negatives), or remove the row",
}
SKIP_HINT = "or set data.on_bad_row=skip to train without such rows (they are counted in metrics.json)"


# ---------------------------------------------------------------------------------------------
# Label rules


def label_rule(config: Config, split: str) -> LabelRule:
    """Training labels must suit the loss; evaluation labels must suit the evaluator kind."""
    scale = f" after data.label_scale {config.data.label_scale:g}" if config.data.label_scale != 1 else ""
    classes = config.model.num_labels
    if split == "train":
        # The loss table holds each loss's rule as data (rerank_ray.losses).
        return train_label_rule(config.train.loss, classes, scale)
    return eval_label_rule(config.eval.kind, classes, scale)


def eval_label_rule(kind: str, classes: int, scale: str = "", setting: str = "eval.kind") -> LabelRule:
    """What an evaluation label must be for evaluator ``kind``. ``scale`` (how the labels were
    scaled) and ``setting`` (where the kind was chosen) are for the message: training runs and
    ``rerank-ray eval`` share the rule."""
    if kind == "binary":
        return LabelRule(
            f"0 or 1{scale} for {setting} binary",
            0.0,
            1.0,
            integer=True,
            fix=f"use {setting} correlation for graded labels, or turn the labels into 0 / 1",
        )
    if kind == "classification":
        return CLASS_ID.for_head(classes, f"{scale} for {setting} classification")
    return LabelRule(f"a finite number for {setting} {kind}")


# ---------------------------------------------------------------------------------------------
# Checking rows


@dataclass(frozen=True)
class BadRow:
    """One bad row, as an error message names it."""

    row: int
    """0-based row within its file (rows counted in file order; a CSV header and blank lines are
    not rows)."""
    reason: str
    column: str
    """Canonical column name."""
    value: Any


@dataclass
class RowChecker:
    """The checks of one split, carried into every Ray Data read task."""

    what: str
    """``data.train`` or ``data.eval``, for messages."""
    files: list[str]
    """File index -> path as the user wrote it."""
    file_columns: dict[str, str]
    """Canonical name -> the column name in the files."""
    rule: LabelRule
    label_scale: float
    on_bad_row: str
    reference: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Canonical column -> (Arrow type, file) of the first file, to name shards that disagree."""
    column_fixes: dict[str, str] = field(default_factory=dict)
    """Canonical column -> how to name its file column, where that is not a config key (the
    flags of ``rerank-ray eval``)."""
    shape: Shape = PAIRS
    """The split's shape: which columns hold texts, lists and labels."""

    # -------------------------------------------------------------- file-level problems
    def file_error(self, file_index: int, problem: str, fix: str) -> DataError:
        return DataError(f"{self.what}: {self.files[file_index]}: {problem}. Fix: {fix}")

    def missing_column(self, file_index: int, canonical: str, present: list[str] | None) -> DataError:
        column = self.file_columns[canonical]
        hint = self.column_fixes.get(canonical) or (
            f"map it with data.columns.{canonical}=<your column>"
            if canonical in ("sentence_0", "sentence_1", "label", *self.shape.columns)
            else ("check eval.query_id_column" if canonical == "query_id" else "check data.id_column")
        )
        others = f"; the file has columns {present}" if present is not None else ""
        return DataError(
            f"{self.what}: column {column!r} (for {canonical}) is missing in {self.files[file_index]}{others}; {hint}"
        )

    def check_types(self, file_index: int, schema: pa.Schema) -> None:
        """A column whose type cannot hold what it must: the file disagrees with the others."""
        for canonical, column in self.file_columns.items():
            if canonical in ("pair_id", "query_id") or column not in schema.names:
                continue
            arrow_type = schema.field(column).type
            want = self._wanted_type(canonical)
            if _holds(want, arrow_type):
                continue
            reference = self.reference.get(canonical)
            other = (
                f" while {reference[1]} holds {reference[0]}"
                if reference and reference[1] != self.files[file_index]
                else ""
            )
            raise self.file_error(
                file_index,
                f"column {column!r} (for {canonical}) holds {arrow_type}, not {want}{other}: the files' schemas disagree",
                f"write {column!r} as {_WRITE_AS[want]} in every file",
            )

    def _wanted_type(self, canonical: str) -> str:
        if canonical in self.shape.text_columns:
            return "text"
        if canonical == "documents":
            return "a list of texts"
        if canonical == "labels" or (canonical == "label" and self.shape.grouped):
            return "a list of numbers"
        return "numbers"

    # -------------------------------------------------------------- row-level problems
    def check(
        self, raw: pa.Table, file_index: int, first_row: int, preset: dict[int, tuple[str, str, Any]] | None = None
    ) -> pa.Table:
        """Clean canonical columns for ``raw`` (rows ``first_row``.. of file ``file_index``).

        Returns ``sentence_0``, ``sentence_1`` (string; "" for a bad row), ``label`` (float32,
        scaled; 0 for a bad row), ``skip`` (int8 reason code, 0 for a good row), ``row_key``
        (int64, see :mod:`rerank_ray.data.position`) and ``pair_id`` (string) when ids are read.
        ``preset`` holds problems the parser already found (row in chunk -> reason, column, value).
        With ``on_bad_row: error`` the first bad row raises a :class:`DataError` instead.
        """
        n = raw.num_rows
        codes = np.zeros(n, dtype=np.int8)
        first: dict[int, BadRow] = {}

        def mark(mask: np.ndarray, reason: str, column: str, values: Any) -> None:
            new = mask & (codes == 0)
            if not new.any():
                return
            index = int(np.argmax(new))
            codes[new] = CODES[reason]
            if index not in first:
                first[index] = BadRow(first_row + index, reason, column, _value_at(values, index))

        for index, (reason, column, value) in (preset or {}).items():
            codes[index] = CODES[reason]
            first.setdefault(index, BadRow(first_row + index, reason, column, value))

        if self.shape.grouped:
            grouped = self._check_group(raw, codes, mark)
            if self.on_bad_row == "error" and first:
                raise self.row_error(file_index, first[min(first)])
            return self._finish(grouped, raw, codes, file_index, first_row)
        texts = {name: self._check_text(raw.column(name), name, mark) for name in TEXT_COLUMNS}
        labels = self._check_label(raw.column("label"), mark)

        if self.on_bad_row == "error" and first:
            raise self.row_error(file_index, first[min(first)])
        bad = pa.array(codes > 0)
        columns: dict[str, pa.Array] = {
            name: pc.if_else(bad, pa.scalar("", pa.string()), text) for name, text in texts.items()
        }
        columns["label"] = pa.array(np.where(codes > 0, 0.0, labels).astype(np.float32))
        return self._finish(columns, raw, codes, file_index, first_row)

    def _finish(
        self, columns: dict[str, pa.Array], raw: pa.Table, codes: np.ndarray, file_index: int, first_row: int
    ) -> pa.Table:
        n = raw.num_rows
        columns["skip"] = pa.array(codes)
        columns["row_key"] = pa.array(row_keys(file_index, first_row, n))
        for canonical in self.file_columns:  # pair_id, and any other column a run reads, as text
            if canonical not in (*TEXT_COLUMNS, "label", *self.shape.columns):
                columns[canonical] = _as_string(raw.column(canonical))
        return pa.table(columns)

    # -------------------------------------------------------------- grouped shapes
    def _check_group(self, raw: pa.Table, codes: np.ndarray, mark) -> dict[str, pa.Array]:
        """``query``, ``documents`` (list<string>) and ``labels`` (list<float32>) of grouped rows
        (:mod:`rerank_ray.data.shapes`); a bad row's lists are empty."""
        n = raw.num_rows
        texts = {name: self._check_text(raw.column(name), name, mark) for name in self.shape.text_columns}
        if self.shape.name == "list":
            documents, doc_lengths = self._text_lists(raw.column("documents"), "documents", mark)
            labels, label_lengths = self._number_lists(raw.column("labels"), "labels", mark)
            mark(doc_lengths == 0, "empty_list", "documents", _lists_shown(raw, "documents"))
            mark(label_lengths != doc_lengths, "list_lengths_differ", "labels", _lists_shown(raw, "labels"))
            mark(_all_equal(labels, label_lengths), "no_order", "labels", _lists_shown(raw, "labels"))
        else:
            columns = [texts[name] for name in self.shape.text_columns[1:]]  # positive, negatives
            k = len(columns)
            # Row-major: row i's documents are columns 0..k-1 at row i.
            order = (np.arange(k)[None, :] * n + np.arange(n)[:, None]).ravel()
            documents = pa.concat_arrays(columns).take(pa.array(order))
            doc_lengths = np.full(n, k, dtype=np.int64)
            if self.shape.has_label:
                # Teacher scores, one per document, or margins (the positive's minus each negative's).
                labels, label_lengths = self._number_lists(raw.column("label"), "label", mark)
                fits = (label_lengths == k) | ((label_lengths == k - 1) & (k > 1))
                mark(~fits, "list_lengths_differ", "label", _lists_shown(raw, "label"))
            else:  # the positive is the first document
                labels = np.tile(np.array([1.0] + [0.0] * (k - 1)), n)
                label_lengths = doc_lengths
        bad = codes > 0
        return {
            "query": pc.if_else(pa.array(bad), pa.scalar("", pa.string()), texts["query"]),
            "documents": _drop_rows(documents, doc_lengths, bad, pa.string()),
            "labels": _drop_rows(pa.array(labels * self.label_scale, pa.float32()), label_lengths, bad, pa.float32()),
        }

    def _text_lists(self, column: pa.ChunkedArray, name: str, mark) -> tuple[pa.Array, np.ndarray]:
        """(flat checked texts, texts per row) of a list-of-texts column."""
        values, lengths, parents = self._flatten(column, name, mark, text=True)
        row_mark = _row_marker(mark, parents, len(lengths))
        return self._check_text(values, name, row_mark), lengths

    def _number_lists(self, column: pa.ChunkedArray, name: str, mark) -> tuple[np.ndarray, np.ndarray]:
        """(flat numbers as float64, numbers per row) of a list-of-numbers column; a non-finite
        number marks its row."""
        values, lengths, parents = self._flatten(column, name, mark, text=False)
        row_mark = _row_marker(mark, parents, len(lengths))
        if pa.types.is_null(values.type) or len(values) == 0:
            numbers = np.zeros(len(values), dtype=np.float64)
            row_mark(np.asarray(values.is_null()) if len(values) else np.zeros(0, bool), "missing_label", name, values)
            return numbers, lengths
        if is_text_type(values.type):
            numbers, missing, non_numeric = _parse_labels(values)
            row_mark(missing, "missing_label", name, values)
            row_mark(non_numeric, "non_numeric_label", name, values)
        elif pa.types.is_integer(values.type) or pa.types.is_floating(values.type) or pa.types.is_decimal(values.type):
            row_mark(np.asarray(values.is_null()), "missing_label", name, values)
            numbers = values.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)
        else:
            row_mark(np.ones(len(values), dtype=bool), "non_numeric_label", name, values)
            numbers = np.zeros(len(values), dtype=np.float64)
        row_mark(~np.isfinite(numbers), "non_numeric_label", name, values)
        return np.nan_to_num(numbers, nan=0.0, posinf=0.0, neginf=0.0), lengths

    def _flatten(self, column: pa.ChunkedArray, name: str, mark, text: bool) -> tuple[pa.Array, np.ndarray, np.ndarray]:
        """(flat values, entries per row, row of each value) of a list column, or of a text column
        holding JSON arrays (a CSV cell, or a JSON line the Python path read)."""
        array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        n = len(array)
        if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
            nulls = np.asarray(array.is_null())
            mark(nulls, "not_a_list", name, array)
            lengths = np.asarray(pc.list_value_length(array).fill_null(0), dtype=np.int64)
            values = pc.list_flatten(array)
            parents = np.asarray(pc.list_parent_indices(array), dtype=np.int64)
            return values, lengths, parents
        if is_text_type(array.type):
            parsed: list[list | None] = []
            for item in array.cast(pa.string()).to_pylist():
                try:
                    value = json.loads(item) if item is not None else None
                except ValueError:
                    value = None
                if isinstance(value, (int, float)) and not isinstance(value, bool) and not text:
                    value = [value]  # one score: a list of one
                parsed.append(value if isinstance(value, list) else None)
            mark(np.array([p is None for p in parsed], dtype=bool), "not_a_list", name, array)
            rows = [p or [] for p in parsed]
            lengths = np.array([len(r) for r in rows], dtype=np.int64)
            flat = [v for r in rows for v in r]
            if text:
                values = pa.array([v if isinstance(v, str) else None for v in flat], pa.string())
                not_text = np.array([v is not None and not isinstance(v, str) for v in flat], dtype=bool)
                _row_marker(mark, np.repeat(np.arange(n), lengths), n)(not_text, "not_text", name, flat)
            else:
                values = pa.array([None if v is None else str(v) for v in flat], pa.string())
            return values, lengths, np.repeat(np.arange(n), lengths)
        if not text and is_label_type(array.type):  # one score per row: a list of one
            return array, np.ones(n, dtype=np.int64), np.arange(n)
        mark(np.ones(n, dtype=bool), "not_a_list", name, array)
        return pa.array([], pa.string()), np.zeros(n, dtype=np.int64), np.zeros(0, dtype=np.int64)

    def _check_text(self, column: pa.ChunkedArray, name: str, mark) -> pa.Array:
        array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        n = len(array)
        if not is_text_type(array.type):
            if pa.types.is_null(array.type):
                mark(np.ones(n, dtype=bool), "null_text", name, None)
                return pa.nulls(n, pa.string())
            mark(np.asarray(array.is_valid()), "not_text", name, array)
            mark(np.ones(n, dtype=bool), "null_text", name, None)
            return pa.nulls(n, pa.string())
        if pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type):
            array = array.view(pa.string() if pa.types.is_binary(array.type) else pa.large_string())
        array = array.cast(pa.string()) if not pa.types.is_string(array.type) else array
        nulls = np.asarray(array.is_null())
        mark(nulls, "null_text", name, array)
        undecodable = _invalid_utf8(array)
        if undecodable is not None:
            raw_bytes = array.view(pa.binary())
            mark(undecodable, "undecodable_text", name, raw_bytes)
            array = pc.if_else(pa.array(undecodable), pa.scalar("x", pa.string()), array)
        lengths = pc.utf8_length(pc.utf8_trim_whitespace(array)).fill_null(1)
        mark(np.asarray(lengths) == 0, "empty_text", name, array)
        return array

    def _check_label(self, column: pa.ChunkedArray, mark) -> np.ndarray:
        array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        n = len(array)
        values = np.zeros(n, dtype=np.float64)
        missing = np.asarray(array.is_null()) if not pa.types.is_null(array.type) else np.ones(n, dtype=bool)
        if pa.types.is_null(array.type):
            mark(missing, "missing_label", "label", None)
            return values
        if pa.types.is_integer(array.type) or pa.types.is_floating(array.type) or pa.types.is_decimal(array.type):
            values = array.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)
        elif is_text_type(array.type):
            values, missing, non_numeric = _parse_labels(array)
            mark(missing, "missing_label", "label", array)
            mark(non_numeric, "non_numeric_label", "label", array)
        else:
            mark(~missing, "non_numeric_label", "label", array)
        mark(missing, "missing_label", "label", array)
        values = np.where(np.isfinite(values), values, np.nan)
        mark(np.isnan(values) & ~missing, "non_numeric_label", "label", array)
        scaled = values * self.label_scale
        with np.errstate(invalid="ignore"):
            outside = self.rule.violations(np.nan_to_num(scaled, nan=0.0)) & ~np.isnan(scaled)
        mark(outside, "label_out_of_range", "label", array)
        return np.nan_to_num(scaled, nan=0.0)

    def row_error(self, file_index: int, bad: BadRow) -> DataError:
        column = self.file_columns.get(bad.column, bad.column)
        if bad.reason == "label_out_of_range":
            problem = f"is outside what the label must be: {self.rule.description}"
            fix = self.rule.fix or "correct or remove the row"
        else:
            problem, fix = _WHAT[bad.reason], _FIX[bad.reason]
        shown = _show(bad.value)
        if bad.reason == "malformed_row":
            return DataError(
                f"{self.what}: {self.files[file_index]}, row {bad.row + 1} cannot be parsed ({bad.value}) "
                f"[malformed_row]. Fix: {fix}; {SKIP_HINT}"
            )
        return DataError(
            f"{self.what}: {self.files[file_index]}, row {bad.row + 1}: column {column!r} ({bad.column}) "
            f"holds {shown}, which {problem} [{bad.reason}]. Fix: {fix}; {SKIP_HINT}"
        )


# ---------------------------------------------------------------------------------------------
# Helpers


_WRITE_AS = {
    "text": "strings",
    "numbers": "numbers",
    "a list of texts": "a list of strings",
    "a list of numbers": "a list of numbers",
}


def _holds(want: str, arrow_type: pa.DataType) -> bool:
    """Whether a column of ``arrow_type`` can hold what ``want`` names (text holding JSON arrays
    is read as lists)."""
    if want == "text":
        return is_text_type(arrow_type)
    if want == "numbers":
        return is_label_type(arrow_type)
    if is_text_type(arrow_type) or pa.types.is_null(arrow_type):
        return True
    if want == "a list of numbers" and is_label_type(arrow_type):  # one score per row
        return True
    if not (pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)):
        return False
    inner = arrow_type.value_type
    return is_text_type(inner) or pa.types.is_null(inner) if want == "a list of texts" else is_label_type(inner)


def _row_marker(mark, parents: np.ndarray, n: int):
    """A ``mark`` for flat list values: marks the rows the flagged values belong to, showing the
    first flagged value of each."""

    def row_mark(mask: np.ndarray, reason: str, column: str, values: Any) -> None:
        flagged = np.flatnonzero(mask)
        if not len(flagged):
            return
        rows, first = np.unique(parents[flagged], return_index=True)
        shown: list[Any] = [None] * n
        for row, index in zip(rows.tolist(), flagged[first].tolist()):
            shown[row] = values[index] if isinstance(values, list) else _value_at(values, index)
        row_mask = np.zeros(n, dtype=bool)
        row_mask[rows] = True
        mark(row_mask, reason, column, shown)

    return row_mark


def _lists_shown(raw: pa.Table, column: str) -> list[Any] | None:
    return raw.column(column).to_pylist() if column in raw.column_names else None


def _all_equal(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Rows (of ``lengths`` entries each in ``values``) whose entries are all equal (a row of one included)."""
    if not len(lengths):
        return np.zeros(0, dtype=bool)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    nonempty = lengths > 0
    high = np.full(len(lengths), -np.inf)
    low = np.full(len(lengths), np.inf)
    if len(values):
        high[nonempty] = np.maximum.reduceat(values, starts[nonempty])
        low[nonempty] = np.minimum.reduceat(values, starts[nonempty])
    return nonempty & (high == low)


def _drop_rows(values: pa.Array, lengths: np.ndarray, bad: np.ndarray, value_type: pa.DataType) -> pa.Array:
    """A list array of ``values`` cut by ``lengths``, with the bad rows' lists emptied."""
    parents = np.repeat(np.arange(len(lengths)), lengths)
    keep = ~bad[parents] if len(parents) else np.zeros(0, dtype=bool)
    kept = values.filter(pa.array(keep)) if len(values) else pa.array([], value_type)
    kept_lengths = np.where(bad, 0, lengths)
    offsets = np.concatenate([[0], np.cumsum(kept_lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), kept.cast(value_type))


def is_text_type(arrow_type: pa.DataType) -> bool:
    return (
        pa.types.is_string(arrow_type)
        or pa.types.is_large_string(arrow_type)
        or pa.types.is_binary(arrow_type)
        or pa.types.is_large_binary(arrow_type)
        or getattr(pa.types, "is_string_view", lambda _: False)(arrow_type)
    )


def is_label_type(arrow_type: pa.DataType) -> bool:
    return (
        pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_decimal(arrow_type)
        or pa.types.is_null(arrow_type)
        or is_text_type(arrow_type)
    )


def _invalid_utf8(array: pa.Array) -> np.ndarray | None:
    """Rows whose bytes are not UTF-8, or None when all are (checked in C++ first)."""
    try:
        array.validate(full=True)
        return None
    except pa.ArrowInvalid:
        pass
    bad = np.zeros(len(array), dtype=bool)
    for i, value in enumerate(array.view(pa.binary()).to_pylist()):
        if value is not None:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                bad[i] = True
    return bad


def _parse_labels(array: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, missing, non-numeric) of a text label column: Arrow's cast when every value is a
    plain number, else one float() per value, so the bad one can be named."""
    text = array.cast(pa.string()) if not pa.types.is_string(array.type) else array
    try:
        values = pc.cast(text, pa.float64())
        missing = np.asarray(values.is_null())
        return values.fill_null(0.0).to_numpy(zero_copy_only=False), missing, np.zeros(len(text), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    n = len(text)
    values = np.zeros(n, dtype=np.float64)
    missing = np.zeros(n, dtype=bool)
    non_numeric = np.zeros(n, dtype=bool)
    for i, item in enumerate(text.view(pa.binary()).to_pylist()):
        if item is None or not item.strip():
            missing[i] = True
            continue
        try:
            values[i] = float(item.decode("utf-8", "replace"))
        except ValueError:
            non_numeric[i] = True
    return values, missing, non_numeric


def _as_string(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_string(array.type):
        return array
    try:
        return array.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array([None if v is None else str(v) for v in array.to_pylist()], pa.string())


def _value_at(values: Any, index: int) -> Any:
    if values is None:
        return None
    try:
        item = values[index]
        return item.as_py() if hasattr(item, "as_py") else item
    except (UnicodeDecodeError, pa.ArrowException):
        return values.view(pa.binary())[index].as_py()


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------------------------------
# Counting skipped rows


def tally(codes: np.ndarray) -> np.ndarray:
    """Counts per reason code (index 0: good rows are not counted)."""
    counts = np.bincount(np.asarray(codes, dtype=np.int64), minlength=len(REASONS) + 1)
    counts[0] = 0
    return counts


def tally_dict(counts: np.ndarray | list) -> dict[str, int]:
    return {reason: int(counts[i + 1]) for i, reason in enumerate(REASONS) if counts[i + 1]}


def describe_tally(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counts.items())
