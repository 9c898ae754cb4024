"""Hugging Face datasets as sources: a save_to_disk folder (a Dataset, or a split of a
DatasetDict), a local folder in the hub's layout (its split's files only), a mapping naming the
split; read through the same reader (row numbers in errors) and streamed by Ray Data. The hub
itself is unreachable here: a hub id offline fails with a clear error."""

from __future__ import annotations

import pytest
from tiny import synthetic_pairs

from rerank_ray.config import Config
from rerank_ray.data import files, reading
from rerank_ray.errors import ConfigError, DataError

COLUMNS = {"sentence_0": "question", "sentence_1": "answer", "label": "score"}


def _dataset(n: int, seed: int = 0, bad_row: int | None = None):
    from datasets import Dataset

    rows = synthetic_pairs(n, seed=seed, with_id=False)
    if bad_row is not None:
        rows[bad_row - 1]["label"] = 7.0  # outside [0, 1]: BCE's labels
    return Dataset.from_dict(
        {
            "question": [r["sentence_0"] for r in rows],
            "answer": [r["sentence_1"] for r in rows],
            "score": [float(r["label"]) for r in rows],
        }
    )


def _config(train, eval_=None, **data) -> Config:
    raw = {"model": {"name_or_path": "unused"}, "data": {"train": train, "columns": COLUMNS, **data}}
    if eval_ is not None:
        raw["data"]["eval"] = eval_
    return Config.from_dict(raw)


def split_rows(config: Config, split: str = "train") -> list[dict]:
    """Every row of one split as the reader gives it (checked, canonical columns)."""
    found = files.inspect_split(getattr(config.data, split), config, split)
    out = []
    for index, path in enumerate(found.files):
        opener = reading.open_local_or_uri(path, found.format)
        out += [r for chunk in reading.read_file(opener, found.format, index, found.checker) for r in chunk.to_pylist()]
    return out


def test_a_save_to_disk_folder_reads_its_arrow_files_with_mapped_columns(tmp_path):
    saved = _dataset(30)
    saved.save_to_disk(str(tmp_path / "saved"))
    config = _config(str(tmp_path / "saved"))
    split = files.inspect_split(config.data.train, config, "train")
    assert split.format == "arrow" and [p.rsplit("/", 1)[-1] for p in split.files] == ["data-00000-of-00001.arrow"]
    rows = split_rows(config)
    assert [(r["sentence_0"], r["sentence_1"], r["label"]) for r in rows] == [
        (q, a, pytest.approx(s)) for q, a, s in zip(saved["question"], saved["answer"], saved["score"])
    ]
    assert [r["row_key"] & 0xFFFFFFFF for r in rows][:3] == [0, 1, 2]  # each row's place in its file


def test_a_bad_row_of_a_saved_dataset_is_named_by_file_and_row(tmp_path):
    _dataset(30, bad_row=12).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DataError) as bad:
        split_rows(_config(str(tmp_path / "saved")))
    message = str(bad.value)
    assert "data-00000-of-00001.arrow" in message and "row 12" in message and "7" in message


def test_a_saved_dataset_dict_gives_each_role_its_split(tmp_path):
    from datasets import DatasetDict

    DatasetDict({"train": _dataset(20), "validation": _dataset(7, seed=1), "test": _dataset(5, seed=2)}).save_to_disk(
        str(tmp_path / "dict")
    )
    folder = str(tmp_path / "dict")
    config = _config(folder, folder)
    assert len(split_rows(config, "train")) == 20 and len(split_rows(config, "eval")) == 7  # validation before test
    named = _config({"dataset": folder, "split": "test"})
    assert len(split_rows(named)) == 5
    with pytest.raises(ConfigError, match=r"has no split 'dev'; its splits are \['test', 'train', 'validation'\]"):
        files.inspect_split(_config({"dataset": folder, "split": "dev"}).data.train, named, "train")


def test_a_folder_in_the_hub_layout_reads_only_its_split(tmp_path):
    hub = tmp_path / "hub" / "data"
    hub.mkdir(parents=True)
    _dataset(20).to_parquet(str(hub / "train-00000-of-00001.parquet"))
    _dataset(6, seed=1).to_parquet(str(hub / "test-00000-of-00001.parquet"))
    folder = str(tmp_path / "hub")
    config = _config(folder, folder)
    train = files.inspect_split(config.data.train, config, "train")
    assert [p.rsplit("/", 1)[-1] for p in train.files] == ["train-00000-of-00001.parquet"]  # not the test file
    assert len(split_rows(config, "eval")) == 6  # no validation split: test
    assert len(split_rows(_config({"dataset": folder, "split": "test"}))) == 6


def test_a_plain_folder_of_pair_files_is_still_read_whole(tmp_path):
    (tmp_path / "pairs").mkdir()
    for name in ("part-0001.parquet", "part-latest.parquet"):  # no split in these names
        _dataset(4).to_parquet(str(tmp_path / "pairs" / name))
    config = _config(str(tmp_path / "pairs"))
    assert len(files.inspect_split(config.data.train, config, "train").files) == 2


def test_a_hub_id_offline_fails_naming_the_dataset_and_the_cause(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    for spec in ("hf://datasets/someone/no-such-pairs@main", {"dataset": "someone/no-such-pairs", "split": "train"}):
        config = _config(spec)
        with pytest.raises(ConfigError, match=r"cannot resolve the dataset someone/no-such-pairs.*HF_HUB_OFFLINE"):
            files.inspect_split(config.data.train, config, "train")
    with pytest.raises(ConfigError, match="a source mapping names either a path .* or a Hugging Face dataset"):
        _config({"name": "x"})  # on load
    misspelt = _config({"dataset": "x", "splt": "train"})
    with pytest.raises(
        ConfigError, match=r"a dataset mapping takes the keys .* and columns, got \['dataset', 'splt'\]"
    ):
        files.inspect_split(misspelt.data.train, misspelt, "train")


@pytest.mark.ray
def test_ray_data_streams_a_saved_dataset_every_row_once(ray_local, tmp_path):
    from rerank_ray.data import stream

    _dataset(50).save_to_disk(str(tmp_path / "saved"), num_shards=2)
    config = _config(str(tmp_path / "saved"))
    split = files.inspect_split(config.data.train, config, "train")
    assert len(split.files) == 2
    rows = stream.open_pairs(split, config.data, seed=3).dataset.select_columns(["row_key"]).take_all()
    assert len(rows) == 50 and len({r["row_key"] for r in rows}) == 50
