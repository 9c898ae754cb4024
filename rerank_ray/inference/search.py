"""Exact nearest-neighbour search over embedded blocks in Ray tasks, whatever the corpus' size.

Each task takes a chunk of query vectors and walks the embedded blocks one at a time, keeping
each query's best ``k`` distinct candidates (dot products of normalised embeddings: cosine
similarity, as sentence-transformers scores; with ``use_faiss`` a faiss ``IndexFlatIP`` per
block). A task holds its queries and one block. Used by ``rerank-ray mine`` (candidates keyed by
text hash) and by evaluation's first stage (keyed by document id).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from rerank_ray.data.rows import ORDER
from rerank_ray.inference.embedding import DOCUMENT, EMBEDDING, HASH, POSITIVE, QUERY, keep_roles, matrix


def block_top(
    queries: np.ndarray, block: pa.Table, k: int, use_faiss: bool = False, key: str = HASH
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's best ``k`` distinct candidates (scores, ``key`` values: text hashes unless
    said) of one embedded block."""
    candidates = keep_roles(block, (POSITIVE, DOCUMENT))
    hashes = candidates[key].to_numpy()
    if not len(hashes):
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    # A text twice in a block (a positive that is also in the corpus, a repeated document) is one
    # candidate, as in the library's de-duplicated corpus.
    hashes, first = np.unique(hashes, return_index=True)
    vectors = matrix(candidates[EMBEDDING])[first]
    if use_faiss:
        import faiss

        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(np.ascontiguousarray(vectors))
        scores, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(hashes)))
        return scores, hashes[found]
    scores = queries @ vectors.T
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        return np.take_along_axis(scores, part, 1), hashes[part]
    return scores, np.broadcast_to(hashes, scores.shape)


def merge_top(
    best: tuple[np.ndarray, np.ndarray], more: tuple[np.ndarray, np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` distinct texts of two candidate lists per query, best first. Each list
    holds distinct texts; a text in both (found in two blocks) is kept once."""
    scores = np.concatenate([best[0], more[0]], axis=1)
    hashes = np.concatenate([best[1], more[1]], axis=1)
    by_hash = np.lexsort((-scores, hashes), axis=1)
    scores = np.take_along_axis(scores, by_hash, 1)
    hashes = np.take_along_axis(hashes, by_hash, 1)
    repeated = np.zeros(hashes.shape, dtype=bool)
    repeated[:, 1:] = hashes[:, 1:] == hashes[:, :-1]
    scores[repeated] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(hashes, order, 1)


def search_blocks(
    queries: np.ndarray, blocks: list[Any], k: int, use_faiss: bool = False, key: str = HASH
) -> tuple[np.ndarray, np.ndarray]:
    """A Ray task: the best ``k`` candidates of every block for a chunk of queries, fetching one
    block at a time; padded with ``-inf`` (hash 0) where the corpus has fewer than ``k``."""
    import ray

    best = (np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64))
    for ref in blocks:
        best = merge_top(best, block_top(queries, ray.get(ref), k, use_faiss, key), k)
    missing = k - best[0].shape[1]
    if missing > 0:
        best = (
            np.pad(best[0], ((0, 0), (0, missing)), constant_values=-np.inf),
            np.pad(best[1], ((0, 0), (0, missing)), constant_values=0),
        )
    return best


def own_vectors(embedded: Any, queries: int, positives: int) -> tuple[np.ndarray, np.ndarray]:
    """The queries' and the positives' embeddings, in the order they were given."""
    own = embedded.map_batches(keep_roles, fn_kwargs={"roles": (QUERY, POSITIVE)}, batch_format="pyarrow")
    tables = [t for t in own.iter_batches(batch_format="pyarrow", batch_size=None) if t.num_rows]
    table = pa.concat_tables(tables).sort_by(ORDER)
    vectors = matrix(table[EMBEDDING])
    if len(vectors) != queries + positives:
        raise RuntimeError(f"embedded {len(vectors)} queries and positives, expected {queries + positives}")
    return vectors[:queries], vectors[queries:]


def search(
    embedded: Any, query_vectors: np.ndarray, k: int, chunk: int, use_faiss: bool, key: str = HASH
) -> tuple[np.ndarray, np.ndarray]:
    """Every query's best ``k`` candidates of the embedded blocks: Ray tasks of ``chunk`` queries."""
    import ray

    blocks = embedded.to_arrow_refs()
    task = ray.remote(num_cpus=1)(search_blocks)
    # The block references travel inside a list, so a task fetches them one at a time.
    pending = [
        task.remote(query_vectors[i : i + chunk], blocks, k, use_faiss, key)
        for i in range(0, len(query_vectors), chunk)
    ]
    found = ray.get(pending)
    return np.concatenate([s for s, _ in found]), np.concatenate([h for _, h in found])
