"""First-stage retrieval for retrieve-then-rerank evaluation (``eval.retriever``), in Ray Data.

The BEIR split's queries and the whole corpus are embedded with the bi-encoder by the actors of
``rerank-ray mine`` (:class:`rerank_ray.inference.embedding.Embedder`: the library's ``encode_query`` /
``encode_document``, normalised), and each query's top ``eval.top_k`` documents found by the
same exact block search, here keyed by document id (two documents with one text stay two
candidates, as they are two corpus entries). The result is the (query_id, corpus_id, rank) table
:func:`rerank_ray.evaluation.candidates.apply_candidates` takes; it is computed once per run, before
training, and equals ``sentence_transformers.util.semantic_search`` over the same embeddings
(ties aside; tested).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa

from rerank_ray.config import Config
from rerank_ray.data.beir import BeirFiles, corpus_dataset, document_texts
from rerank_ray.data.rows import ORDER
from rerank_ray.evaluation.ranking import query_hashes
from rerank_ray.inference.embedding import DOCUMENT, QUERY, ROLE, TEXT, Embedder, EmbedderSpec
from rerank_ray.inference.jobs import actor_pool
from rerank_ray.inference.search import own_vectors, search
from rerank_ray.training import faults

#: The embedding stage's key of a document: a 64-bit hash of its corpus id; and the id itself.
DOC_KEY, CORPUS_ID = "doc_key", "corpus_id"
#: Queries per search task.
SEARCH_CHUNK = 1024


def retriever_spec(config: Config) -> EmbedderSpec:
    """The embedding actors' settings for ``eval.retriever``."""
    return EmbedderSpec(
        model=config.eval.retriever or "",
        batch_size=config.eval.retriever_batch_size,
        trust_remote_code=config.model.trust_remote_code,
    )


def document_rows(batch: pa.Table) -> pa.Table:
    """A block of the corpus as embedding-stage rows: text, role, key and id (empty texts too:
    a document is a candidate whatever its text, as in BEIR)."""
    ids = batch["_id"].cast(pa.string())
    return pa.table(
        {
            TEXT: document_texts(batch),
            ROLE: pa.array(np.full(batch.num_rows, DOCUMENT, np.int8)),
            ORDER: pa.array(np.full(batch.num_rows, -1, np.int64)),
            DOC_KEY: pa.array(query_hashes(ids.to_pylist()), pa.int64()),
            CORPUS_ID: ids,
        }
    )


def pick_ids(batch: pa.Table, wanted: np.ndarray) -> pa.Table:
    """The (key, corpus id) rows of a block whose key is wanted."""
    import pyarrow.compute as pc

    return batch.select([DOC_KEY, CORPUS_ID]).filter(pc.is_in(batch[DOC_KEY], pa.array(wanted, pa.int64())))


def retrieve(config: Config, beir: BeirFiles) -> pa.Table:
    """Each of the split's queries' top ``eval.top_k`` documents: (query_id, corpus_id, rank)."""
    import ray
    import ray.data

    started = time.perf_counter()
    queries = beir.query_texts()
    query_ids, query_texts = queries["query_id"].to_pylist(), queries["sentence_0"].to_pylist()
    gpus = int(ray.cluster_resources().get("GPU", 0))
    settings = retriever_spec(config)
    print(
        f"[rerank-ray] {beir.what}: embedding {len(query_texts)} queries and {beir.corpus} with "
        f"{config.eval.retriever} on {max(1, gpus)} {'GPU' if gpus else 'CPU'} actor(s), then the top "
        f"{config.eval.top_k} of the corpus for each query",
        flush=True,
    )
    own = pa.table(
        {
            TEXT: pa.array(query_texts, pa.string()),
            ROLE: pa.array(np.full(len(query_texts), QUERY, np.int8)),
            ORDER: pa.array(np.arange(len(query_texts)), pa.int64()),
            DOC_KEY: pa.array(np.zeros(len(query_texts), np.int64)),
            CORPUS_ID: pa.array([""] * len(query_texts), pa.string()),
        }
    )
    texts = ray.data.from_arrow(own).union(corpus_dataset(beir).map_batches(document_rows, batch_format="pyarrow"))
    embedded = texts.map_batches(
        Embedder,
        fn_constructor_kwargs={"spec": settings.as_dict(), "test_faults": faults.from_environment()},
        batch_size=settings.rows_per_batch,
        batch_format="pyarrow",
        **actor_pool(max(1, gpus), gpus, settings.cpus_per_actor),
    ).materialize()
    query_vectors, _ = own_vectors(embedded, len(query_texts), 0)
    scores, keys = search(embedded, query_vectors, config.eval.top_k, SEARCH_CHUNK, use_faiss=False, key=DOC_KEY)
    found = np.isfinite(scores)  # a corpus smaller than top_k pads with -inf
    ids = _ids_of(embedded, keys[found])
    rows = np.nonzero(found)
    table = pa.table(
        {
            "query_id": pa.array([query_ids[q] for q in rows[0]], pa.string()),
            "corpus_id": pa.array([ids[k] for k in keys[found].tolist()], pa.string()),
            "rank": pa.array(rows[1] + 1, pa.int32()),
        }
    )
    print(
        f"[rerank-ray] {beir.what}: {config.eval.retriever} retrieved the top {config.eval.top_k} of "
        f"{embedded.count() - len(query_texts)} documents for {len(query_texts)} queries "
        f"in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return table


def _ids_of(embedded: Any, keys: np.ndarray) -> dict[int, str]:
    """key -> corpus id of the found documents, looked up in the embedded blocks."""
    wanted = np.unique(keys)
    picked = embedded.map_batches(pick_ids, fn_kwargs={"wanted": wanted}, batch_format="pyarrow")
    ids: dict[int, str] = {}
    for table in picked.iter_batches(batch_format="pyarrow", batch_size=None):
        ids.update(zip(table[DOC_KEY].to_pylist(), table[CORPUS_ID].to_pylist()))
    return ids
