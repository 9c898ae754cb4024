"""``rerank-ray score`` (a teacher's scores with Ray Data): every row once, in the input's order,
with the scores ``CrossEncoder.predict`` gives in one process; the output trains as is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny import judged_lists, synthetic_pairs, tuples, write_jsonl, write_parquet

from rerank_ray.config import Config
from rerank_ray.errors import ConfigError, DataError
from rerank_ray.inference.jobs import summary_path
from rerank_ray.inference.score import ScoreRequest, check_request, score
from rerank_ray.run.driver import inspect_data


def _scored(folder: Path) -> pa.Table:
    parts = sorted(folder.glob("*.parquet"))
    assert parts
    return pa.concat_tables([pq.read_table(p) for p in parts])


@pytest.mark.ray
def test_scores_tuples_lists_and_pairs_in_order_as_predict_does(ray_local, tiny_bert, tmp_path):
    from sentence_transformers import CrossEncoder

    teacher = CrossEncoder(str(tiny_bert))
    rows = tuples(23, negatives=2, seed=8)
    # Three files; the first of 11 rows in row groups of 3 (Ray 2.60's own Parquet reader once
    # returned its rows 4-7 before 0-3 here, preserve_order on: score keys and sorts every row).
    (tmp_path / "tuples").mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:11]), tmp_path / "tuples" / "a.parquet", row_group_size=3)
    inputs = [
        tmp_path / "tuples" / "a.parquet",
        write_parquet(rows[11:17], tmp_path / "tuples" / "b.parquet"),
        write_parquet(rows[17:], tmp_path / "tuples" / "c.parquet"),
    ]
    out = tmp_path / "scored"
    summary = score(
        ScoreRequest(model=str(tiny_bert), data=[str(tmp_path / "tuples")], output=str(out), rows_per_batch=4)
    )
    table = _scored(out)
    assert table.num_rows == 23 == summary["rows"] and summary["pairs"] == 69
    assert table.drop_columns(["score"]).to_pylist() == rows  # every row once, in order, columns kept
    expected = teacher.predict(
        [(r["query"], doc) for r in rows for doc in (r["positive"], r["negative_1"], r["negative_2"])]
    )
    np.testing.assert_allclose(np.concatenate(table.column("score").to_pylist()), expected, atol=1e-5)
    assert json.loads(Path(summary_path(str(out))).read_text())["pairs"] == 69
    assert len(inputs) == 3
    # The output is a training set of teacher scores for MarginMSELoss, as it stands.
    config = Config.from_dict(
        {
            "model": {"name_or_path": str(tiny_bert)},
            "data": {"train": [str(out)], "columns": {"label": "score"}},
            "train": {"loss": "MarginMSELoss"},
        }
    )
    assert inspect_data(config)["train"].checker.shape.has_label


@pytest.mark.parametrize("shape", ["list", "pairs"])
def test_the_scoring_actor_scores_as_predict_does(tiny_bert, shape):
    """The actor's work, in this process: a list's documents (raw logits), or pairs (the model's activation)."""
    import torch
    from sentence_transformers import CrossEncoder

    from rerank_ray.data.shapes import PAIRS, Shape
    from rerank_ray.inference.score import Scorer

    teacher = CrossEncoder(str(tiny_bert))
    if shape == "list":
        rows = judged_lists(9, seed=9)
        found = Shape("list", ("query",), has_label=False)
        request = ScoreRequest(model=str(tiny_bert), data=[], output="", activation="identity")
        pairs = [(r["query"], d) for r in rows for d in r["documents"]]
        expected = teacher.predict(pairs, activation_fn=torch.nn.Identity())
    else:
        rows = [{k: r[k] for k in ("sentence_0", "sentence_1")} for r in synthetic_pairs(7)]
        found = PAIRS
        request = ScoreRequest(model=str(tiny_bert), data=[], output="")
        expected = teacher.predict([(r["sentence_0"], r["sentence_1"]) for r in rows])
    scorer = Scorer(
        request.__dict__, {"name": found.name, "text_columns": list(found.text_columns), "has_label": False}
    )
    table = scorer(pa.Table.from_pylist(rows))
    scores = table.column("score").to_pylist()
    if shape == "list":
        assert [len(s) for s in scores] == [len(r["documents"]) for r in rows]
        scores = np.concatenate(scores)
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_a_file_without_the_shape_s_columns_is_named_before_ray(tiny_bert, tmp_path):
    write_jsonl(tuples(3), tmp_path / "in" / "a.jsonl")
    write_jsonl([{"query": "a", "answer": "b"}], tmp_path / "in" / "b.jsonl")
    with pytest.raises(
        DataError, match=r"b\.jsonl lacks column\(s\) \['positive', 'negative_1'.* of the n-tuple shape"
    ):
        check_request(ScoreRequest(model=str(tiny_bert), data=[str(tmp_path / "in")], output=str(tmp_path / "o")))


def test_an_output_folder_with_files_is_refused(tiny_bert, tmp_path):
    data = write_jsonl(tuples(3), tmp_path / "t.jsonl")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.parquet").write_text("x")
    with pytest.raises(ConfigError, match="holds files already"):
        check_request(ScoreRequest(model=str(tiny_bert), data=[str(data)], output=str(tmp_path / "out")))
