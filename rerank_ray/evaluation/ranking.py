"""Reranking evaluation: the query of every eval pair travels with it, metrics are computed per query.

A reranking eval set is a set of queries, each with its candidate documents (positives and
negatives) as ordinary pairs. Each row of the eval stream carries ``group_id``, a 64-bit hash of
its query (the ``eval.query_id_column`` value, or the ``sentence_0`` text), computed in the Ray
Data stream: no pass over the whole set is needed to number the queries. Each worker scores its
own shard; rank 0 gathers only (group_id, score, label), 20 bytes a pair, and computes the
per-query metrics here. Nobody scores the whole eval set on one rank, so rank 0 needs no more
memory than the others (the known trouble of CrossEncoderRerankingEvaluator under DDP).

The metrics are sentence-transformers' CrossEncoderRerankingEvaluator's: its own per-query
``compute_metrics`` (MRR@k, nDCG@k and average precision via scikit-learn) on the query's
candidates in the order it builds them (positives first), averaged over all queries, a query
without any positive counting 0, as there. Where the labels are graded (any label other than 0
and 1), ``ndcg@k`` uses them as gains (scikit-learn's ``ndcg_score``, linear gains, as BEIR's
pytrec_eval) and the library's binary figure is kept as ``ndcg@k_binary``; MAP and MRR count any
label above 0 as relevant.

Retrieve-then-rerank (``eval.retriever`` / ``eval.run_file``): a query's candidates are what a
first-stage retriever returned, so some of its judged positives may be missing. As in the
library's evaluator given ``documents``, MAP and nDCG are then normalised by all the query's
judged positives (``judged``: the gain of each, per query), not only those among its candidates:
the ideal DCG is that of the judged gains, and average precision counts a missing positive as
never found.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: The canonical column that names a pair's query, when a column does (``eval.query_id_column``, BEIR).
QUERY_ID = "query_id"


def query_hashes(values: list[Any]) -> np.ndarray:
    """64-bit ids of query names (or texts): the same in every process, no shared numbering needed.
    Two different queries share an id with probability about n^2 / 2^65 (1e-8 for a million)."""
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(str(value).encode("utf-8"), digest_size=8).digest(), "little", signed=True)
            for value in values
        ],
        dtype=np.int64,
    )


def reranking_metrics(
    groups: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    name: str,
    at_k: int = 10,
    judged: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, float]:
    """MAP, MRR@k and nDCG@k over queries, as CrossEncoderRerankingEvaluator computes them.

    ``judged``: (query id, gain) of every judged positive of the queries, those missing from the
    candidates included; None: a query's positives are those among its candidates.

    nDCG and MAP are written out with numpy rather than by calling the evaluator's per-query
    ``compute_metrics``: that makes two scikit-learn calls per query (about 15 ms here: 2.5
    minutes for 10,000 queries, with every other rank waiting). Their definitions are
    scikit-learn's, ties included: nDCG averages the gains of tied documents (``ndcg_score``),
    average precision takes tied documents together (``average_precision_score``). MRR depends on
    how a tie is broken, and the library breaks it with ``np.argsort`` (not a stable sort) over the
    query's positives listed before its negatives; :func:`_mrr` does exactly that, per query.
    """
    given_scores = np.asarray(scores).reshape(-1)  # MRR's argsort sees the dtype the library sees
    scores = given_scores.astype(np.float64)
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    if (labels < 0).any():
        raise ValueError(f"eval.kind reranking needs relevance labels >= 0; found {labels[labels < 0][0]}")
    if len(scores) == 0:
        raise ValueError("the eval set is empty: nothing to evaluate")
    _, query = np.unique(np.asarray(groups), return_inverse=True)
    ranking = _Ranking(query.reshape(-1), scores, labels)
    known = _Judged(np.unique(np.asarray(groups)), judged, ranking) if judged is not None else None
    single = int(((ranking.candidates < 2) & (ranking.positives > 0)).sum())
    if single:
        raise ValueError(
            f"{single} eval queries have a single candidate: reranking needs at least 2 per query "
            "(nDCG is undefined for one); check eval.query_id_column or drop those queries"
        )
    answered = ranking.positives > 0
    judged_positive = known.positives > 0 if known else answered
    if not judged_positive.all():
        logger.warning(
            "%d of %d eval queries have no positive; they count as 0", (~judged_positive).sum(), len(answered)
        )

    ndcg_binary = ranking.ndcg((labels > 0).astype(np.float64), at_k, known.ideal(at_k, binary=True) if known else None)
    per_query = {
        "map": ranking.average_precision(known.positives if known else None),
        f"mrr@{at_k}": _mrr(ranking, given_scores, labels > 0, at_k),
        f"ndcg@{at_k}": ndcg_binary,
    }
    graded = not np.isin(labels, (0.0, 1.0)).all() or (known is not None and known.graded)
    if graded:  # the gains count
        per_query[f"ndcg@{at_k}"] = ranking.ndcg(labels, at_k, known.ideal(at_k, binary=False) if known else None)
        per_query[f"ndcg@{at_k}_binary"] = ndcg_binary
    # A query without a positive counts 0 in the mean, as in the library.
    return {f"{name}_{key}": float(np.mean(np.where(answered, value, 0.0))) for key, value in per_query.items()}


class _Ranking:
    """Every query's candidates sorted by score (descending) in one flat array, with the tie blocks
    (same query, same score) that scikit-learn's metrics average over."""

    def __init__(self, query: np.ndarray, score: np.ndarray, label: np.ndarray):
        self.num_queries = int(query.max()) + 1
        self.query_by_row = query
        self.order = np.lexsort((-score, query))
        self.query, self.label = query[self.order], label[self.order]
        self.candidates = np.bincount(query, minlength=self.num_queries)
        self.positives = np.bincount(query, weights=(label > 0), minlength=self.num_queries)
        starts = np.concatenate([[0], np.cumsum(self.candidates)[:-1]])
        self.position = np.arange(len(query)) - starts[self.query]
        sorted_score = score[self.order]
        new_block = np.ones(len(query), dtype=bool)
        new_block[1:] = (self.query[1:] != self.query[:-1]) | (sorted_score[1:] != sorted_score[:-1])
        self.block = np.cumsum(new_block) - 1
        self.block_query = self.query[new_block]
        self.block_size = np.bincount(self.block).astype(np.float64)

    def ndcg(self, gains_by_row: np.ndarray, at_k: int, ideal: np.ndarray | None = None) -> np.ndarray:
        """scikit-learn's ndcg_score(k=at_k) of each query: tie-averaged DCG over the ideal DCG
        (that of the candidates' gains, or ``ideal`` per query)."""
        discount = _discount(self.position, at_k)
        block_gain = np.bincount(self.block, weights=gains_by_row[self.order]) / self.block_size
        dcg = self._per_query(block_gain * np.bincount(self.block, weights=discount))
        if ideal is None:
            # The ideal ranking: gains high to low within each query, the same discounts by position.
            ideal_order = np.lexsort((-gains_by_row, self.query_by_row))
            ideal = np.bincount(
                self.query_by_row[ideal_order], weights=gains_by_row[ideal_order] * discount, minlength=self.num_queries
            )
        return np.divide(dcg, ideal, out=np.zeros_like(dcg), where=ideal > 0)

    def average_precision(self, positives: np.ndarray | None = None) -> np.ndarray:
        """scikit-learn's average_precision_score of each query: the precision at each tie block
        that holds positives, weighted by the share of the positives it adds; with ``positives``
        (per query, those missing from the candidates included), scaled by the share found, as
        the library scales it."""
        block_hits = np.bincount(self.block, weights=(self.label > 0))
        hits_so_far = _cumsum_within(block_hits, self.block_query)
        seen_so_far = _cumsum_within(self.block_size, self.block_query)
        gained = self._per_query(block_hits * hits_so_far / seen_so_far)
        total = self.positives if positives is None else np.maximum(positives, self.positives)
        return np.divide(gained, total, out=np.zeros_like(gained), where=total > 0)

    def _per_query(self, per_block: np.ndarray) -> np.ndarray:
        return np.bincount(self.block_query, weights=per_block, minlength=self.num_queries)


class _Judged:
    """Every judged positive of the evaluated queries (``judged`` of :func:`reranking_metrics`),
    in the ranking's query numbering; queries that are not evaluated are ignored."""

    def __init__(self, evaluated: np.ndarray, judged: tuple[np.ndarray, np.ndarray], ranking: _Ranking):
        groups, gains = (np.asarray(judged[0]).reshape(-1), np.asarray(judged[1], dtype=np.float64).reshape(-1))
        keep = (gains > 0) & np.isin(groups, evaluated)
        self.query = np.searchsorted(evaluated, groups[keep])
        self.gains = gains[keep]
        self.num_queries = ranking.num_queries
        self.positives = np.bincount(self.query, minlength=self.num_queries).astype(np.float64)
        self.graded = bool(len(self.gains)) and not np.isin(self.gains, (1.0,)).all()

    def ideal(self, at_k: int, binary: bool) -> np.ndarray:
        """The ideal DCG@k of each query: its judged gains high to low (1 each when ``binary``,
        as the library's ``min(num_positives, k)`` ones)."""
        gains = np.ones_like(self.gains) if binary else self.gains
        order = np.lexsort((-gains, self.query))
        starts = np.concatenate([[0], np.cumsum(np.bincount(self.query, minlength=self.num_queries))[:-1]])
        position = np.arange(len(order)) - starts[self.query[order]]
        return np.bincount(
            self.query[order], weights=gains[order] * _discount(position, at_k), minlength=self.num_queries
        )


def _discount(position: np.ndarray, at_k: int) -> np.ndarray:
    """sklearn's DCG discount, 1 / log2(rank + 2), written as it does, zero from rank k on."""
    return np.where(position < at_k, 1.0 / (np.log(position + 2) / np.log(2)), 0.0)


def _mrr(ranking: _Ranking, scores: np.ndarray, relevant: np.ndarray, at_k: int) -> np.ndarray:
    """The library's MRR@k of each query: its positives then its negatives (each in the order
    given), ranked by ``np.argsort(scores)[::-1]``. A loop over queries, but of one small argsort
    each (microseconds), so that ties break exactly as in the library."""
    listed = np.lexsort((~relevant, ranking.query_by_row))  # per query: positives first, stable
    bounds = np.cumsum(ranking.candidates)[:-1]
    mrr = np.zeros(ranking.num_queries)
    for query, rows in enumerate(np.split(listed, bounds)):
        if ranking.positives[query] == 0:
            continue
        top = np.argsort(scores[rows])[::-1][:at_k]
        hits = np.flatnonzero(relevant[rows][top])
        mrr[query] = 1.0 / (hits[0] + 1) if len(hits) else 0.0
    return mrr


def _cumsum_within(values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Running sums of ``values`` that restart at each query (``query`` sorted)."""
    total = np.cumsum(values)
    starts = np.flatnonzero(np.concatenate([[True], query[1:] != query[:-1]]))
    before = np.concatenate([[0.0], total])[starts]
    return total - np.repeat(before, np.diff(np.append(starts, len(values))))
