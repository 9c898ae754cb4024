"""BEIR-style eval sets: checked before Ray starts, read by Ray Data as the in-process reader does."""

from __future__ import annotations

import pytest
from tiny import reranking_pairs, write_beir

from rerank_ray.data.beir import inspect_beir, open_beir, read_beir_pairs
from rerank_ray.errors import ConfigError, DataError


def _sorted(rows):
    return sorted(rows, key=lambda r: (r["query_id"], r["sentence_1"]))


def test_beir_pairs_are_the_judged_pairs_with_their_labels(tmp_path):
    rows = reranking_pairs(4, candidates=3, seed=1)
    rows[1]["label"] = 2  # graded judgements stay graded
    beir = inspect_beir(str(write_beir(rows, tmp_path / "b")), "test")
    table = read_beir_pairs(beir, block_bytes=256)  # small blocks: the corpus is streamed
    got = _sorted(table.to_pylist())
    assert got == _sorted(
        [{k: r[k] for k in ("sentence_0", "sentence_1", "query_id")} | {"label": float(r["label"])} for r in rows]
    )
    assert beir.name == "b (test)"


def test_beir_problems_fail_before_ray_naming_the_file(tmp_path):
    rows = reranking_pairs(2, candidates=3)
    folder = write_beir(rows, tmp_path / "b")
    with pytest.raises(ConfigError, match=r"qrels/dev.tsv not found .*check eval.beir_split"):
        inspect_beir(str(folder), "dev")
    (folder / "queries.jsonl").write_text('{"_id": "q0", "text": "only one"}\n')
    with pytest.raises(DataError, match=r"query 'q1' is not in .*queries.jsonl"):
        inspect_beir(str(folder), "test")
    positives = write_beir([r for r in rows if r["label"]], tmp_path / "positives")
    with pytest.raises(DataError, match="judges no document non-relevant"):
        inspect_beir(str(positives), "test")


@pytest.mark.ray
def test_ray_data_reads_the_same_pairs(ray_local, tmp_path):
    rows = reranking_pairs(6, candidates=4, seed=2)
    beir = inspect_beir(str(write_beir(rows, tmp_path / "b")), "test")
    source = open_beir(beir)
    assert source.num_rows == len(rows) and source.name == "b (test)"
    # The rows the tokenizing stage takes: the pairs, plus "no row skipped" and "no row key".
    streamed = source.dataset.take_all()
    assert all(r.pop("skip") == 0 and r.pop("row_key") == -1 for r in streamed)
    assert _sorted(streamed) == _sorted(read_beir_pairs(beir).to_pylist())
