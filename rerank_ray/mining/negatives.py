"""Choosing hard negatives from each query's nearest candidates, and the rows that hold them:
the selection of ``sentence_transformers.util.mine_hard_negatives``, on candidates found
elsewhere (:mod:`rerank_ray.mining.mine` finds them with Ray).

The library's function embeds, searches, selects and builds its dataset in one call, so its
selection cannot be called on its own; this is the same selection, step for step (positives
masked, margins against the hardest positive, score bounds, ``range_min``/``range_max``, top or
seeded random sampling) on the same tensors, and ``tests/test_mine.py`` compares the negatives
both choose on the same inputs, for each output format and each filter. Candidates are named by
the hash of their text (:func:`text_hashes`) where the library names them by their index in its
de-duplicated corpus: equal texts are one candidate in both.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rerank_ray.inference.embedding import text_hashes
from rerank_ray.mining.config import MineConfig

__all__ = [
    "FILTERS",
    "Positives",
    "Selection",
    "check_range",
    "derived_range_max",
    "output_rows",
    "select",
    "text_hashes",
]

#: The filters in the order the library applies (and reports) them.
FILTERS = ("absolute_margin", "relative_margin", "max_score", "min_score")


@dataclass
class Positives:
    """The (query, positive) pairs, de-duplicated as the library does: queries in order of first
    appearance, each with its distinct positives in order."""

    queries: list[str]
    positives: list[list[str]]
    source_rows: int = 0
    """Pairs read (before de-duplication)."""
    max_positives: int = 1
    """The most pairs one query has, duplicates counted (as the library counts them: it sizes
    the candidate window)."""

    @classmethod
    def from_pairs(cls, queries: list[str], positives: list[str]) -> Positives:
        by_query: dict[str, list[str]] = {}
        rows: dict[str, int] = {}
        for query, positive in zip(queries, positives):
            docs = by_query.setdefault(query, [])
            rows[query] = rows.get(query, 0) + 1
            if positive not in docs:
                docs.append(positive)
        return cls(list(by_query), list(by_query.values()), len(queries), max(rows.values(), default=1))


def derived_range_max(config: MineConfig, max_positives: int) -> int:
    """``range_max`` as the library derives it when it is not given: room for ten times the
    negatives when a filter may drop candidates."""
    if config.range_max is not None:
        return config.range_max
    filtering = (
        config.absolute_margin is not None
        or config.relative_margin is not None
        or config.max_score is not None
        or (config.cross_encoder is not None and config.min_score is not None)
    )
    negatives = config.num_negatives * 10 if filtering else config.num_negatives
    return config.range_min + negatives + max_positives


def check_range(config: MineConfig, range_max: int) -> str | None:
    """The library's checks of the candidate window; the error message, or None."""
    if config.range_min >= range_max:
        return (
            f"mine.range_min must be smaller than mine.range_max, got range_min={config.range_min} and "
            f"range_max={range_max}"
        )
    if config.num_negatives > range_max - config.range_min:
        return (
            f"cannot mine {config.num_negatives} negatives per query: only {range_max - config.range_min} candidates "
            f"remain after skipping the first range_min={config.range_min} of range_max={range_max}; decrease "
            "mine.num_negatives or mine.range_min, or increase mine.range_max"
        )
    return None


@dataclass
class Selection:
    """Each query's chosen negatives (hashes, similarity; ``-inf`` where none was found) and what
    the filters skipped."""

    hashes: np.ndarray
    scores: np.ndarray
    skipped: dict[str, int] = field(default_factory=dict)
    candidates: int = 0


def select(
    config: MineConfig,
    scores: np.ndarray,
    hashes: np.ndarray,
    positive_hashes: list[np.ndarray],
    positive_scores: np.ndarray,
    range_max: int,
    query_hashes: np.ndarray | None = None,
) -> Selection:
    """The library's selection on each query's candidates.

    ``scores`` / ``hashes``: [queries, range_max + max_positives + 1], best first, padded with
    ``-inf``; ``positive_hashes``: each query's positives; ``positive_scores``: the similarity of
    every (query, positive) pair, query after query; ``query_hashes``: each query's text hash, so
    that a document that is the query's own text is no candidate (sentence-transformers >= 6.3,
    which searches one candidate more for it), unless the query is its own positive and
    ``include_positives`` keeps positives."""
    import torch

    score = torch.from_numpy(np.array(scores, dtype=np.float32))
    names = torch.from_numpy(np.array(hashes, dtype=np.int64))
    if query_hashes is not None:
        own = torch.from_numpy(np.asarray(query_hashes, dtype=np.int64))[:, None]
        is_query = names == own
        if config.include_positives:
            own_positive = torch.tensor([bool(np.isin(q, p)) for q, p in zip(query_hashes, positive_hashes)])
            is_query &= ~own_positive[:, None]
        score[is_query] = -float("inf")
    if not config.include_positives:
        mask = torch.stack([torch.isin(names[q], torch.from_numpy(p)) for q, p in enumerate(positive_hashes)])
        score[mask] = -float("inf")
    candidates = score.numel()
    skipped: dict[str, int] = {}

    def drop(name: str, removed: torch.Tensor) -> None:
        score[removed] = -float("inf")
        count = int(removed.sum())
        if count:
            skipped[name] = count

    if config.absolute_margin is not None or config.relative_margin is not None:
        # The hardest (least similar) positive sets the margin, as in the library.
        counts = [len(p) for p in positive_hashes]
        per_query = torch.from_numpy(np.asarray(positive_scores, dtype=np.float32)).split(counts)
        hardest = torch.stack([s.min() for s in per_query])[:, None]
        if config.absolute_margin is not None:
            drop("absolute_margin", score + config.absolute_margin > hardest)
        if config.relative_margin is not None:
            drop("relative_margin", score > hardest - hardest.abs() * config.relative_margin)
    if config.max_score is not None:
        drop("max_score", score > config.max_score)
    if config.min_score is not None:
        drop("min_score", score < config.min_score)

    best, local = torch.topk(score, k=min(range_max, score.size(1)), dim=1)
    chosen = names.gather(1, local)[:, config.range_min :]
    best = best[:, config.range_min :]
    if config.sampling_strategy == "top":
        chosen, best = chosen[:, : config.num_negatives], best[:, : config.num_negatives]
    else:
        # The library draws with random.sample, row after row, from the candidates that are not
        # -inf (at least num_negatives of them); a seeded Random draws the same for the same seed.
        rng = random.Random(config.seed)
        options = (best.size(1) - best.isinf().sum(1)).clamp(min=config.num_negatives)
        rows = torch.arange(best.size(0))[:, None]
        sampled = torch.tensor([rng.sample(range(int(n)), k=config.num_negatives) for n in options])
        chosen, best = chosen[rows, sampled], best[rows, sampled]
        best, order = best.sort(dim=1, descending=True)
        chosen = chosen[rows, order]
    return Selection(chosen.numpy(), best.numpy(), skipped, candidates)


def output_rows(
    config: MineConfig,
    positives: Positives,
    selection: Selection,
    positive_scores: np.ndarray,
    texts: dict[int, str],
) -> dict[str, list[Any]]:
    """The mined rows in ``config.output_format``, in the library's row order, under the
    canonical column names ``rerank-ray train`` reads (the library keeps the input's names and
    replaces the labels by the scores; here ``score`` is added beside the labels)."""
    columns: dict[str, list[Any]]
    fmt = "n-tuple" if config.include_positives else config.output_format
    found = ~np.isinf(selection.scores)
    pair_scores = iter(np.asarray(positive_scores, dtype=np.float64).tolist())
    if fmt == "labeled-pair":
        columns = {"sentence_0": [], "sentence_1": [], "label": [], "score": []}
        for q, query in enumerate(positives.queries):
            for doc in positives.positives[q]:
                _append(columns, sentence_0=query, sentence_1=doc, label=1.0, score=next(pair_scores))
            for name, value, keep in zip(selection.hashes[q], selection.scores[q], found[q]):
                if keep:
                    _append(columns, sentence_0=query, sentence_1=texts[int(name)], label=0.0, score=float(value))
    else:
        columns = {"query": [], "positive": [], "score": []}
        if fmt == "n-tuple":
            columns.update({f"negative_{i}": [] for i in range(1, config.num_negatives + 1)})
        elif fmt == "triplet":
            columns["negative"] = []
        else:
            columns = {"query": [], "documents": [], "labels": [], "score": []}
        for q, query in enumerate(positives.queries):
            negatives = [texts[int(h)] for h, keep in zip(selection.hashes[q], found[q]) if keep]
            negative_scores = [float(s) for s, keep in zip(selection.scores[q], found[q]) if keep]
            for doc in positives.positives[q]:
                positive_score = next(pair_scores)
                if fmt == "triplet":
                    for negative, value in zip(negatives, negative_scores):
                        _append(columns, query=query, positive=doc, negative=negative, score=[positive_score, value])
                elif fmt == "n-tuple" and len(negatives) == config.num_negatives:
                    numbered = {f"negative_{i}": text for i, text in enumerate(negatives, start=1)}
                    _append(columns, query=query, positive=doc, **numbered, score=[positive_score, *negative_scores])
                elif fmt == "labeled-list" and negatives:
                    _append(
                        columns,
                        query=query,
                        documents=[doc, *negatives],
                        labels=[1.0] + [0.0] * len(negatives),
                        score=[positive_score, *negative_scores],
                    )
    if not config.output_scores:
        del columns["score"]
    return columns


def _append(columns: dict[str, list[Any]], **values: Any) -> None:
    for name, value in values.items():
        columns[name].append(value)


def possible_rows(config: MineConfig, positives: Positives) -> int:
    """The rows the output would have if every query found all its negatives (the library's
    ``maximum_possible_samples``, against which it counts the samples without enough)."""
    pairs = sum(len(p) for p in positives.positives)
    fmt = "n-tuple" if config.include_positives else config.output_format
    if fmt == "triplet":
        return pairs * config.num_negatives
    if fmt == "labeled-pair":
        return len(positives.queries) * config.num_negatives + positives.source_rows
    return pairs


def statistics(values: np.ndarray) -> dict[str, float] | None:
    """Count, mean, median, std, min, quartiles and max, as the library prints them."""
    if not len(values):
        return None
    data = np.asarray(values, dtype=np.float64)
    return {
        "count": int(len(data)),
        "mean": float(data.mean()),
        "median": float(np.median(data)),
        "std": float(data.std(ddof=1)) if len(data) > 1 else 0.0,
        "min": float(data.min()),
        "25%": float(np.quantile(data, 0.25)),
        "50%": float(np.quantile(data, 0.5)),
        "75%": float(np.quantile(data, 0.75)),
        "max": float(data.max()),
    }
