"""The queries of a reranking eval set, counted on the driver before Ray starts.

A query with a single candidate cannot be ranked (nDCG is undefined for one document, and
sentence-transformers' CrossEncoderRerankingEvaluator fails on it); found only at the first
evaluation, it used to cost a run its start-up, the model load and a screen of tracebacks. Eval
sets are small, so the driver reads every eval row's query and label (through the same reader and
row checks as the stream, so the keys are the stream's) and counts each query's candidates and
positives. By default a single-candidate query is refused naming how many and a few of them, and
a query without a positive counts 0 in the mean, as in the library; ``eval.drop_unrankable``
leaves both kinds out of the evaluation instead, counted in the log, the card and
``metrics.json``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from rerank_ray.data.checks import RowChecker
from rerank_ray.data.reading import open_local_or_uri, read_file
from rerank_ray.evaluation.ranking import query_hashes

#: Queries named in a message.
SHOWN = 3


@dataclass
class EvalQueries:
    """Each query's candidates and positives, and the queries left out (``eval.drop_unrankable``)."""

    total: int
    single_candidate: list[str]
    """Queries with one candidate (and a positive): no ranking to score."""
    without_positive: list[str]
    """Queries none of whose candidates is relevant: 0 in every metric."""
    dropped_hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """The stream's ``group_id`` of every query left out."""
    dropped_rows: int = 0
    """Eval rows of the queries left out (bad rows kept as placeholders included)."""

    def dropped(self) -> dict[str, int]:
        """Queries left out, by reason (empty when none are)."""
        if not len(self.dropped_hashes):
            return {}
        return {"single_candidate": len(self.single_candidate), "without_positive": len(self.without_positive)}


def count_queries(keys: list[str], labels: np.ndarray, good: np.ndarray, drop: bool) -> EvalQueries:
    """Count the queries of rows (``keys`` the query of each row, ``good`` False for bad rows kept
    as placeholders); with ``drop``, note the unrankable ones and their rows to leave out."""
    candidates = Counter(k for k, ok in zip(keys, good) if ok)
    positives = Counter(k for k, ok, label in zip(keys, good, labels) if ok and label > 0)
    single = sorted(k for k, n in candidates.items() if n < 2 and positives[k] > 0)
    without = sorted(k for k in candidates if positives[k] == 0)
    queries = EvalQueries(total=len(candidates), single_candidate=single, without_positive=without)
    if drop and (single or without):
        left_out = set(single) | set(without)
        queries.dropped_hashes = query_hashes(sorted(left_out))
        queries.dropped_rows = sum(1 for k in keys if k in left_out)
    return queries


def read_queries(files: list[str], fmt: str, checker: RowChecker, key: str, drop: bool) -> EvalQueries:
    """The queries of an eval split of pair files, ``key`` the column naming a row's query
    (``query_id`` or ``sentence_0``), read in full on the driver."""
    keys: list[str] = []
    labels, good = [], []
    for index, path in enumerate(files):
        for chunk in read_file(open_local_or_uri(path, fmt), fmt, index, checker):
            keys.extend(str(k) for k in chunk.column(key).to_pylist())
            labels.append(chunk.column("label").to_numpy())
            good.append(chunk.column("skip").to_numpy() == 0)
    return count_queries(keys, np.concatenate(labels) if labels else np.zeros(0), np.concatenate(good or [[]]), drop)


def describe(keys: list[str]) -> str:
    """``'q1', 'q7', 'q9' and 4 more``: a few of ``keys`` for a message."""
    shown = ", ".join(repr(k if len(k) <= 60 else k[:57] + "...") for k in keys[:SHOWN])
    return shown + (f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")
