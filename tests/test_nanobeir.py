"""NanoBEIR by name (issue 29, part 4): an ``eval.sets`` entry ``{nanobeir: [msmarco, ...]}`` reads
the collection as sentence-transformers' CrossEncoderNanoBEIREvaluator does (``load_dataset(id,
subset, split="Nano<Name>")``), reranks each query's BM25 top ``top_k`` with the judged positives
added, and reports each dataset and their mean under the library's names. The hub is out of
reach here: the tests use a local folder in the hub's layout, which the same call reads."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from tiny import WORDS, synthetic_pairs, write_parquet

from rerank_ray.config import Config
from rerank_ray.config.evalsets import NANOBEIR_DEFAULT, NANOBEIR_NAMES, nanobeir_run_file
from rerank_ray.data.nanobeir import materialize
from rerank_ray.errors import ConfigError, DataError

SUBSETS = ("corpus", "queries", "qrels", "bm25")


def write_nanobeir(folder: Path, datasets: dict[str, int], seed: int = 0, ranked: int = 14) -> Path:
    """A NanoBEIR-shaped collection: per dataset, a corpus, queries with 1-2 positives each and a
    BM25 ranking of ``ranked`` documents per query (which may miss a positive), as parquet files
    named in the README's ``configs`` (the layout of the hub's NanoBEIR repositories)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    half = len(WORDS) // 2
    configs: dict[str, list[str]] = {subset: [] for subset in SUBSETS}
    for name, num_queries in datasets.items():
        split = f"Nano{NANOBEIR_NAMES[name]}"
        corpus, queries, qrels, bm25 = [], [], [], []
        for q in range(num_queries):
            query_id = f"{name}-q{q}"
            queries.append({"_id": query_id, "text": " ".join(rng.sample(WORDS[:half], 3)) + f" {q}"})
            positives = []
            for p in range(rng.choice([1, 2])):
                doc_id = f"{query_id}-pos{p}"
                corpus.append({"_id": doc_id, "text": " ".join(rng.sample(WORDS[:half], 5)) + f" {doc_id}"})
                qrels.append({"query-id": query_id, "corpus-id": doc_id})
                positives.append(doc_id)
            bm25.append({"query-id": query_id, "positives": positives})
        for d in range(30):
            corpus.append({"_id": f"{name}-d{d}", "text": " ".join(rng.sample(WORDS[half:], 5)) + f" {name}-d{d}"})
        ids = [doc["_id"] for doc in corpus]
        for row in bm25:
            found = [p for p in row.pop("positives") if rng.random() < 0.7]  # BM25 misses some positives
            others = [i for i in rng.sample(ids, ranked + 2) if i not in found][: ranked - len(found)]
            row["corpus-ids"] = rng.sample(found + others, len(found) + len(others))
        for subset, rows in zip(SUBSETS, (corpus, queries, qrels, bm25)):
            (folder / subset).mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows), folder / subset / f"{split}-00000-of-00001.parquet")
            configs[subset].append(f"    - {{split: {split}, path: {subset}/{split}-*.parquet}}")
    readme = ["---", "configs:"]
    for subset in SUBSETS:
        readme += [f"  - config_name: {subset}", "    data_files:", *configs[subset]]
    (folder / "README.md").write_text("\n".join([*readme, "---", "", "A tiny NanoBEIR-shaped collection."]) + "\n")
    return folder


def test_the_dataset_names_are_those_of_the_library():
    from sentence_transformers.cross_encoder.evaluation.nano_beir import (
        DATASET_NAME_TO_HUMAN_READABLE,
        CrossEncoderNanoBEIREvaluator,
    )

    assert NANOBEIR_NAMES == DATASET_NAME_TO_HUMAN_READABLE
    defaults = CrossEncoderNanoBEIREvaluator.__init__.__defaults__
    assert "sentence-transformers/NanoBEIR-en" in defaults and 100 in defaults  # dataset_id, rerank_k
    assert tuple(n for n in DATASET_NAME_TO_HUMAN_READABLE if n not in ("arguana", "touche2020")) == NANOBEIR_DEFAULT


def _config(entry: dict, **evaluation) -> Config:
    return Config.from_dict(
        {"model": {"name_or_path": "m"}, "data": {"train": ["t.jsonl"]}, "eval": {"sets": [entry], **evaluation}}
    )


def test_an_entry_is_one_reranking_evaluation_per_dataset_named_as_the_library_names_them(tmp_path, monkeypatch):
    monkeypatch.setenv("RERANK_RAY_CACHE", str(tmp_path))
    config = _config({"nanobeir": ["msmarco", "NFCorpus"], "dataset_id": "/data/nano"})
    msmarco, nfcorpus = config.eval_sets()
    assert (msmarco.name, nfcorpus.name) == ("NanoMSMARCO_R100", "NanoNFCorpus_R100")
    assert (msmarco.dataset, nfcorpus.dataset) == ("eval", "eval_1")
    assert msmarco.nanobeir == ("/data/nano", "msmarco", msmarco.evaluation.beir)
    assert msmarco.mean_of == "NanoBEIR_R100_mean"
    own = msmarco.evaluation
    assert (own.kind, own.top_k, own.always_rerank_positives, own.at_k) == ("reranking", 100, True, 10)
    assert own.beir.startswith(str(tmp_path)) and own.run_file == nanobeir_run_file(own.beir)
    assert config.headline_metric == "NanoBEIR_R100_mean_ndcg@10"
    small = _config(
        {"nanobeir": "all", "top_k": 20, "always_rerank_positives": False}, metric_for_best="NanoBEIR_R20_mean_map"
    )
    assert [s.name for s in small.eval_sets()][:2] == ["NanoClimateFEVER_R20", "NanoDBPedia_R20"]
    assert len(small.eval_sets()) == 11 and not small.eval_sets()[0].evaluation.always_rerank_positives


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"nanobeir": ["msmarko"]}, "'msmarko' is not a NanoBEIR dataset"),
        ({"nanobeir": []}, "must be a list of NanoBEIR datasets"),
        ({"nanobeir": ["msmarco"], "kind": "binary"}, "NanoBEIR is a reranking evaluation"),
        ({"nanobeir": ["msmarco"], "beir": "/b"}, r"eval.sets\[0\].beir does not go with nanobeir"),
        ({"name": "x", "dataset_id": "/d"}, "dataset_id is where NanoBEIR is read from .* goes with nanobeir"),
        ({"nanobeir": ["msmarco"], "cache_dir": 3}, r"eval.sets\[0\].cache_dir must be str or null"),
    ],
)
def test_a_wrong_nanobeir_entry_fails_on_load(entry, message):
    with pytest.raises(ConfigError, match=message):
        _config(entry)


def test_a_dataset_is_written_once_as_a_beir_folder_with_its_bm25_run(tmp_path, monkeypatch):
    monkeypatch.setenv("RERANK_RAY_CACHE", str(tmp_path / "cache"))
    collection = write_nanobeir(tmp_path / "nano", {"msmarco": 4})
    folder = Path(materialize(str(collection), "msmarco"))
    qrels = (folder / "qrels" / "test.tsv").read_text().splitlines()
    assert qrels[0] == "query-id\tcorpus-id\tscore" and all(line.endswith("\t1") for line in qrels[1:])
    run = [line.split() for line in Path(nanobeir_run_file(str(folder))).read_text().splitlines()]
    assert [r[3] for r in run if r[0] == "msmarco-q0"] == [str(i) for i in range(1, 15)]  # ranks 1..14, in order
    corpus = [json.loads(line) for line in (folder / "corpus.jsonl").read_text().splitlines()]
    assert corpus[0]["title"] == "" and len(corpus) > 30
    (collection / "corpus").rename(tmp_path / "gone")
    assert materialize(str(collection), "msmarco") == str(folder)  # complete: not read again
    with pytest.raises(DataError, match="cannot load subset 'corpus' split 'NanoMSMARCO'"):
        materialize(str(tmp_path / "elsewhere"), "msmarco")


@pytest.mark.ray
def test_a_run_reports_nanobeir_as_the_library_evaluator_does(ray_local, tiny_bert, tmp_path, monkeypatch):
    """Train 1 epoch (2 workers) evaluating on two NanoBEIR-shaped datasets, BM25's top 10 each:
    every metric of each dataset and of the mean, the retriever's own (``base_``) included, equals
    CrossEncoderNanoBEIREvaluator(rerank_k=10) on the exported model; the mean's nDCG@10 is the
    headline that selects the checkpoint."""
    from conftest import base_config
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderNanoBEIREvaluator

    from rerank_ray.run.driver import train

    monkeypatch.setenv("RERANK_RAY_CACHE", str(tmp_path / "cache"))
    collection = write_nanobeir(tmp_path / "nano", {"msmarco": 6, "nfcorpus": 5}, seed=3, ranked=12)
    train_file = write_parquet(synthetic_pairs(48, seed=1, with_id=False), tmp_path / "train.parquet")
    raw = base_config(
        tiny_bert,
        train_file,
        None,
        tmp_path / "runs",
        train={"epochs": 1},
        eval={
            "steps": 0,
            "before_training": False,
            "sets": [{"nanobeir": ["msmarco", "nfcorpus"], "dataset_id": str(collection), "top_k": 10}],
        },
    )
    outcome = train(Config.from_dict(raw))
    final = outcome.metrics["final"]
    assert outcome.metrics["headline_metric"] == "NanoBEIR_R10_mean_ndcg@10"
    library = CrossEncoderNanoBEIREvaluator(
        ["msmarco", "nfcorpus"], dataset_id=str(collection), rerank_k=10, write_csv=False
    )(CrossEncoder(outcome.output_dir))
    assert library["NanoBEIR_R10_mean_ndcg@10"] != library["NanoBEIR_R10_mean_base_ndcg@10"]
    for key, value in library.items():
        assert final[key] == pytest.approx(value, abs=1e-5), key


@pytest.mark.ray
def test_a_search_compares_trials_on_metric_for_best_over_several_evaluations(
    ray_local, tiny_bert, tmp_path, monkeypatch
):
    """``rerank-ray tune`` on a run with two evaluations, a pair file and NanoBEIR (issue 29, part
    5): the trials are compared on ``metric_for_best`` (the NanoBEIR mean's nDCG@10); the best
    trial is the one with the highest, its export reports that figure, and the library's NanoBEIR
    evaluator on the exported model agrees."""
    from conftest import base_config
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderNanoBEIREvaluator

    from rerank_ray.tune.search import run_search

    monkeypatch.setenv("RERANK_RAY_CACHE", str(tmp_path / "cache"))
    collection = write_nanobeir(tmp_path / "nano", {"msmarco": 5, "scifact": 5}, seed=5, ranked=10)
    train_file = write_parquet(synthetic_pairs(32, seed=1, with_id=False), tmp_path / "train.parquet")
    dev_file = write_parquet(synthetic_pairs(16, seed=2, with_id=False), tmp_path / "dev.parquet")
    raw = base_config(
        tiny_bert,
        train_file,
        dev_file,
        tmp_path / "runs",
        train={"epochs": 1},
        eval={
            "steps": 0,
            "before_training": False,
            "sets": [
                {"name": "dev", "kind": "binary"},
                {"nanobeir": ["msmarco", "scifact"], "dataset_id": str(collection), "top_k": 10},
            ],
            "metric_for_best": "NanoBEIR_R10_mean_ndcg@10",
        },
        scaling={"num_workers": 1, "cpus_per_worker": 0.5},
        run={"name": "nano-search"},
        tune={
            "space": {"train.learning_rate": {"choice": [1e-5, 3e-3]}},
            "search": "grid",
            "scheduler": "none",
            "max_concurrent_trials": 2,
        },
    )
    outcome = run_search(Config.from_dict(raw))
    assert outcome.best is not None and len(outcome.rows) == 2
    assert outcome.best["metric"] == max(row["metric"] for row in outcome.rows)
    exported = json.loads((Path(outcome.paths.output) / "metrics.json").read_text())
    final = exported["final"]
    assert exported["headline_metric"] == "NanoBEIR_R10_mean_ndcg@10"
    assert final["NanoBEIR_R10_mean_ndcg@10"] == pytest.approx(outcome.best["metric"], abs=1e-9)
    assert "dev_average_precision" in final
    library = CrossEncoderNanoBEIREvaluator(
        ["msmarco", "scifact"], dataset_id=str(collection), rerank_k=10, write_csv=False
    )(CrossEncoder(str(outcome.paths.output)))
    assert final["NanoBEIR_R10_mean_ndcg@10"] == pytest.approx(library["NanoBEIR_R10_mean_ndcg@10"], abs=1e-5)
