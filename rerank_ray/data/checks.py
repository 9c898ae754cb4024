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

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rerank_ray.config import Config
from rerank_ray.data.position import row_keys
from rerank_ray.errors import DataError

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
}
_FIX = {
    "null_text": "fill in or remove the row (if the whole column is missing from this file, map it with data.columns)",
    "empty_text": "fill in or remove the row",
    "undecodable_text": "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
    "not_text": "write the texts as strings",
    "missing_label": "fill in the label or remove the row",
    "non_numeric_label": "write labels as numbers (1 / 0, or a score such as 0.8)",
    "malformed_row": "repair the line (an unbalanced quote, a missing or extra delimiter, broken JSON)",
}
SKIP_HINT = "or set data.on_bad_row=skip to train without such rows (they are counted in metrics.json)"


# ---------------------------------------------------------------------------------------------
# Label rules


@dataclass(frozen=True)
class LabelRule:
    """What a label of one split must be, after ``data.label_scale``."""

    description: str
    low: float | None = None
    high: float | None = None
    integer: bool = False
    fix: str = ""

    def violations(self, labels: np.ndarray) -> np.ndarray:
        bad = np.zeros(len(labels), dtype=bool)
        if self.low is not None:
            bad |= labels < self.low
        if self.high is not None:
            bad |= labels > self.high
        if self.integer:
            bad |= labels != np.round(labels)
        return bad


def label_rule(config: Config, split: str) -> LabelRule:
    """Training labels must suit the loss; evaluation labels must suit the evaluator kind."""
    scale = f" after data.label_scale {config.data.label_scale:g}" if config.data.label_scale != 1 else ""
    classes = config.model.num_labels
    if split == "train":
        loss = config.train.loss
        if loss == "BinaryCrossEntropyLoss":
            return LabelRule(
                f"a number in [0, 1]{scale} for train.loss BinaryCrossEntropyLoss",
                0.0,
                1.0,
                fix="scale the labels into [0, 1] with data.label_scale (0.2 for 0-5 scores), "
                "or use train.loss MSELoss for unbounded scores",
            )
        if loss == "CrossEntropyLoss":
            return LabelRule(
                f"a class id 0..{classes - 1}{scale} for train.loss CrossEntropyLoss (model.num_labels {classes})",
                0.0,
                classes - 1.0,
                integer=True,
                fix="write class ids 0..N-1 and set model.num_labels to the number of classes",
            )
        return LabelRule(f"a finite number for train.loss {loss}")
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
        return LabelRule(
            f"a class id 0..{classes - 1}{scale} for {setting} classification ({classes} classes)",
            0.0,
            classes - 1.0,
            integer=True,
            fix="write class ids 0..N-1 and set model.num_labels to the number of classes",
        )
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

    # -------------------------------------------------------------- file-level problems
    def file_error(self, file_index: int, problem: str, fix: str) -> DataError:
        return DataError(f"{self.what}: {self.files[file_index]}: {problem}. Fix: {fix}")

    def missing_column(self, file_index: int, canonical: str, present: list[str] | None) -> DataError:
        column = self.file_columns[canonical]
        hint = self.column_fixes.get(canonical) or (
            f"map it with data.columns.{canonical}=<your column>"
            if canonical in ("sentence_0", "sentence_1", "label")
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
            ok = is_text_type(arrow_type) if canonical in TEXT_COLUMNS else is_label_type(arrow_type)
            if ok:
                continue
            want = "text" if canonical in TEXT_COLUMNS else "numbers"
            reference = self.reference.get(canonical)
            other = (
                f" while {reference[1]} holds {reference[0]}"
                if reference and reference[1] != self.files[file_index]
                else ""
            )
            raise self.file_error(
                file_index,
                f"column {column!r} (for {canonical}) holds {arrow_type}, not {want}{other}: the files' schemas disagree",
                f"write {column!r} as {'strings' if want == 'text' else 'numbers'} in every file",
            )

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

        texts = {name: self._check_text(raw.column(name), name, mark) for name in TEXT_COLUMNS}
        labels = self._check_label(raw.column("label"), mark)

        if self.on_bad_row == "error" and first:
            raise self.row_error(file_index, first[min(first)])
        bad = pa.array(codes > 0)
        columns: dict[str, pa.Array] = {
            name: pc.if_else(bad, pa.scalar("", pa.string()), text) for name, text in texts.items()
        }
        columns["label"] = pa.array(np.where(codes > 0, 0.0, labels).astype(np.float32))
        columns["skip"] = pa.array(codes)
        columns["row_key"] = pa.array(row_keys(file_index, first_row, n))
        for canonical in self.file_columns:  # pair_id, and any other column a run reads, as text
            if canonical not in (*TEXT_COLUMNS, "label"):
                columns[canonical] = _as_string(raw.column(canonical))
        return pa.table(columns)

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
