"""First-stage candidates of a BEIR eval set: retrieve-then-rerank evaluation.

By default a BEIR query's candidates are its judged documents. The standard protocol (BEIR's
reranking, sentence-transformers' CrossEncoderNanoBEIREvaluator) instead reranks the top-k
documents a first-stage retriever returns from the whole corpus, an unjudged document counting as
non-relevant. The candidates come from a TREC run file (``eval.run_file``, read here) or from a
bi-encoder over the corpus (``eval.retriever``, :mod:`rerank_ray.evaluation.retrieval`); either way they
are a table of (query_id, corpus_id, rank) that :func:`apply_candidates` turns into the eval
pairs' judgements: each candidate labelled with its qrels judgement, 0 where unjudged.

Metrics follow the library's CrossEncoderRerankingEvaluator given ranked ``documents``: MAP and
nDCG are normalised by all of a query's judged positives, retrieved or not
(:func:`rerank_ray.evaluation.ranking.reranking_metrics`' ``judged``), and the retriever's own
ranking is scored too (``<name>_base_ndcg@10``, ...), once, on the driver. With
``eval.always_rerank_positives`` the judged positives the retriever missed are added to the
candidates, as the library's ``always_rerank_positives=True`` adds them (an upper bound of what
reranking can reach, not the retrieve-then-rerank figure).

This module owns the TREC run format: ``query_id Q0 corpus_id rank score tag`` per line, fields
split on any whitespace; each query's top ``eval.top_k`` by score (ties by the file's rank).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from rerank_ray import storage
from rerank_ray.data.beir import BeirFiles, Retrieval
from rerank_ray.errors import DataError
from rerank_ray.evaluation.ranking import query_hashes, reranking_metrics

#: Fields of a TREC run file line.
RUN_FIELDS = ("query_id", "Q0", "corpus_id", "rank", "score", "tag")
#: Queries named in a message.
SHOWN = 3


def read_run_file(path: str, top_k: int, queries: set[str] | None = None) -> pa.Table:
    """Each query's best ``top_k`` documents of a TREC run file: (query_id, corpus_id, rank), rank
    1 the best. ``queries``: keep only these. Fails naming the file and line of a bad line."""
    rows: dict[str, list[tuple[float, float, str]]] = {}
    try:
        for number, line in enumerate(_lines(path), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != len(RUN_FIELDS):
                raise DataError(
                    f"eval.run_file: {path} line {number} has {len(fields)} fields, a TREC run line has "
                    f"{len(RUN_FIELDS)} ({' '.join(RUN_FIELDS)}): {line.strip()[:120]!r}"
                )
            if queries is not None and fields[0] not in queries:
                continue
            try:
                score, rank = float(fields[4]), float(fields[3])
            except ValueError:
                raise DataError(
                    f"eval.run_file: {path} line {number}: rank {fields[3]!r} and score {fields[4]!r} must be "
                    "numbers (query_id Q0 corpus_id rank score tag)"
                ) from None
            rows.setdefault(fields[0], []).append((-score, rank, fields[2]))
    except OSError as err:
        raise DataError(f"eval.run_file: cannot read {path}: {err}") from err
    except UnicodeDecodeError as err:
        raise DataError(f"eval.run_file: {path} is not UTF-8 text ({err})") from err
    query_ids: list[str] = []
    corpus_ids: list[str] = []
    ranks: list[int] = []
    for query, found in rows.items():
        kept: list[str] = []
        for _, _, document in sorted(found):  # best score first, ties by the file's rank
            if document not in kept:  # a document listed twice is one candidate
                kept.append(document)
            if len(kept) == top_k:
                break
        query_ids += [query] * len(kept)
        corpus_ids += kept
        ranks += range(1, len(kept) + 1)
    return pa.table(
        {
            "query_id": pa.array(query_ids, pa.string()),
            "corpus_id": pa.array(corpus_ids, pa.string()),
            "rank": pa.array(ranks, pa.int32()),
        }
    )


def _lines(path: str) -> Iterator[str]:
    """The lines of a local file or of one in object storage (``s3://...``: a search writes its
    retriever's candidates next to its trials, where every node reads them)."""
    if not storage.is_uri(path):
        with open(path, encoding="utf-8") as f:
            yield from f
        return
    fs, inner = storage.filesystem(path)
    with fs.open_input_stream(inner) as stream:
        yield from stream.read().decode("utf-8").splitlines()


def write_run_file(candidates: pa.Table, path: str, tag: str) -> None:
    """(query_id, corpus_id, rank) as a TREC run file (a local path or a URI), best first, each
    score 1 / rank: what :func:`read_run_file` reads back as the same candidates."""
    lines = [
        f"{query} Q0 {document} {rank} {1.0 / rank:.10g} {tag}\n"
        for query, document, rank in zip(
            candidates["query_id"].to_pylist(), candidates["corpus_id"].to_pylist(), candidates["rank"].to_pylist()
        )
    ]
    fs, inner = storage.filesystem(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(inner) as stream:
        stream.write("".join(lines).encode("utf-8"))


def apply_candidates(beir: BeirFiles, candidates: pa.Table, retrieval: Retrieval) -> None:
    """Make ``candidates`` (query_id, corpus_id, rank) the eval pairs of ``beir``: each labelled
    with its judgement (0 where unjudged; a negative judgement counts 0 too, as in trec_eval),
    the judged positives noted for the metrics, and added to the candidates with
    ``always_rerank_positives``. Sets ``beir.judgements`` and ``beir.retrieval``."""
    import pyarrow.compute as pc

    judged = beir.judgements
    texts = beir.query_texts()
    split_queries = set(texts["query_id"].to_pylist())
    candidates = candidates.select(["query_id", "corpus_id", "rank"]).cast(
        pa.schema([("query_id", pa.string()), ("corpus_id", pa.string()), ("rank", pa.int32())])
    )
    candidates = candidates.filter(pc.is_in(candidates["query_id"], pa.array(sorted(split_queries), pa.string())))
    labels = judged.select(["query_id", "corpus_id", "label"])
    pairs = candidates.join(labels, keys=["query_id", "corpus_id"], join_type="left outer")
    pairs = pairs.set_column(
        pairs.schema.get_field_index("label"), "label", pc.max_element_wise(pc.fill_null(pairs["label"], 0.0), 0.0)
    )
    positives = judged.filter(pc.greater(judged["label"], 0))
    if retrieval.always_rerank_positives:
        missing = positives.select(["query_id", "corpus_id", "label"]).join(
            candidates.select(["query_id", "corpus_id"]), keys=["query_id", "corpus_id"], join_type="left anti"
        )
        retrieval.added_positives = missing.num_rows
        # Listed after the retrieved documents; their rank (beyond top_k) plays no part in the
        # retriever's own metrics, which score only what it returned.
        missing = missing.append_column("rank", pa.array([0] * missing.num_rows, pa.int32()))
        pairs = pa.concat_tables([pairs, missing.select(pairs.column_names)])
    with_candidates = set(pairs["query_id"].to_pylist())
    retrieval.queries_without_candidates = sorted(split_queries - with_candidates)
    if not with_candidates:
        raise DataError(
            f"{beir.what}: {retrieval.source} returns no document for any of the {len(split_queries)} queries of "
            f"{beir.qrels}: check that its query ids are the qrels' (e.g. {sorted(split_queries)[:SHOWN]})"
        )
    if retrieval.queries_without_candidates:
        print(
            f"[rerank-ray] {beir.what}: {retrieval.source} returns nothing for {len(retrieval.queries_without_candidates)}"
            f" of {len(split_queries)} queries ({', '.join(retrieval.queries_without_candidates[:SHOWN])}"
            f"{', ...' if len(retrieval.queries_without_candidates) > SHOWN else ''}): left out of the evaluation",
            flush=True,
        )
    beir.judgements = pairs.join(texts, keys="query_id", join_type="inner").sort_by([("query_id", "ascending")])
    evaluated = positives.filter(pc.is_in(positives["query_id"], pa.array(sorted(with_candidates), pa.string())))
    retrieval.judged_groups = query_hashes(evaluated["query_id"].to_pylist()).tolist()
    retrieval.judged_gains = evaluated["label"].to_numpy().astype(float).tolist()
    beir.retrieval = retrieval


def retriever_metrics(beir: BeirFiles, name: str, at_k: int, dropped: np.ndarray | None = None) -> dict[str, float]:
    """The retriever's ranking scored as the library scores ``documents`` before reranking (its
    order the scores, only what it returned, normalised by all judged positives), under the
    library's names (``<name>_base_ndcg@k``, ...); ``dropped``: group ids left out."""
    assert beir.retrieval is not None
    pairs = beir.judgements
    retrieved = pairs.filter(pa.array(pairs["rank"].to_numpy() > 0))
    groups = query_hashes(retrieved["query_id"].to_pylist())
    keep = ~np.isin(groups, dropped) if dropped is not None and len(dropped) else np.ones(len(groups), dtype=bool)
    ranks = retrieved["rank"].to_numpy().astype(np.float64)
    labels = retrieved["label"].to_numpy().astype(np.float64)
    metrics = reranking_metrics(
        groups[keep], -ranks[keep], labels[keep], f"{name}_base", at_k, judged=beir.retrieval.judged()
    )
    # A query whose candidates are only added positives (always_rerank_positives) got nothing
    # from the retriever: 0 in its metrics, as the library scores an empty ``documents`` list.
    evaluated = np.unique(query_hashes(pairs["query_id"].to_pylist()))
    if dropped is not None and len(dropped):
        evaluated = evaluated[~np.isin(evaluated, dropped)]
    share = len(np.unique(groups[keep])) / len(evaluated)
    beir.retrieval.base = {key: value * share for key, value in metrics.items()}
    return beir.retrieval.base
