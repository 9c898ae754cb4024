"""The order rows leave the reader in: a file sorted by label still reaches the workers mixed,
every row once per epoch, a new order each epoch, the same orders for the same seed."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from test_bad_data import make_config
from tiny import synthetic_pairs, write_parquet

from rerank_ray.data import stream
from rerank_ray.data.reading import shuffle_rows
from rerank_ray.run.driver import inspect_data


def label_sorted_chunks(rows: int, chunk: int) -> list[pa.Table]:
    """``rows`` rows keyed 0..rows-1, the first half labelled 1 and the rest 0, in chunks."""
    keys = np.arange(rows)
    table = pa.table({"row_key": keys, "label": (keys < rows // 2).astype(np.float32)})
    return [table.slice(start, chunk) for start in range(0, rows, chunk)]


def test_shuffle_rows_permutes_each_buffer_and_keeps_every_row():
    chunks = label_sorted_chunks(600, 64)
    whole = pa.concat_tables(list(shuffle_rows(iter(chunks), np.random.default_rng(0), buffer_rows=1000)))
    assert sorted(whole.column("row_key").to_pylist()) == list(range(600))
    assert 0.25 < np.mean(whole.column("label").to_numpy()[:60]) < 0.75  # both labels from the start

    # A buffer smaller than the file permutes the rows block by block (here 4 chunks, 256 rows).
    blocks = pa.concat_tables(list(shuffle_rows(iter(chunks), np.random.default_rng(0), buffer_rows=256)))
    keys = blocks.column("row_key").to_numpy()
    assert sorted(keys.tolist()) == list(range(600))
    assert sorted(keys[:256].tolist()) == list(range(256)) and keys[:256].tolist() != list(range(256))
    assert sorted(keys[256:512].tolist()) == list(range(256, 512))


@pytest.mark.ray
def test_a_label_sorted_file_streams_mixed_once_per_epoch_and_reproducibly(ray_local, tiny_bert, tmp_path, monkeypatch):
    from ray.data import DataContext

    # The reader's order is what is compared: blocks are taken in the order the read made them, not
    # in the order parallel map tasks finish (which varies with the machine's load).
    monkeypatch.setattr(DataContext.get_current().execution_options, "preserve_order", True)
    rows = synthetic_pairs(2000, seed=4)
    rows.sort(key=lambda row: -row["label"])  # every positive first, as some exports write them
    path = write_parquet(rows, tmp_path / "sorted.parquet")
    config = make_config(tiny_bert, path)
    split = inspect_data(config)["train"]

    def epochs(seed, count=2):
        dataset = stream.open_pairs(split, config.data, seed=seed).dataset.select_columns(["row_key", "label"])
        return [dataset.take_all() for _ in range(count)]

    first, second = epochs(seed=7)
    for epoch in (first, second):
        assert sorted(r["row_key"] for r in epoch) == list(range(2000))  # every row once
        assert 0.25 < np.mean([r["label"] for r in epoch[:200]]) < 0.75  # not the positives first
    assert [r["row_key"] for r in first] != [r["row_key"] for r in second]  # a new order each epoch
    again = epochs(seed=7, count=1)[0]
    assert [r["row_key"] for r in again] == [r["row_key"] for r in first]  # the same seed, the same order

    unshuffled = epochs(seed=None, count=1)[0]  # data.shuffle: false keeps the file's order
    assert [r["row_key"] for r in unshuffled] == list(range(2000))
