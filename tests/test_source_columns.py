"""A source's own column map (issue 29, part 3's per-evaluation columns): a training set saved
with ``save_to_disk`` under the canonical names, evaluated on a spreadsheet TSV with its own
header (``Quality``, ``first``, ``second``). ``data.columns`` is one map for every file, so one of
the two splits always failed to read; ``{path: ..., columns: {...}}`` gives a split its own."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from test_hub_sources import split_rows
from tiny import synthetic_pairs

from rerank_ray.config import Config
from rerank_ray.data import files
from rerank_ray.errors import ConfigError, DataError

SHEET_COLUMNS = {"label": "Quality", "sentence_0": "first", "sentence_1": "second"}


def _saved_train(folder: Path, n: int = 40) -> str:
    from datasets import Dataset

    rows = synthetic_pairs(n, seed=1, with_id=False)
    Dataset.from_dict({key: [r[key] for r in rows] for key in ("sentence_0", "sentence_1", "label")}).save_to_disk(
        str(folder)
    )
    return str(folder)


def _sheet(path: Path, n: int = 24, seed: int = 2) -> tuple[str, list[dict]]:
    rows = synthetic_pairs(n, seed=seed, with_id=False)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["ID", "Quality", "first", "second"])  # a spreadsheet's order, and a column unused
        for i, r in enumerate(rows):
            writer.writerow([i, int(r["label"]), r["sentence_0"], r["sentence_1"]])
    return str(path), rows


def _config(train, eval_, **data) -> Config:
    return Config.from_dict({"model": {"name_or_path": "unused"}, "data": {"train": train, "eval": eval_, **data}})


def test_a_saved_train_set_and_a_spreadsheet_eval_set_read_each_with_its_own_columns(tmp_path):
    train = _saved_train(tmp_path / "saved")
    sheet, rows = _sheet(tmp_path / "dev.tsv")
    config = _config(train, {"path": sheet, "columns": SHEET_COLUMNS})
    assert [(r["sentence_0"], r["sentence_1"], r["label"]) for r in split_rows(config, "eval")] == [
        (r["sentence_0"], r["sentence_1"], pytest.approx(r["label"])) for r in rows
    ]
    assert len(split_rows(config, "train")) == 40  # canonical names: data.columns (empty) for this split

    # One map for both splits, as before: mapping the sheet's names breaks the training set ...
    with pytest.raises(DataError, match=r"column 'first' \(for sentence_0\) is missing in .*data-00000-of-00001.arrow"):
        files.inspect_split([train], _config(train, sheet, columns=SHEET_COLUMNS), "train")
    # ... and not mapping them breaks the sheet.
    with pytest.raises(DataError, match=r"column 'sentence_0' \(for sentence_0\) is missing in .*dev.tsv"):
        files.inspect_split([sheet], _config(train, sheet), "eval")


def test_a_column_missing_under_a_sources_own_map_says_where_to_map_it(tmp_path):
    train = _saved_train(tmp_path / "saved")
    sheet, _ = _sheet(tmp_path / "dev.tsv")
    config = _config(train, {"path": sheet, "columns": {**SHEET_COLUMNS, "sentence_1": "Second"}})
    with pytest.raises(DataError) as err:
        files.inspect_split(config.data.eval, config, "eval")
    message = str(err.value)
    assert "column 'Second' (for sentence_1) is missing" in message
    assert "map it in the columns of data.eval's source mapping ({sentence_1: <your column>})" in message


def test_the_sources_of_one_split_read_with_one_map(tmp_path):
    train = _saved_train(tmp_path / "saved")
    first, _ = _sheet(tmp_path / "a.tsv")
    second, _ = _sheet(tmp_path / "b.tsv", seed=3)
    same = _config(train, [{"path": first, "columns": SHEET_COLUMNS}, {"path": second, "columns": SHEET_COLUMNS}])
    assert len(split_rows(same, "eval")) == 48
    other = {**SHEET_COLUMNS, "label": "Score"}
    differ = _config(train, [{"path": first, "columns": SHEET_COLUMNS}, {"path": second, "columns": other}])
    with pytest.raises(ConfigError, match=r"data.eval\[1\] maps its columns as .*data.eval\[0\] as .*one column map"):
        files.inspect_split(differ.data.eval, differ, "eval")
    mixed = _config(train, [{"path": first, "columns": SHEET_COLUMNS}, second])
    with pytest.raises(ConfigError, match=r"data.eval\[1\] gives no columns \(so data.columns, \{\}\)"):
        files.inspect_split(mixed.data.eval, mixed, "eval")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"path": "a.tsv", "dataset": "org/name"}, r"data.eval\[0\]: a source mapping names either a path"),
        ({"columns": {"label": "y"}}, r"data.eval\[0\]: a source mapping names either a path"),
        ({"path": "a.tsv", "split": "dev"}, r"data.eval\[0\]: a path mapping takes the keys \['path', 'columns'\]"),
        ({"path": "a.tsv", "columns": {"labels_": "y"}}, r"data.eval\[0\].columns has unknown key\(s\) \[.labels_.\]"),
        ({"path": "a.tsv", "columns": ["label"]}, r"data.eval\[0\].columns must map canonical column names"),
        ({"dataset": "org/name", "split": 3}, r"data.eval\[0\]: a dataset mapping's values other than columns"),
    ],
)
def test_a_malformed_source_mapping_fails_on_load_naming_it(source, message):
    with pytest.raises(ConfigError, match=message):
        _config("t.jsonl", [source])


@pytest.mark.ray
def test_a_run_trains_on_the_saved_set_and_reports_the_libraries_metric_on_the_sheet(ray_local, tiny_bert, tmp_path):
    """The whole run: 1 worker, the eval set read with its own map; the metric the run reports
    on the exported model equals sentence-transformers' evaluator on the sheet's pairs."""
    from conftest import base_config
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderClassificationEvaluator

    from rerank_ray.run.driver import train

    sheet, rows = _sheet(tmp_path / "dev.tsv", n=30)
    raw = base_config(
        tiny_bert,
        _saved_train(tmp_path / "saved", n=64),
        None,
        tmp_path / "runs",
        data={"eval": [{"path": sheet, "columns": SHEET_COLUMNS}]},
        train={"epochs": 1},
        eval={"steps": 0, "before_training": False},
        scaling={"num_workers": 1},
    )
    outcome = train(Config.from_dict(raw))
    assert outcome.metrics["train"]["eval_pairs"] == 30
    pairs = [[r["sentence_0"], r["sentence_1"]] for r in rows]
    expected = CrossEncoderClassificationEvaluator(pairs, [int(r["label"]) for r in rows], name="eval")(
        CrossEncoder(str(outcome.output_dir))
    )
    assert outcome.metrics["final"]["eval_average_precision"] == pytest.approx(
        expected["eval_average_precision"], abs=1e-5
    )
