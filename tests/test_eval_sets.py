"""Several evaluations in one run (issue 29, part 3): ``eval.sets``, each with its name, kind and
data, scored at every evaluation; ``eval.metric_for_best`` selects the checkpoint. The single
``eval`` section of before stays one evaluation named ``eval``."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from test_retrieval import _graded_beir
from test_source_columns import SHEET_COLUMNS, _sheet
from tiny import synthetic_pairs, write_parquet

from rerank_ray.config import Config
from rerank_ray.data.beir import inspect_beir
from rerank_ray.errors import ConfigError


def _config(evaluation: dict, data_eval: list | None = None) -> Config:
    data = {"train": ["t.jsonl"], **({"eval": data_eval} if data_eval else {})}
    return Config.from_dict({"model": {"name_or_path": "m"}, "data": data, "eval": evaluation})


def test_a_plain_eval_section_is_one_evaluation_named_eval():
    config = _config({"kind": "correlation"}, ["dev.jsonl"])
    (only,) = config.eval_sets()
    assert (only.key, only.dataset, only.name, only.sources) == ("eval", "eval", "eval", ["dev.jsonl"])
    assert config.headline_metric == "eval_spearman"
    assert _config({}).eval_sets() == []


def test_a_set_takes_the_sections_keys_it_does_not_give_and_its_own_data():
    config = _config(
        {
            "kind": "reranking",
            "at_k": 5,
            "steps": 7,
            "sets": [
                {"name": "dev"},
                {"name": "sheet", "kind": "binary", "data": {"path": "s.tsv", "columns": SHEET_COLUMNS}},
                {"name": "beir", "beir": "/b", "run_file": "/b/bm25.run", "top_k": 20},
            ],
        },
        ["dev.jsonl"],
    )
    dev, sheet, beir = config.eval_sets()
    assert (dev.evaluation.kind, dev.evaluation.at_k, dev.sources, dev.headline) == (
        "reranking",
        5,
        ["dev.jsonl"],
        "dev_ndcg@5",
    )
    assert (sheet.evaluation.kind, sheet.sources, sheet.dataset) == (
        "binary",
        [{"path": "s.tsv", "columns": SHEET_COLUMNS}],
        "eval_1",
    )
    assert (beir.evaluation.beir, beir.evaluation.top_k, beir.sources) == ("/b", 20, [])
    assert all(s.evaluation.steps == 7 for s in (dev, sheet, beir))  # the run's, for every set
    assert config.headline_metric == "dev_ndcg@5"  # the first set's headline
    view = config.for_eval_set(sheet)
    assert (view.eval.name, view.data.eval, view.data.train) == ("sheet", sheet.sources, ["t.jsonl"])


@pytest.mark.parametrize(
    ("evaluation", "message"),
    [
        ({"sets": [{"name": "dev", "steps": 3}]}, r"eval.sets\[0\].steps is the run's, not a set's"),
        ({"sets": [{"name": "dev"}, {"name": "dev"}]}, "the name 'dev' is given twice"),
        ({"sets": [{"kind": "binary"}]}, r"eval.sets\[0\] needs a name"),
        ({"sets": [{"name": "x", "atk": 3}]}, r"unknown key eval.sets\[0\].atk"),
        ({"sets": [{"name": "x", "at_k": "five"}]}, r"eval.sets\[0\].at_k must be int"),
        (
            {"sets": [{"name": "dev"}, {"name": "x", "beir": "/b"}]},
            r"eval.sets\[1\] \(x\): eval.beir is only used by eval.kind reranking",
        ),
        ({"sets": [{"name": "x", "data": "d.tsv", "kind": "reranking", "beir": "/b"}]}, "either data .* or beir"),
        ({"sets": ["dev.tsv"]}, r"eval.sets\[0\] must be dict"),
        ({"beir": "/b", "kind": "reranking", "sets": [{"name": "x"}]}, "with eval.sets, give each set its own beir"),
        ({"sets": [{"name": "x"}], "metric_for_best": "y_map"}, "'y_map' is not a metric of the evaluations"),
        ({"metric_for_best": "eval_map"}, "eval.metric_for_best .* needs an evaluation"),
    ],
)
def test_a_wrong_set_fails_on_load_naming_its_key(evaluation, message):
    with pytest.raises(ConfigError, match=message):
        _config(evaluation, ["dev.jsonl"] if evaluation.get("metric_for_best") != "eval_map" else None)


def test_data_eval_that_no_set_reads_is_refused():
    with pytest.raises(ConfigError, match="data.eval is read by no entry of eval.sets"):
        _config({"sets": [{"name": "own", "data": "other.tsv"}]}, ["dev.jsonl"])


def test_a_set_without_data_needs_data_eval():
    with pytest.raises(ConfigError, match=r"eval.sets\[0\] \(dev\) has no data"):
        _config({"sets": [{"name": "dev"}]})


def _run_file(beir: Path, path: Path, per_query: int = 12, keep: int = 8) -> tuple[Path, dict[str, list[str]]]:
    """A BM25-like TREC run over the BEIR folder's corpus; each query's top ``keep`` by it."""
    documents = [json.loads(line)["_id"] for line in (beir / "corpus.jsonl").read_text().splitlines()]
    queries = sorted({r["query_id"] for r in inspect_beir(str(beir), "test", retrieved=True).judgements.to_pylist()})
    rng = random.Random(4)
    lines, ranked = [], {}
    for query in queries:
        chosen = rng.sample(documents, per_query)
        ranked[query] = chosen[:keep]
        lines += [f"{query} Q0 {d} {i + 1} {30.0 - i} bm25" for i, d in enumerate(chosen)]
    path.write_text("\n".join(lines) + "\n")
    return path, ranked


@pytest.mark.ray
def test_a_run_reports_every_set_and_exports_the_best_by_metric_for_best(ray_local, tiny_bert, tmp_path):
    """2 workers, two evaluations at each epoch's end: a spreadsheet of pairs read with its own
    columns (binary) and a BEIR folder reranking a run file's top 8 (reranking). Both sets'
    metrics are reported at every evaluation; the export is the checkpoint best by
    ``metric_for_best`` (the BEIR set's nDCG@10); each set's metrics on the exported model equal
    the library's evaluator on the same pairs; metrics.json and the card list both sets."""
    from conftest import base_config
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import (
        CrossEncoderClassificationEvaluator,
        CrossEncoderRerankingEvaluator,
    )

    from rerank_ray.run.driver import train

    sheet, sheet_rows = _sheet(tmp_path / "dev.tsv", n=26)
    beir = _graded_beir(tmp_path, queries=6)
    run_file, ranked = _run_file(beir, tmp_path / "bm25.run")
    train_file = write_parquet(synthetic_pairs(48, seed=1, with_id=False), tmp_path / "train.parquet")
    raw = base_config(
        tiny_bert,
        train_file,
        None,
        tmp_path / "runs",
        train={"epochs": 3},
        eval={
            "steps": 0,
            "sets": [
                {"name": "sheet", "data": [{"path": sheet, "columns": SHEET_COLUMNS}]},
                {"name": "judged", "kind": "reranking", "beir": str(beir), "run_file": str(run_file), "top_k": 8},
            ],
            "metric_for_best": "judged_ndcg@10",
        },
        run={"export": "best"},
    )
    outcome = train(Config.from_dict(raw))
    metrics = outcome.metrics
    final = metrics["final"]
    assert metrics["headline_metric"] == "judged_ndcg@10"
    assert {"sheet_average_precision", "judged_ndcg@10", "judged_base_ndcg@10", "judged_map"} <= set(final)
    evaluations = [e for e in metrics["history"] if "judged_ndcg@10" in e]
    assert [e["step"] for e in evaluations] == [0, 3, 6, 9]  # before training, then each epoch's end
    assert all("sheet_average_precision" in e for e in evaluations)
    best = max(evaluations[1:], key=lambda e: e["judged_ndcg@10"])  # first of equals, as the export takes it
    assert metrics["selected_step"] == best["step"]
    assert metrics["evaluations"]["sheet"]["pairs"] == 26
    assert metrics["evaluations"]["judged"]["candidates"]["source"] == f"run file {run_file}"

    model = CrossEncoder(outcome.output_dir)
    pairs = [[r["sentence_0"], r["sentence_1"]] for r in sheet_rows]
    library = CrossEncoderClassificationEvaluator(pairs, [int(r["label"]) for r in sheet_rows], name="sheet")(model)
    assert final["sheet_average_precision"] == pytest.approx(library["sheet_average_precision"], abs=1e-5)
    documents = [json.loads(line) for line in (beir / "corpus.jsonl").read_text().splitlines()]
    texts = {d["_id"]: (d["title"] + " " + d["text"]).strip() for d in documents}
    judged = inspect_beir(str(beir), "test", retrieved=True).judgements.to_pylist()
    samples = [
        {
            "query": next(r["sentence_0"] for r in judged if r["query_id"] == query),
            "positive": [texts[r["corpus_id"]] for r in judged if r["query_id"] == query],
            "documents": [texts[d] for d in ranked[query]],
        }
        for query in sorted(ranked)
    ]
    expected = CrossEncoderRerankingEvaluator(
        samples, at_k=10, name="judged", write_csv=False, always_rerank_positives=False
    )(model)
    assert final["judged_map"] == pytest.approx(expected["judged_map"], abs=1e-5)
    assert final["judged_ndcg@10_binary"] == pytest.approx(expected["judged_ndcg@10"], abs=1e-5)

    card = (Path(outcome.output_dir) / "README.md").read_text(encoding="utf-8")
    assert "- Evaluation `sheet`: `binary` on 26 pairs" in card and "- Evaluation `judged`: `reranking`" in card
    assert "- Selected checkpoint: best by `judged_ndcg@10`" in card
    assert "#### sheet" in card and "#### judged" in card
