"""Bad input: every case fails with the file, the row, the column, the value and the fix.

Most cases fail in the driver's check of each file's first rows, before Ray starts (no Ray in
these tests). Rows beyond that sample are checked as Ray Data reads them: a cheap Ray Data pass
shows it (the count pass of text files, the stream of Parquet files), and one training run shows
that such an error ends the run at once instead of being retried.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny import synthetic_pairs, write_jsonl, write_parquet

from rerank_ray.config import Config
from rerank_ray.data import files, stream
from rerank_ray.errors import DataError, clear_message
from rerank_ray.run.driver import inspect_data

SKIP_HINT = "data.on_bad_row=skip"


def make_config(model: Path, train: Path | list[Path], evaluation: Path | None = None, **sections) -> Config:
    raw = {
        "model": {"name_or_path": str(model)},
        "data": {"train": [str(p) for p in (train if isinstance(train, list) else [train])]},
    }
    if evaluation is not None:
        raw["data"]["eval"] = [str(evaluation)]
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return Config.from_dict(raw)


def rows_with(n: int = 30, **changes) -> list[dict]:
    """Synthetic pairs; ``changes`` maps "row<i>_<column>" to a new value (0-based row)."""
    rows = synthetic_pairs(n, seed=5)
    for key, value in changes.items():
        index, column = key.removeprefix("row").split("_", 1)
        rows[int(index)][column] = value
    return rows


def write_csv(rows: list[dict], path: Path, delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def error_of(config: Config) -> str:
    with pytest.raises(DataError) as caught:
        inspect_data(config)
    return str(caught.value)


def assert_names(message: str, *parts: str) -> None:
    for part in parts:
        assert part in message, f"{part!r} not in: {message}"


# ---------------------------------------------------------------------------------------------
# Row-level problems, caught on the sample before Ray starts


@pytest.mark.parametrize(
    ("fmt", "changes", "expected"),
    [
        ("jsonl", {"row4_sentence_1": None}, ("row 5", "'sentence_1'", "holds null", "[null_text]")),
        ("jsonl", {"row6_sentence_0": "   "}, ("row 7", "'sentence_0'", "holds '   '", "[empty_text]")),
        ("csv", {"row2_sentence_1": ""}, ("row 3", "'sentence_1'", "[empty_text]")),
        ("jsonl", {"row8_label": "abc"}, ("row 9", "'label'", "holds 'abc'", "[non_numeric_label]", "as numbers")),
        ("csv", {"row9_label": "high"}, ("row 10", "holds 'high'", "[non_numeric_label]")),
        ("jsonl", {"row3_label": None}, ("row 4", "'label'", "[missing_label]")),
        ("jsonl", {"row3_label": float("nan")}, ("row 4", "[non_numeric_label]")),
        ("jsonl", {"row7_sentence_0": 17}, ("row 8", "'sentence_0'", "holds 17", "[not_text]")),
        (
            "jsonl",
            {"row7_label": 3.0},
            (
                "row 8",
                "holds 3.0",
                "[label_out_of_range]",
                "[0, 1] for train.loss BinaryCrossEntropyLoss",
                "data.label_scale",
            ),
        ),
        ("parquet", {"row11_label": -1.0}, ("row 12", "holds -1.0", "[label_out_of_range]")),
        ("parquet", {"row2_sentence_0": None}, ("row 3", "holds null", "[null_text]")),
    ],
    ids=[
        "null-text",
        "blank-text",
        "csv-empty-text",
        "json-label-text",
        "csv-label-text",
        "missing-label",
        "nan-label",
        "number-as-text",
        "label-above-1-for-bce",
        "parquet-label-below-0",
        "parquet-null-text",
    ],
)
def test_bad_row_names_file_row_column_value_and_fix(tiny_bert, tmp_path, fmt, changes, expected):
    rows = rows_with(**changes)
    path = tmp_path / f"train.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        write_csv(rows, path)
    else:
        write_parquet(rows, path)
    message = error_of(make_config(tiny_bert, path))
    assert_names(message, "data.train", str(path), "Fix:", SKIP_HINT, *expected)


def test_mapped_column_is_named_as_in_the_file(tiny_bert, tmp_path):
    rows = [{"query": r["sentence_0"], "doc": r["sentence_1"], "score": r["label"]} for r in rows_with()]
    rows[3]["score"] = 5.0
    path = write_jsonl(rows, tmp_path / "mapped.jsonl")
    columns = {"sentence_0": "query", "sentence_1": "doc", "label": "score"}
    message = error_of(make_config(tiny_bert, path, data={"columns": columns}))
    assert_names(message, "row 4", "column 'score' (label)", "holds 5.0")
    # With the scale a 0-5 score needs, the same file passes.
    inspect_data(make_config(tiny_bert, path, data={"columns": columns, "label_scale": 0.2}))


def test_graded_eval_labels_with_binary_evaluator(tiny_bert, tmp_path):
    train = write_jsonl(rows_with(), tmp_path / "train.jsonl")
    evaluation = write_jsonl(rows_with(row2_label=0.6), tmp_path / "eval.jsonl")
    message = error_of(make_config(tiny_bert, train, evaluation, eval={"kind": "binary"}))
    assert_names(message, "data.eval", str(evaluation), "row 3", "holds 0.6", "0 or 1 for eval.kind binary")
    assert_names(message, "eval.kind correlation")
    # Graded labels are what eval.kind correlation expects.
    inspect_data(make_config(tiny_bert, train, evaluation, eval={"kind": "correlation"}))


def test_undecodable_text_in_jsonl_and_csv(tiny_bert, tmp_path):
    lines = write_jsonl(rows_with(), tmp_path / "a.jsonl").read_bytes().splitlines(keepends=True)
    lines[10] = lines[10].replace(b'"sentence_1": "', b'"sentence_1": "\xff\xfe')
    bad_json = tmp_path / "latin.jsonl"
    bad_json.write_bytes(b"".join(lines))
    message = error_of(make_config(tiny_bert, bad_json))
    assert_names(message, str(bad_json), "row 11", "'sentence_1'", "b'\\xff\\xfe", "[undecodable_text]", "UTF-8")

    lines = write_csv(rows_with(), tmp_path / "a.csv").read_bytes().splitlines(keepends=True)
    lines[4] = b"caf\xe9" + lines[4][3:]  # latin-1 bytes in the first column of row 4
    bad_csv = tmp_path / "latin.csv"
    bad_csv.write_bytes(b"".join(lines))
    message = error_of(make_config(tiny_bert, bad_csv))
    assert_names(message, str(bad_csv), "row 4", "'sentence_0'", "\\xe9", "[undecodable_text]")


def test_malformed_lines(tiny_bert, tmp_path):
    lines = write_jsonl(rows_with(), tmp_path / "a.jsonl").read_text().splitlines(keepends=True)
    lines[12] = '{"sentence_0": "red", "sentence_1": oops, "label": 1}\n'
    broken = tmp_path / "broken.jsonl"
    broken.write_text("".join(lines))
    assert_names(error_of(make_config(tiny_bert, broken)), str(broken), "row 13 cannot be parsed", "[malformed_row]")

    lines = write_csv(rows_with(), tmp_path / "a.csv").read_text().splitlines(keepends=True)
    lines[6] = lines[6].rstrip("\r\n") + ",surplus\r\n"
    extra = tmp_path / "extra.csv"
    extra.write_text("".join(lines))
    message = error_of(make_config(tiny_bert, extra))
    assert_names(message, str(extra), "row 6 cannot be parsed", "5 fields, the header has 4", "[malformed_row]")


# ---------------------------------------------------------------------------------------------
# File-level problems: always an error, whatever data.on_bad_row says


@pytest.mark.parametrize("on_bad_row", ["error", "skip"])
def test_empty_files(tiny_bert, tmp_path, on_bad_row):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    message = error_of(make_config(tiny_bert, empty, data={"on_bad_row": on_bad_row}))
    assert_names(message, str(empty), "the file is empty (0 bytes)")
    header_only = tmp_path / "header.csv"
    header_only.write_text("sentence_0,sentence_1,label\n")
    message = error_of(make_config(tiny_bert, header_only, data={"on_bad_row": on_bad_row}))
    assert_names(message, str(header_only), "holds no rows")
    no_rows = tmp_path / "none.parquet"
    pq.write_table(
        pa.table(
            {
                "sentence_0": pa.array([], pa.string()),
                "sentence_1": pa.array([], pa.string()),
                "label": pa.array([], pa.float64()),
            }
        ),
        no_rows,
    )
    assert_names(
        error_of(make_config(tiny_bert, no_rows, data={"on_bad_row": on_bad_row})), str(no_rows), "holds no rows"
    )


def test_truncated_and_corrupt_parquet(tiny_bert, tmp_path):
    whole = write_parquet(synthetic_pairs(50), tmp_path / "whole.parquet").read_bytes()
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(whole[: len(whole) // 2])
    message = error_of(make_config(tiny_bert, truncated))
    assert_names(message, str(truncated), "cannot be read as Parquet", "truncated", "re-export")

    corrupt = tmp_path / "corrupt.parquet"
    pq.write_table(pa.Table.from_pylist(synthetic_pairs(3000)), corrupt, row_group_size=1000)
    damaged = bytearray(corrupt.read_bytes())
    start = pq.ParquetFile(corrupt).metadata.row_group(0).column(1).data_page_offset
    for i in range(start + 20, start + 200):
        damaged[i] = (damaged[i] * 7 + 13) % 256
    corrupt.write_bytes(bytes(damaged))
    message = error_of(make_config(tiny_bert, corrupt))
    assert_names(message, str(corrupt), "row group 0 (rows 1..1000) cannot be read", "corrupt or truncated")

    # Found by benchmarks/fuzz_inputs.py: one flipped bit in a page header, and pyarrow decodes
    # the row group to no rows without an error; the epoch planned on the footer's count used to
    # end in "the shard lost rows" after three restarts.
    silent = tmp_path / "silent.parquet"
    pq.write_table(pa.Table.from_pylist(synthetic_pairs(1200, seed=3)), silent, row_group_size=400)
    damaged = bytearray(silent.read_bytes())
    chunk = pq.ParquetFile(silent).metadata.row_group(2).column(2)  # label, a column the run reads
    damaged[(chunk.dictionary_page_offset or chunk.data_page_offset) + 1] ^= 0b10
    silent.write_bytes(bytes(damaged))
    assert sum(b.num_rows for b in pq.ParquetFile(silent).iter_batches(row_groups=[2])) == 0  # pyarrow says nothing
    message = error_of(make_config(tiny_bert, silent))
    assert_names(
        message, str(silent), "row group 2 (rows 801..1200) decodes to 0 rows where the file's footer says 400"
    )


def test_shards_whose_schemas_disagree(tiny_bert, tmp_path):
    folder = tmp_path / "shards"
    write_parquet(synthetic_pairs(20, seed=1), folder / "part-0.parquet")
    write_parquet(
        [{**r, "sentence_0": i} for i, r in enumerate(synthetic_pairs(20, seed=2))], folder / "part-1.parquet"
    )
    message = error_of(make_config(tiny_bert, folder))
    assert_names(
        message,
        str(folder / "part-1.parquet"),
        "column 'sentence_0' (for sentence_0) holds int64, not text",
        f"while {folder / 'part-0.parquet'} holds string",
        "schemas disagree",
    )
    renamed = tmp_path / "renamed"
    write_parquet(synthetic_pairs(20, seed=1), renamed / "part-0.parquet")
    write_parquet([{"text": r["sentence_0"], **r} for r in synthetic_pairs(20, seed=2)], renamed / "part-1.parquet")
    write_parquet(
        [{"query": r["sentence_0"], "sentence_1": r["sentence_1"], "label": r["label"]} for r in synthetic_pairs(5)],
        renamed / "part-2.parquet",
    )
    message = error_of(make_config(tiny_bert, renamed))
    assert_names(message, "column 'sentence_0' (for sentence_0) is missing in", "part-2.parquet", "['query'")


def test_skip_mode_counts_the_sample_instead_of_failing(tiny_bert, tmp_path, capsys):
    rows = rows_with(row1_sentence_0=None, row2_label=7.0, row3_label="x", row4_sentence_1=" ")
    path = write_jsonl(rows, tmp_path / "train.jsonl")
    splits = inspect_data(make_config(tiny_bert, path, data={"on_bad_row": "skip"}))
    assert splits["train"].sample_skipped == {
        "null_text": 1,
        "empty_text": 1,
        "non_numeric_label": 1,
        "label_out_of_range": 1,
    }
    assert "will be skipped" in capsys.readouterr().out


def test_checked_rows_keep_their_place_and_reason(tiny_bert, tmp_path):
    """What leaves the reader: bad rows stay as placeholders (empty texts, label 0, a reason code),
    every row carries its file index and row number as its key."""
    from rerank_ray.data import reading
    from rerank_ray.data.checks import CODES
    from rerank_ray.data.position import key_location

    rows = rows_with(row2_label=7.0, row5_sentence_0="")
    path = write_jsonl(rows, tmp_path / "train.jsonl")
    config = make_config(tiny_bert, path, data={"on_bad_row": "skip", "label_scale": 1.0})
    checker = files.make_checker(config, "train", [str(path)])
    (table,) = list(reading.read_file(reading.open_local_or_uri(str(path), "jsonl"), "jsonl", 3, checker))
    assert table.num_rows == 30
    assert [key_location(k) for k in table.column("row_key").to_pylist()] == [(3, i) for i in range(30)]
    skip = table.column("skip").to_pylist()
    assert skip[2] == CODES["label_out_of_range"] and skip[5] == CODES["empty_text"]
    assert sum(1 for s in skip if s) == 2
    assert table.column("sentence_0")[2].as_py() == "" and table.column("label")[2].as_py() == 0.0
    assert table.column("sentence_0")[0].as_py() == rows[0]["sentence_0"]


# ---------------------------------------------------------------------------------------------
# Rows beyond the sample: checked as Ray Data streams them


@pytest.mark.ray
def test_bad_rows_beyond_the_sample_fail_in_the_ray_data_pass(ray_local, tiny_bert, tmp_path, capfd):
    from rerank_ray import console
    from rerank_ray.errors import clear_error as input_error

    console.quiet_ray_logs()  # what the command line does before Ray starts
    rows = synthetic_pairs(1600, seed=3)
    rows[1499]["label"] = "n/a"
    text = write_jsonl(rows, tmp_path / "late.jsonl")
    config = make_config(tiny_bert, text)
    split = inspect_data(config)["train"]  # the first 1000 rows are fine
    capfd.readouterr()
    with pytest.raises(Exception) as caught:
        stream.open_pairs(split, config.data, seed=None)  # the count pass of a text file checks every row
    assert_names(str(input_error(caught.value)), str(text), "row 1500", "holds 'n/a'", "[non_numeric_label]")
    # Found by benchmarks/fuzz_inputs.py: Ray Data logged the error with its traceback (and its
    # advice to open an issue with Ray) on the driver's console before the command printed the
    # message; the message alone is shown now (the traceback stays in Ray Data's log file).
    printed = "".join(capfd.readouterr())
    assert "Traceback" not in printed and "open an issue" not in printed, printed[-3000:]

    # Found by benchmarks/fuzz_inputs.py: a line in UTF-16 amid UTF-8 made a message Ray could not
    # encode, which killed the read task's worker as a system error, retried for ever (a hang).
    lines = text.read_bytes().split(b"\n")
    lines[1399] = lines[1399].decode("utf-8").encode("utf-16")
    text.write_bytes(b"\n".join(lines))
    with pytest.raises(Exception) as caught:
        stream.open_pairs(inspect_data(config)["train"], config.data, seed=None)
    assert_names(
        str(input_error(caught.value)), str(text), "row 1400 cannot be parsed", "\\udcff\\udcfe{", "[malformed_row]"
    )

    rows = synthetic_pairs(1600, seed=3)
    rows[1199]["sentence_1"] = None
    parquet = write_parquet(rows, tmp_path / "late.parquet")
    config = make_config(tiny_bert, parquet)
    split = inspect_data(config)["train"]
    source = stream.open_pairs(split, config.data, seed=None)  # Parquet: the footers' count, no pass
    assert source.num_rows == 1600
    with pytest.raises(Exception) as caught:
        source.dataset.materialize()
    assert_names(str(input_error(caught.value)), str(parquet), "row 1200", "'sentence_1'", "[null_text]")

    # With on_bad_row: skip the stream keeps the row count and marks the bad row.
    config = make_config(tiny_bert, parquet, data={"on_bad_row": "skip"})
    source = stream.open_pairs(inspect_data(config)["train"], config.data, seed=None)
    skips = [r["skip"] for r in source.dataset.select_columns(["skip"]).take_all()]
    assert len(skips) == 1600 and sum(1 for s in skips if s) == 1


@pytest.mark.ray
def test_a_bad_row_in_the_stream_ends_the_run_without_retries(ray_local, tiny_bert, tmp_path):
    """A bad row that only the stream sees (beyond the sample of a Parquet file) stops training
    with the DataError; Ray Train does not restart the workers for it (run.max_failures is 2)."""
    from conftest import base_config

    rows = synthetic_pairs(1400, seed=4)
    rows[1300]["label"] = 2.5
    parquet = write_parquet(rows, tmp_path / "train.parquet")
    raw = base_config(
        tiny_bert,
        parquet,
        None,
        tmp_path / "runs",
        train={"epochs": 1, "per_device_batch_size": 32},
        run={"storage_path": str(tmp_path / "runs"), "name": "bad", "audit": True, "max_failures": 2},
    )
    from rerank_ray.run.driver import train

    with pytest.raises(DataError) as caught:
        train(Config.from_dict(raw))
    assert_names(str(caught.value), str(parquet), "row 1301", "holds 2.5", "[label_out_of_range]")
    # What the command line prints: the message alone, without Ray Data's advice to retry.
    shown = clear_message(caught.value)
    assert shown.startswith(f"data.train: {parquet}, row 1301") and "[label_out_of_range]" in shown
    assert "attempts" not in shown and "retried_map_errors" not in shown and "\n" not in shown, shown
    sessions = [
        json.loads(line)
        for line in (tmp_path / "runs" / "bad" / "audit" / "rank0.jsonl").read_text().splitlines()
        if '"session"' in line and '"kind": "session"' in line
    ]
    assert len(sessions) == 1, "the worker group was restarted for a data error"
