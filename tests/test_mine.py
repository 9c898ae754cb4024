"""``rerank-ray mine``: the negatives it chooses equal ``sentence_transformers.util.mine_hard_negatives``'
on the same inputs (each output format, each filter, random sampling, a corpus or none), through
Ray Data and through the block search alone; bad input is refused before Ray starts."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny import mining_pairs, write_jsonl, write_parquet

from rerank_ray.cli import main
from rerank_ray.config import Config
from rerank_ray.errors import ConfigError, DataError
from rerank_ray.inference import embedding, search
from rerank_ray.inference.jobs import summary_path
from rerank_ray.mining import mine as mining
from rerank_ray.mining.config import MINE_FORMATS, MineConfig, load_mine_config
from rerank_ray.mining.negatives import Positives, derived_range_max, output_rows, select, text_hashes
from rerank_ray.training.faults import FAULTS_ENV

#: Filter settings, each tried with every output format.
FILTER_CASES = {
    "top": {},
    "window": {"range_min": 2, "range_max": 15, "num_negatives": 4},
    "relative_margin": {"relative_margin": 0.05},
    "absolute_margin": {"absolute_margin": 0.02, "output_scores": True},
    "score_bounds": {"max_score": 0.9, "min_score": 0.5, "output_scores": True},
    "random": {"sampling_strategy": "random", "range_max": 20, "relative_margin": 0.0, "seed": 3},
    "short_corpus": {"range_max": 150, "num_negatives": 5},
}


@pytest.fixture(scope="module")
def mining_data() -> tuple[list[dict], list[str]]:
    return mining_pairs(18, 70, seed=4)


def library_mine(model_path: Path, rows: list[dict], corpus: list[str] | None, **kwargs: Any) -> dict[str, list]:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    model = SentenceTransformer(str(model_path), device="cpu")
    dataset = Dataset.from_dict({"query": [r["query"] for r in rows], "positive": [r["positive"] for r in rows]})
    # The library samples with the global random module; ours with a Random seeded alike.
    random.seed(kwargs.pop("seed", 0))
    return mine_hard_negatives(dataset, model, corpus=corpus, verbose=False, **kwargs).to_dict()


def as_library(ours: dict[str, list], fmt: str, scores: bool) -> dict[str, list]:
    """Our canonical columns under the library's names (it keeps the input's, and replaces the
    labels by the scores)."""
    if fmt == "labeled-pair":
        named = {"query": ours["sentence_0"], "positive": ours["sentence_1"]}
        named.update({"score": ours["score"]} if scores else {"label": ours["label"]})
        return named
    if fmt == "labeled-list":
        named = {"query": ours["query"], "positive": ours["documents"]}
        named.update({"scores": ours["score"]} if scores else {"labels": ours["labels"]})
        return named
    named = {k: v for k, v in ours.items() if k != "score"}
    if scores:
        named["scores"] = ours["score"]
    return named


def assert_same(ours: dict[str, list], theirs: dict[str, list]) -> None:
    assert list(ours) == list(theirs)
    for name, values in theirs.items():
        if name in ("score", "scores"):
            assert len(ours[name]) == len(values)
            for a, b in zip(ours[name], values):
                np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), atol=1e-5)
        else:
            assert ours[name] == values, name
    assert len(next(iter(theirs.values()))) > 0


def block_search_mine(model_path: Path, rows: list[dict], corpus: list[str] | None, config: MineConfig):
    """Our search (:func:`block_top` over blocks, :func:`merge_top`) and selection on embeddings
    computed in this process as the library computes them; the positives also in the corpus
    blocks, so a text found in two blocks is merged."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_path), device="cpu")
    positives = Positives.from_pairs([r["query"] for r in rows], [r["positive"] for r in rows])
    positive_texts = list(dict.fromkeys(d for docs in positives.positives for d in docs))
    texts = positive_texts + (corpus or [])
    queries = model.encode_query(positives.queries, normalize_embeddings=True)
    documents = model.encode_document(texts, normalize_embeddings=True)
    roles = [embedding.POSITIVE] * len(positive_texts) + [embedding.DOCUMENT] * len(corpus or [])
    table = pa.table(
        {
            embedding.ROLE: pa.array(roles, pa.int8()),
            embedding.HASH: text_hashes(texts),
            embedding.EMBEDDING: pa.FixedSizeListArray.from_arrays(pa.array(documents.reshape(-1)), documents.shape[1]),
        }
    )
    range_max = derived_range_max(config, positives.max_positives)
    k = range_max + positives.max_positives + 1
    best = (np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64))
    for start in range(0, table.num_rows, 17):
        block = table.slice(start, 17)
        best = search.merge_top(best, search.block_top(queries, block, k, config.use_faiss), k)
    index = {text: i for i, text in enumerate(positive_texts)}
    pair_scores = np.array(
        [queries[q] @ documents[index[d]] for q, docs in enumerate(positives.positives) for d in docs]
    )
    chosen = select(
        config,
        best[0],
        best[1],
        [text_hashes(d) for d in positives.positives],
        pair_scores,
        range_max,
        text_hashes(positives.queries),
    )
    return output_rows(config, positives, chosen, pair_scores, dict(zip(text_hashes(texts).tolist(), texts)))


@pytest.mark.parametrize("fmt", MINE_FORMATS)
@pytest.mark.parametrize("case", list(FILTER_CASES))
def test_block_search_and_selection_equal_the_library(tiny_bi_encoder, mining_data, fmt, case):
    rows, corpus = mining_data
    settings = dict(FILTER_CASES[case])
    config = MineConfig(pairs=["-"], embedder="-", output="-", output_format=fmt, **settings)
    ours = block_search_mine(tiny_bi_encoder, rows, corpus, config)
    theirs = library_mine(tiny_bi_encoder, rows, corpus, output_format=fmt, **settings)
    assert_same(as_library(ours, fmt, config.output_scores), theirs)


@pytest.mark.parametrize("fmt", ["n-tuple", "labeled-list"])
def test_faiss_search_equals_the_library(tiny_bi_encoder, mining_data, fmt):
    """use_faiss: each block searched by a faiss IndexFlatIP; the library's use_faiss on the same inputs."""
    pytest.importorskip("faiss")
    rows, corpus = mining_data
    settings = {"relative_margin": 0.05, "num_negatives": 4, "output_scores": True}
    config = MineConfig(pairs=["-"], embedder="-", output="-", output_format=fmt, use_faiss=True, **settings)
    ours = block_search_mine(tiny_bi_encoder, rows, corpus, config)
    theirs = library_mine(tiny_bi_encoder, rows, corpus, output_format=fmt, use_faiss=True, **settings)
    assert_same(as_library(ours, fmt, True), theirs)


def test_include_positives_and_no_corpus_equal_the_library(tiny_bi_encoder, mining_data):
    """Without a corpus the positives are the candidates; include_positives keeps them (n-tuple)."""
    rows, _ = mining_data
    config = MineConfig(pairs=["-"], embedder="-", output="-", include_positives=True, num_negatives=4)
    ours = block_search_mine(tiny_bi_encoder, rows, None, config)
    theirs = library_mine(tiny_bi_encoder, rows, None, include_positives=True, num_negatives=4)
    assert_same(as_library(ours, "n-tuple", False), theirs)
    assert any(q == n for q, n in zip(ours["positive"], ours["negative_1"]))  # a positive is its own best candidate


def _read(folder: Path) -> dict[str, list]:
    parts = sorted(folder.glob("*.parquet"))
    assert parts and not list(folder.glob("*.json"))
    return pa.concat_tables([pq.read_table(p) for p in parts]).to_pydict()


@pytest.mark.ray
def test_mine_through_ray_equals_the_library_and_trains(ray_local, tiny_bi_encoder, mining_data, tmp_path, capsys):
    """The command itself: pairs and a corpus in files, Ray Data actors, the block search in Ray
    tasks (two query chunks, blocks of 16 texts), Parquet out; then a positive the corpus lacks."""
    rows, corpus = mining_data
    extra = {"query": "snow rain a", "positive": "a positive in no corpus file"}
    pairs = write_parquet([*rows, extra], tmp_path / "pairs.parquet")
    documents = write_jsonl(
        [{"_id": str(i), "title": "", "text": d} for i, d in enumerate(corpus)], tmp_path / "c.jsonl"
    )
    out = tmp_path / "mined"
    code = main(
        ["mine", "--pairs", str(pairs), "--corpus", str(documents), "--embedder", str(tiny_bi_encoder)]
        + ["--output", str(out), "--format", "n-tuple", "--num-negatives", "3", "--range-min", "1"]
        + ["--relative-margin", "0.02", "--output-scores", "--search-batch-size", "10", "--rows-per-batch", "16"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    theirs = library_mine(
        tiny_bi_encoder,
        [*rows, extra],
        corpus,
        output_format="n-tuple",
        num_negatives=3,
        range_min=1,
        relative_margin=0.02,
        output_scores=True,
    )
    assert_same(as_library(_read(out), "n-tuple", True), theirs)
    summary = json.loads(Path(summary_path(str(out))).read_text())
    assert summary["added_positives"] == 1 and "1 positive(s) not in the corpus files were added" in printed
    assert summary["rows"] == len(theirs["query"]) and summary["queries"] == 19 and summary["pairs"] == len(rows) + 1
    # The output is a training set of tuples, as it stands.
    from rerank_ray.run.driver import inspect_data

    config = Config.from_dict(
        {
            "model": {"name_or_path": str(tiny_bi_encoder)},
            "data": {"train": [str(out)], "columns": {"label": "score"}},
            "train": {"loss": "MarginMSELoss"},
        }
    )
    assert inspect_data(config)["train"].checker.shape.negatives == 3


@pytest.mark.ray
def test_mine_labeled_lists_from_labelled_pairs_without_a_corpus(
    ray_local, tiny_bi_encoder, mining_data, tmp_path, monkeypatch
):
    """Labelled pairs as input (the rows labelled above 0 are the positives), no corpus, random
    sampling, faiss; the embedding actor is killed (SIGKILL) at its second batch: Ray Data restarts it
    and retries the batch, and the output is still the library's, every query once."""
    rows, _ = mining_data
    labelled = [{"sentence_0": r["query"], "sentence_1": r["positive"], "label": 1.0} for r in rows]
    labelled.insert(3, {"sentence_0": rows[0]["query"], "sentence_1": "judged irrelevant", "label": 0.0})
    pairs = write_jsonl(labelled, tmp_path / "pairs.jsonl")
    out = tmp_path / "lists"
    kill = {"dir": str(tmp_path), "faults": [{"name": "embedder-killed", "at": "embed", "step": 2}]}
    monkeypatch.setenv(FAULTS_ENV, json.dumps(kill))
    config = load_mine_config(
        None,
        {
            "pairs": [str(pairs)],
            "embedder": str(tiny_bi_encoder),
            "output": str(out),
            "output_format": "labeled-list",
            "num_negatives": 4,
            "sampling_strategy": "random",
            "range_max": 12,
            "seed": 5,
            "rows_per_batch": 8,
            "use_faiss": True,  # each block searched by faiss in the Ray tasks
        },
    )
    summary = mining.mine(config)
    theirs = library_mine(
        tiny_bi_encoder, rows, None, output_format="labeled-list", num_negatives=4, sampling_strategy="random",
        range_max=12, seed=5,
    )  # fmt: skip
    assert_same(as_library(_read(out), "labeled-list", False), theirs)
    assert summary["added_positives"] is None and summary["output_format"] == "labeled-list"
    assert (tmp_path / "embedder-killed").exists()  # the actor did die


@pytest.mark.ray
def test_cross_encoder_rescoring_equals_the_library(ray_local, tiny_bi_encoder, tiny_bert, mining_data, tmp_path):
    """--cross-encoder: the candidates and positives rescored (score's actors) before the margin,
    as the library rescores them; the scores written are the cross-encoder's."""
    from sentence_transformers import CrossEncoder

    rows, corpus = mining_data
    pairs = write_jsonl(rows, tmp_path / "pairs.jsonl")
    documents = write_jsonl([{"text": d} for d in corpus], tmp_path / "corpus.jsonl")
    out = tmp_path / "rescored"
    settings = {"num_negatives": 3, "absolute_margin": 0.0, "range_max": 12, "output_scores": True}
    config = load_mine_config(
        None,
        {"pairs": [str(pairs)], "corpus": [str(documents)], "embedder": str(tiny_bi_encoder), "output": str(out),
         "cross_encoder": str(tiny_bert), "output_format": "labeled-pair", **settings},
    )  # fmt: skip
    mining.mine(config)
    theirs = library_mine(
        tiny_bi_encoder, rows, corpus, cross_encoder=CrossEncoder(str(tiny_bert)), output_format="labeled-pair",
        **settings,
    )  # fmt: skip
    assert_same(as_library(_read(out), "labeled-pair", True), theirs)


def test_bad_input_is_refused_with_exit_2(tiny_bi_encoder, mining_data, tmp_path, capsys):
    """Each problem named; all are found on the driver, before Ray starts (mine() checks first)."""
    rows, corpus = mining_data
    pairs = write_jsonl(rows, tmp_path / "pairs.jsonl")
    base = ["mine", "--pairs", str(pairs), "--embedder", str(tiny_bi_encoder), "--output", str(tmp_path / "o")]
    cases = {
        "no_text_column": (
            ["--corpus", str(write_jsonl([{"body": c} for c in corpus], tmp_path / "corpus.jsonl"))],
            "has no 'text' column",
        ),
        "window": (["--range-min", "5", "--range-max", "6", "--num-negatives", "3"], "cannot mine 3 negatives"),
        "columns": (["--pairs", str(write_jsonl([{"q": "a", "a": "b"}], tmp_path / "odd.jsonl"))], "--columns"),
        "no_positive": (
            ["--pairs", str(write_jsonl([{"sentence_0": "a", "sentence_1": "b", "label": 0}], tmp_path / "n.jsonl"))],
            "hold no (query, positive) pair",
        ),
        "null_query": (
            ["--pairs", str(write_jsonl([{"query": None, "positive": "b"}], tmp_path / "null.jsonl"))],
            "pair 0: a query and a positive must be text",
        ),
        "negatives": (["--num-negatives", "0"], "mine.num_negatives must be at least 1"),
        "empty_corpus": (["--corpus", str(write_jsonl([], tmp_path / "empty.jsonl"))], "empty.jsonl is empty"),
    }
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "part-0.parquet").write_text("x")
    cases["output_exists"] = (["--output", str(tmp_path / "full")], "holds files already")
    for name, (flags, message) in cases.items():
        assert main(base + flags) == 2, name
        assert message in capsys.readouterr().err, name


def test_a_mine_section_and_flags_make_one_config(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("mine:\n  pairs: a.jsonl\n  embedder: m\n  output: out\n  num_negatives: 7\n  range_max: 50\n")
    config = load_mine_config(path, {"num_negatives": 2})
    assert (config.pairs, config.num_negatives, config.range_max) == (["a.jsonl"], 2, 50)
    with pytest.raises(ConfigError, match="mine.range_mx"):
        load_mine_config(path, {"range_mx": 2})
    with pytest.raises((ConfigError, DataError), match="mine.sampling_strategy"):
        load_mine_config(path, {"sampling_strategy": "best"})
