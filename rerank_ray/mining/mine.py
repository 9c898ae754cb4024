"""``rerank-ray mine``: hard negatives for (query, positive) pairs, mined across a Ray cluster.

sentence-transformers' ``util.mine_hard_negatives`` embeds, searches and selects in one
process, holding the corpus, its embeddings and every candidate in memory. Here:

1. The pairs are read on the driver (their size is the pairs', not the corpus') and
   de-duplicated as the library does (:class:`rerank_ray.mining.negatives.Positives`).
2. Ray Data embeds the queries, the positives and the corpus files in one ``map_batches`` with a
   pool of actors that each load the bi-encoder once (a GPU each when the cluster has GPUs),
   with the library's calls (``encode_query`` / ``encode_document``, normalised, its prompts;
   :mod:`rerank_ray.inference.embedding`).
   The embedded blocks stay in Ray's object store.
3. Exact search in blocks: Ray tasks, one per ``search_batch_size`` queries, each walk the
   blocks one at a time and keep each query's best ``range_max + max_positives + 1`` candidates
   (scores are the dot products of normalised embeddings: the library's cosine similarity; with
   ``use_faiss`` a faiss ``IndexFlatIP`` per block). A task holds its queries and one block,
   whatever the corpus' size (:mod:`rerank_ray.inference.search`).
4. An optional cross-encoder rescores each query's candidates in Ray Data (``score``'s actors,
   :mod:`rerank_ray.inference.score`).
5. The library's selection (:func:`rerank_ray.mining.negatives.select`), the chosen texts looked up
   by hash in the embedded blocks, the rows in the asked format written as Parquet, and a
   summary printed and written beside them.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa

from rerank_ray import storage
from rerank_ray.config import Config, DataConfig
from rerank_ray.data.files import resolve_paths
from rerank_ray.data.reading import open_local_or_uri, peek_columns
from rerank_ray.data.rows import ORDER, READERS, read_table, rows_datasource
from rerank_ray.data.shapes import file_name, find_shape
from rerank_ray.errors import ConfigError, DataError
from rerank_ray.inference.embedding import (
    DOCUMENT,
    HASH,
    POSITIVE,
    QUERY,
    ROLE,
    TEXT,
    Embedder,
    EmbedderSpec,
    keep_roles,
)
from rerank_ray.inference.jobs import actor_pool, check_output_is_new, write_summary
from rerank_ray.inference.score import Scorer, ScoreRequest
from rerank_ray.inference.search import own_vectors, search
from rerank_ray.mining.config import MineConfig
from rerank_ray.mining.negatives import (
    FILTERS,
    Positives,
    Selection,
    check_range,
    derived_range_max,
    output_rows,
    possible_rows,
    select,
    statistics,
    text_hashes,
)
from rerank_ray.run.cluster import ensure_ray
from rerank_ray.training import faults

#: Mined rows per written Parquet part.
ROWS_PER_PART = 100_000


# ---------------------------------------------------------------------------------------------
# Reading the pairs (driver)


def read_positives(config: MineConfig) -> Positives:
    """The (query, positive) pairs of ``mine.pairs``, whatever their shape (module docstring of
    :mod:`rerank_ray.config`'s ``MineConfig.pairs``)."""
    files, fmt = resolve_paths(list(config.pairs), "auto", "mine.pairs")
    if fmt not in READERS:
        raise ConfigError(f"mine.pairs: rerank-ray mine reads {', '.join(READERS)} files, not {fmt}")
    data = DataConfig(columns=config.columns)
    queries: list[str] = []
    positives: list[str] = []
    for path in files:
        with open_local_or_uri(path, fmt)() as handle:
            table = read_table(handle, fmt)
        file_queries, file_positives = _positive_pairs(table, data, path)
        queries += file_queries
        positives += file_positives
    if not queries:
        raise DataError(
            f"mine.pairs: {len(files)} file(s) hold no (query, positive) pair (a pair file's positives are its rows "
            "labelled above 0)"
        )
    return Positives.from_pairs(queries, positives)


def _positive_pairs(table: pa.Table, data: DataConfig, path: str) -> tuple[list[str], list[str]]:
    shape = find_shape(table.column_names, data)
    if shape.name == "pairs":
        names = [file_name(data, c) for c in ("sentence_0", "sentence_1")]
        label = file_name(data, "label")
        missing = [c for c in names if c not in table.column_names]
        if missing:
            raise DataError(
                f"mine.pairs: {path} has neither query/positive columns nor the pair column(s) {missing} (its columns: "
                f"{table.column_names}); name yours with --columns query=question positive=answer"
            )
        rows = zip(*(table.column(c).to_pylist() for c in names))
        labels = table.column(label).to_pylist() if label in table.column_names else None
        pairs = [(q, d) for i, (q, d) in enumerate(rows) if labels is None or (labels[i] or 0) > 0]
    elif shape.name == "list":
        docs = table.column(file_name(data, "documents")).to_pylist()
        labels_name = file_name(data, "labels")
        if labels_name not in table.column_names:
            raise DataError(f"mine.pairs: {path} has a documents column but no {labels_name!r} column")
        pairs = [
            (q, d)
            for q, ds, ls in zip(
                table.column(file_name(data, "query")).to_pylist(), docs, table[labels_name].to_pylist()
            )
            for d, label in zip(ds or [], ls or [])
            if (label or 0) > 0
        ]
    else:
        pairs = list(zip(*(table.column(file_name(data, c)).to_pylist() for c in ("query", "positive"))))
    for index, (query, positive) in enumerate(pairs):
        if not isinstance(query, str) or not isinstance(positive, str) or not query or not positive:
            raise DataError(
                f"mine.pairs: {path}, pair {index}: a query and a positive must be text, got {query!r}, {positive!r}"
            )
    return [q for q, _ in pairs], [p for _, p in pairs]


def check_corpus(config: MineConfig) -> tuple[list[str], str]:
    """The corpus files and their format, every one with the text column, checked before Ray."""
    if not config.corpus:
        return [], ""
    files, fmt = resolve_paths(list(config.corpus), "auto", "mine.corpus")
    if fmt not in READERS:
        raise ConfigError(f"mine.corpus: rerank-ray mine reads {', '.join(READERS)} files, not {fmt}")
    for path in files:
        if storage.is_empty_file(path):
            raise DataError(
                f"mine.corpus: {path} is empty: give a corpus with documents, or leave --corpus out to mine among "
                "the positives"
            )
        present = peek_columns(open_local_or_uri(path, fmt), fmt)
        if present is None or config.corpus_column not in present:
            raise DataError(
                f"mine.corpus: {path} "
                + (f"has no {config.corpus_column!r} column (its columns: {present})" if present else "cannot be read")
                + "; name the text column with --corpus-column"
            )
    return files, fmt


# ---------------------------------------------------------------------------------------------
# Embedding (Ray Data actors)


def corpus_texts(batch: pa.Table, column: str, title: str | None) -> pa.Table:
    """A block of corpus rows as the embedding stage's rows: the text (the title joined before
    it, as BEIR's reranking builds a document), non-empty ones only."""
    import pyarrow.compute as pc

    text = pc.fill_null(batch[column].cast(pa.string()), "")
    if title and title in batch.column_names:
        heading = pc.fill_null(batch[title].cast(pa.string()), "")
        text = pc.utf8_trim_whitespace(pc.binary_join_element_wise(heading, text, " "))
    table = pa.table({TEXT: text, ROLE: pa.array(np.full(batch.num_rows, DOCUMENT, np.int8)), ORDER: batch[ORDER]})
    return table.filter(pc.greater(pc.utf8_length(table[TEXT]), 0))


def pick_texts(batch: pa.Table, wanted: np.ndarray) -> pa.Table:
    """The (hash, text) rows of a block whose hash is wanted: the chosen negatives' texts."""
    import pyarrow.compute as pc

    return batch.select([HASH, TEXT]).filter(pc.is_in(batch[HASH], pa.array(wanted, pa.int64())))


# ---------------------------------------------------------------------------------------------
# The pipeline (driver)


def mine(config: MineConfig) -> dict[str, Any]:
    """Mine ``config``'s negatives and write them; returns (and writes beside them) the summary."""
    import ray
    import ray.data

    started = time.perf_counter()
    positives = read_positives(config)
    range_max = derived_range_max(config, positives.max_positives)
    problem = check_range(config, range_max)
    if problem:
        raise ConfigError(problem)
    corpus_files, corpus_fmt = check_corpus(config)
    check_output_is_new(config.output, "mine.output")
    started_line = ensure_ray(Config(), forward_logs=False)
    if started_line:
        print(f"[rerank-ray] {started_line}", flush=True)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    concurrency = config.concurrency or max(1, gpus)
    positive_texts = list(dict.fromkeys(doc for docs in positives.positives for doc in docs))
    print(
        f"[rerank-ray] mining {config.num_negatives} negative(s) for {len(positives.queries)} queries "
        f"({positives.source_rows} pairs) from "
        + (f"{len(corpus_files)} corpus file(s) and " if corpus_files else "")
        + f"{len(positive_texts)} positives with {config.embedder} on {concurrency} {'GPU' if gpus else 'CPU'} actor(s)",
        flush=True,
    )
    stages = {"start": time.perf_counter() - started}
    embedded = _embed(config, positives.queries, positive_texts, corpus_files, corpus_fmt, concurrency, gpus)
    stages["embed"] = time.perf_counter() - started - sum(stages.values())
    query_vectors, positive_vectors = own_vectors(embedded, len(positives.queries), len(positive_texts))
    positive_index = {text: i for i, text in enumerate(positive_texts)}
    pair_rows = [positive_index[d] for docs in positives.positives for d in docs]
    query_rows = [q for q, docs in enumerate(positives.positives) for _ in docs]
    positive_scores = np.einsum("ij,ij->i", query_vectors[query_rows], positive_vectors[pair_rows])
    k = range_max + positives.max_positives + 1  # the library's extra one: a document that is the query itself
    scores, hashes = search(embedded, query_vectors, k, config.search_batch_size, config.use_faiss)
    stages["search"] = time.perf_counter() - started - sum(stages.values())
    texts = dict(zip(text_hashes(positive_texts).tolist(), positive_texts))
    if config.cross_encoder is not None and _filters_set(config):
        texts.update(_texts_of(embedded, hashes))
        scores, positive_scores = _rescore(config, positives, hashes, texts, concurrency, gpus)
    positive_hashes = [text_hashes(docs) for docs in positives.positives]
    selection = select(
        config, scores, hashes, positive_hashes, positive_scores, range_max, text_hashes(positives.queries)
    )
    texts.update(_texts_of(embedded, selection.hashes, known=texts))
    rows = output_rows(config, positives, selection, positive_scores, texts)
    written = _write(rows, config.output)
    summary = _summary(config, positives, selection, positive_scores, written, range_max)
    summary["corpus_files"] = len(corpus_files)
    summary["added_positives"] = _positives_not_in_corpus(embedded, positive_texts) if corpus_files else None
    summary["texts_embedded"] = embedded.count()
    summary["seconds"] = time.perf_counter() - started
    stages["select_and_write"] = summary["seconds"] - sum(stages.values())
    summary["stage_seconds"] = stages
    write_summary(config.output, summary)
    return summary


def _filters_set(config: MineConfig) -> bool:
    """The library rescores with its cross-encoder only when a filter would use the scores."""
    return any(getattr(config, name) is not None for name in FILTERS)


def embedder_spec(config: MineConfig) -> EmbedderSpec:
    """The embedding actors' part of ``mine:``."""
    return EmbedderSpec(
        model=config.embedder,
        batch_size=config.batch_size,
        query_prompt=config.query_prompt,
        query_prompt_name=config.query_prompt_name,
        corpus_prompt=config.corpus_prompt,
        corpus_prompt_name=config.corpus_prompt_name,
        cpus_per_actor=config.cpus_per_actor,
        rows_per_batch=config.rows_per_batch,
        trust_remote_code=config.trust_remote_code,
    )


def _embed(
    config: MineConfig,
    queries: list[str],
    positive_texts: list[str],
    corpus_files: list[str],
    corpus_fmt: str,
    concurrency: int,
    gpus: int,
) -> Any:
    import ray.data

    own = pa.table(
        {
            TEXT: pa.array(queries + positive_texts, pa.string()),
            ROLE: pa.array([QUERY] * len(queries) + [POSITIVE] * len(positive_texts), pa.int8()),
            ORDER: pa.array(np.arange(len(queries) + len(positive_texts)), pa.int64()),
        }
    )
    texts = ray.data.from_arrow(own)
    if corpus_files:
        documents = ray.data.read_datasource(rows_datasource(corpus_files, corpus_fmt)).map_batches(
            corpus_texts,
            fn_kwargs={"column": config.corpus_column, "title": config.corpus_title_column},
            batch_format="pyarrow",
        )
        texts = texts.union(documents)
    return texts.map_batches(
        Embedder,
        fn_constructor_kwargs={"spec": embedder_spec(config).as_dict(), "test_faults": faults.from_environment()},
        batch_size=config.rows_per_batch,
        batch_format="pyarrow",
        **actor_pool(concurrency, gpus, config.cpus_per_actor),
    ).materialize()


def _texts_of(embedded: Any, hashes: np.ndarray, known: dict[int, str] | None = None) -> dict[int, str]:
    """hash -> text of the given candidates, looked up in the embedded blocks."""
    wanted = np.unique(hashes[hashes != 0])
    if known:
        wanted = wanted[~np.isin(wanted, np.fromiter(known, np.int64, len(known)))]
    if not len(wanted):
        return {}
    picked = embedded.map_batches(pick_texts, fn_kwargs={"wanted": wanted}, batch_format="pyarrow")
    texts: dict[int, str] = {}
    for table in picked.iter_batches(batch_format="pyarrow", batch_size=None):
        texts.update(zip(table[HASH].to_pylist(), table[TEXT].to_pylist()))
    return texts


def _positives_not_in_corpus(embedded: Any, positive_texts: list[str]) -> int:
    """How many positives the corpus files lack (added to the candidates, as the library adds them)."""
    import pyarrow.compute as pc

    wanted = pa.array(text_hashes(positive_texts), pa.int64())
    documents = embedded.map_batches(keep_roles, fn_kwargs={"roles": (DOCUMENT,)}, batch_format="pyarrow")
    found: set[int] = set()
    for table in documents.iter_batches(batch_format="pyarrow", batch_size=None):
        found.update(table[HASH].filter(pc.is_in(table[HASH], wanted)).to_pylist())
    return len(positive_texts) - len(found)


def _rescore(
    config: MineConfig,
    positives: Positives,
    hashes: np.ndarray,
    texts: dict[int, str],
    concurrency: int,
    gpus: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The candidates' and the positives' scores by ``mine.cross_encoder`` (``CrossEncoder.predict``
    as the library calls it), with ``score``'s actors; padding stays ``-inf``."""
    import ray.data

    rows_q, rows_d, keys = [], [], []
    for q, query in enumerate(positives.queries):
        for j, name in enumerate(hashes[q]):
            if name != 0:
                rows_q.append(query)
                rows_d.append(texts[int(name)])
                keys.append(q * hashes.shape[1] + j)
    pairs = [(q, d) for q, docs in enumerate(positives.positives) for d in docs]
    offset = hashes.size
    rows_q += [positives.queries[q] for q, _ in pairs]
    rows_d += [d for _, d in pairs]
    keys += list(range(offset, offset + len(pairs)))
    table = pa.table({"sentence_0": rows_q, "sentence_1": rows_d, ORDER: pa.array(keys, pa.int64())})
    request = ScoreRequest(
        model=config.cross_encoder,
        data=[],
        output="",
        batch_size=config.batch_size,
        trust_remote_code=config.trust_remote_code,
    )
    scored = ray.data.from_arrow(table).map_batches(
        Scorer,
        fn_constructor_kwargs={
            "request": request.__dict__,
            "shape": {"name": "pairs", "text_columns": ["sentence_0", "sentence_1"], "has_label": False},
        },
        batch_size=config.rows_per_batch,
        batch_format="pyarrow",
        **actor_pool(concurrency, gpus, config.cpus_per_actor),
    )
    values = np.full(offset + len(pairs), -np.inf, dtype=np.float32)
    for batch in scored.iter_batches(batch_format="pyarrow", batch_size=None):
        values[batch[ORDER].to_numpy()] = batch["score"].to_numpy()
    return values[:offset].reshape(hashes.shape), values[offset:]


def _write(rows: dict[str, list[Any]], output: str) -> int:
    """The rows as Parquet parts ``part-00000.parquet``.. in ``output``; the number of rows."""
    table = pa.table(rows)
    fs, folder = storage.filesystem(output)
    fs.create_dir(folder, recursive=True)
    import pyarrow.parquet as pq

    for part, start in enumerate(range(0, max(table.num_rows, 1), ROWS_PER_PART)):
        with fs.open_output_stream(f"{folder.rstrip('/')}/part-{part:05d}.parquet") as handle:
            pq.write_table(table.slice(start, ROWS_PER_PART), handle)
    return table.num_rows


def _summary(
    config: MineConfig,
    positives: Positives,
    selection: Selection,
    positive_scores: np.ndarray,
    written: int,
    range_max: int,
) -> dict[str, Any]:
    """What the library prints after mining (score statistics of the positives, the negatives and
    their differences; what each filter skipped; the samples without enough negatives)."""
    found = ~np.isinf(selection.scores)
    counts = [len(p) for p in positives.positives]
    per_pair = np.repeat(selection.scores, counts, axis=0)
    pair_positive = np.repeat(np.asarray(positive_scores)[:, None], selection.scores.shape[1], axis=1)
    keep = ~np.isinf(per_pair)
    possible = possible_rows(config, positives)
    return {
        "embedder": config.embedder,
        "cross_encoder": config.cross_encoder,
        "output_format": "n-tuple" if config.include_positives else config.output_format,
        "pairs": positives.source_rows,
        "queries": len(positives.queries),
        "rows": written,
        "negatives": int(found.sum()),
        "range_max": range_max,
        "queries_without_enough_negatives": int((found.sum(1) < config.num_negatives).sum()),
        "samples_without_enough_negatives": max(0, possible - written),
        "possible_samples": possible,
        "skipped": {
            name: {"count": count, "ratio": count / selection.candidates} for name, count in selection.skipped.items()
        },
        "scores": {
            "positive": statistics(np.asarray(positive_scores)),
            "negative": statistics(per_pair[keep]),
            "difference": statistics((pair_positive - per_pair)[keep]),
        },
        "output": config.output,
    }


def describe(summary: dict[str, Any]) -> list[str]:
    """The summary as the lines ``rerank-ray mine`` prints."""
    lines = [
        f"mined {summary['negatives']} negatives for {summary['queries']} queries: {summary['rows']} "
        f"{summary['output_format']} rows in {summary['seconds']:.0f} s"
    ]
    stats = summary["scores"]
    if stats["positive"] and stats["negative"]:
        lines.append(
            "similarity: positives mean {:.4f}, negatives mean {:.4f} (min {:.4f}, max {:.4f}), difference mean "
            "{:.4f}".format(
                stats["positive"]["mean"],
                stats["negative"]["mean"],
                stats["negative"]["min"],
                stats["negative"]["max"],
                stats["difference"]["mean"],
            )
        )
    for name, skipped in summary["skipped"].items():
        lines.append(f"skipped {skipped['count']} candidates ({skipped['ratio']:.2%}) by {name}")
    if summary.get("added_positives"):
        lines.append(f"{summary['added_positives']} positive(s) not in the corpus files were added to the candidates")
    missing = summary["samples_without_enough_negatives"]
    if missing:
        lines.append(
            f"could not find enough negatives for {missing} of {summary['possible_samples']} samples "
            f"({summary['queries_without_enough_negatives']} queries): raise mine.range_max, or loosen the filters"
        )
    return lines
