"""Bad grouped rows (issue 14's shapes) name the file, the row, the column and the value, before Ray
starts; with data.on_bad_row=skip they stay as weight-0 placeholders, counted by reason."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny import judged_lists, tuples, write_jsonl

from rerank_ray.config import Config
from rerank_ray.data import reading
from rerank_ray.errors import DataError
from rerank_ray.run.driver import inspect_data


def _config(model: Path, train: Path, loss: str, **data) -> Config:
    return Config.from_dict(
        {"model": {"name_or_path": str(model)}, "data": {"train": [str(train)], **data}, "train": {"loss": loss}}
    )


def _lists_with(row: int, **changes) -> list[dict]:
    rows = judged_lists(8, seed=5)
    rows[row] = {**rows[row], **changes}
    return rows


@pytest.mark.parametrize(
    ("changes", "reason", "column", "shown"),
    [
        ({"labels": [1, 0]}, "list_lengths_differ", "labels", "[1.0, 0.0]"),
        ({"documents": [], "labels": []}, "empty_list", "documents", "[]"),
        ({"labels": [2, "high", 0, 1]}, "non_numeric_label", "labels", "'high'"),
        ({"documents": ["a b", None, "c d"], "labels": [1, 0, 0]}, "null_text", "documents", "null"),
        ({"documents": "one document", "labels": [1]}, "not_a_list", "documents", "'one document'"),
        ({"labels": [1, 1, 1, 1]}, "no_order", "labels", "[1.0, 1.0, 1.0, 1.0]"),
        ({"query": ""}, "empty_text", "query", "''"),
    ],
)
def test_a_bad_list_row_is_named(tiny_bert, tmp_path, changes, reason, column, shown):
    rows = _lists_with(3, **changes)
    if "documents" not in changes and reason in ("list_lengths_differ", "no_order"):
        rows[3]["documents"] = rows[3]["documents"][:4] + ["x y"] * (4 - len(rows[3]["documents"]))
    path = write_jsonl(rows, tmp_path / "lists.jsonl")
    with pytest.raises(DataError) as caught:
        inspect_data(_config(tiny_bert, path, "ListNetLoss"))
    message = str(caught.value)
    assert f"{path}, row 4: column {column!r}" in message, message
    assert f"[{reason}]" in message and shown in message, message


def test_a_tuple_without_its_positive_is_named(tiny_bert, tmp_path):
    rows = tuples(6, negatives=2)
    rows[2]["positive"] = None
    path = write_jsonl(rows, tmp_path / "tuples.jsonl")
    with pytest.raises(DataError, match=r"row 3: column 'positive' \(positive\) holds null.*\[null_text\]"):
        inspect_data(_config(tiny_bert, path, "MultipleNegativesRankingLoss"))


def test_teacher_scores_of_the_wrong_length_are_named(tiny_bert, tmp_path):
    rows = tuples(6, negatives=2, scores=True)
    rows[1]["label"] = [1.0]  # three documents: three scores or two margins
    path = write_jsonl(rows, tmp_path / "scored.jsonl")
    with pytest.raises(DataError, match=r"row 2: column 'label'.*\[list_lengths_differ\]"):
        inspect_data(_config(tiny_bert, path, "MarginMSELoss"))


def test_lists_read_alike_from_parquet_jsonl_and_csv(tiny_bert, tmp_path):
    """A list column in Parquet, a JSON array in JSON Lines, a JSON array in a CSV cell: the same rows."""
    rows = judged_lists(5, seed=6)
    parquet = tmp_path / "lists.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    jsonl = write_jsonl(rows, tmp_path / "lists.jsonl")
    csv_path = tmp_path / "lists.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["query", "documents", "labels"])
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {"query": r["query"], "documents": json.dumps(r["documents"]), "labels": json.dumps(r["labels"])}
            )
    read = {}
    for path, fmt in ((parquet, "parquet"), (jsonl, "jsonl"), (csv_path, "csv")):
        split = inspect_data(_config(tiny_bert, path, "LambdaLoss"))["train"]
        chunks = reading.read_file(reading.open_local_or_uri(str(path), fmt), fmt, 0, split.checker)
        table = pa.concat_tables(list(chunks))
        read[fmt] = table.select(["query", "documents", "labels"]).to_pylist()
    assert read["parquet"] == read["jsonl"] == read["csv"]
    assert read["csv"][0]["documents"] == rows[0]["documents"]
    assert read["csv"][0]["labels"] == [float(x) for x in rows[0]["labels"]]


def test_skipped_list_rows_are_placeholders(tiny_bert, tmp_path):
    rows = _lists_with(2, labels=[1, 0])
    path = write_jsonl(rows, tmp_path / "lists.jsonl")
    split = inspect_data(_config(tiny_bert, path, "ListNetLoss", on_bad_row="skip"))["train"]
    assert split.sample_skipped == {"list_lengths_differ": 1}
    table = pa.concat_tables(
        list(reading.read_file(reading.open_local_or_uri(str(path), "jsonl"), "jsonl", 0, split.checker))
    )
    assert table.num_rows == 8
    placeholder = table.slice(2, 1).to_pylist()[0]
    assert placeholder["documents"] == [] and placeholder["skip"] > 0
