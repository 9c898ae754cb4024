"""BEIR-style reranking eval sets: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.

Every judged (query, document) line of the qrels file becomes one eval pair: ``sentence_0`` the
query text, ``sentence_1`` the document (title and text joined by a space, as BEIR's own
cross-encoder reranking does), ``label`` the judgement (graded where the qrels are), and
``query_id``. A query's candidates are its judged documents, so a qrels file that lists only
positives gives nothing to rerank: that is an error.

The qrels and the queries are small and read on the driver; the corpus can be large and is read
by Ray Data tasks, each keeping the judged documents of its block (a hash join with the qrels,
in Arrow). The joined pairs are materialized once: they are the judged pairs only, and every
evaluation of the run reads them again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from rerank_ray.data.queries import EvalQueries
from rerank_ray.data.stream import PairSource
from rerank_ray.errors import ConfigError, DataError

#: The columns of a BEIR qrels file, in the order a file without a header row holds them.
QRELS_COLUMNS = ("query-id", "corpus-id", "score")
DOCUMENT_SCHEMA = pa.schema([("_id", pa.string()), ("title", pa.string()), ("text", pa.string())])
QUERY_SCHEMA = pa.schema([("_id", pa.string()), ("text", pa.string())])


@dataclass
class Retrieval:
    """Where a BEIR eval set's candidates came from, and what the worker needs to score them as the
    library does."""

    source: str
    """``run file <path>`` or ``retriever <model>``."""
    top_k: int
    always_rerank_positives: bool
    judged_groups: list[int] = field(default_factory=list)
    """The ``group_id`` of every judged positive of the split's queries."""
    judged_gains: list[float] = field(default_factory=list)
    """Its judgement (the gain of nDCG)."""
    queries_without_candidates: list[str] = field(default_factory=list)
    """Judged queries the retriever returned nothing for: left out, as ``trec_eval`` leaves out
    queries missing from a run (without ``-c``)."""
    added_positives: int = 0
    """Judged positives added to the candidates (``always_rerank_positives``)."""
    base: dict[str, float] = field(default_factory=dict)
    """The retriever's own ranking scored: ``<name>_base_map``, ``<name>_base_ndcg@<k>``, ...,
    the library's names for them."""

    def summary(self) -> dict[str, Any]:
        """What the card and ``metrics.json`` say about the candidates."""
        return {
            "source": self.source,
            "top_k": self.top_k,
            "always_rerank_positives": self.always_rerank_positives,
            "added_positives": self.added_positives,
            "queries_without_candidates": len(self.queries_without_candidates),
        }

    def judged(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.judged_groups, dtype=np.int64), np.asarray(self.judged_gains, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class BeirFiles:
    """A BEIR folder's files for one split, and its judgements joined with their query texts."""

    folder: str
    split: str
    corpus: str
    queries: str
    qrels: str
    judgements: pa.Table
    """query_id, corpus_id, label, sentence_0 (the query text): one row per judged pair."""
    what: str = "eval.beir"
    eval_queries: EvalQueries | None = None
    """Its queries counted (:mod:`rerank_ray.data.queries`)."""
    retrieval: Retrieval | None = None
    """Where the candidates came from when a retriever chose them (:mod:`rerank_ray.evaluation.candidates`);
    None: the judged documents."""

    def query_texts(self) -> pa.Table:
        """Each judged query once: ``query_id``, ``sentence_0`` (its text), in first-seen order."""
        return (
            self.judgements.group_by("query_id", use_threads=False)
            .aggregate([("sentence_0", "first")])
            .rename_columns(["query_id", "sentence_0"])
        )

    @property
    def name(self) -> str:
        return f"{os.path.basename(os.path.normpath(self.folder))} ({self.split})"


def _json_options(schema: pa.Schema) -> Any:
    import pyarrow.json as pajson

    # Strings stay strings (ids such as "0123"); other fields are ignored.
    return pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")


def qrels_header(path: str) -> list[str] | None:
    """The header row of a qrels file, or None when its first row is already a judgement
    (``query<TAB>document<TAB>score``, a number last), as in public copies without the header."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        first = f.readline().rstrip("\r\n").split("\t")
    if len(first) == len(QRELS_COLUMNS) and not set(QRELS_COLUMNS) & set(first):
        try:
            float(first[-1])
            return None
        except ValueError:
            pass
    return first


def inspect_beir(folder: str, split: str, retrieved: bool = False) -> BeirFiles:
    """Find the files, read the qrels and the queries, and check that every judged query has a
    text and (unless a retriever gives the candidates: ``retrieved``) that there are negatives to
    rank. Fails before Ray starts, naming the file."""
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson

    folder = os.path.expanduser(folder)
    paths = {
        "corpus": os.path.join(folder, "corpus.jsonl"),
        "queries": os.path.join(folder, "queries.jsonl"),
        "qrels": os.path.join(folder, "qrels", f"{split}.tsv"),
    }
    for role, path in paths.items():
        if not os.path.isfile(path):
            key = "eval.beir_split" if role == "qrels" else "eval.beir"
            raise ConfigError(f"eval.beir: {path} not found (a BEIR folder holds {role} there; check {key})")
    header = qrels_header(paths["qrels"])
    if header is None:
        print(
            f"[rerank-ray] {paths['qrels']} has no header row: its columns are read as "
            f"{', '.join(QRELS_COLUMNS)}, in that order",
            flush=True,
        )
    try:
        qrels = pacsv.read_csv(
            paths["qrels"],
            read_options=pacsv.ReadOptions(column_names=None if header else list(QRELS_COLUMNS)),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pacsv.ConvertOptions(
                column_types={"query-id": pa.string(), "corpus-id": pa.string(), "score": pa.float64()}
            ),
        )
        queries = pajson.read_json(paths["queries"], parse_options=_json_options(QUERY_SCHEMA))
    except pa.ArrowInvalid as err:
        raise DataError(f"eval.beir: cannot read {folder}: {err}") from err
    missing = {"query-id", "corpus-id", "score"} - set(qrels.column_names)
    if missing:
        raise DataError(
            f"{paths['qrels']}: missing column(s) {sorted(missing)}; BEIR qrels have query-id, corpus-id, score"
        )
    judgements = pa.table(
        {"query_id": qrels["query-id"], "corpus_id": qrels["corpus-id"], "label": qrels["score"]}
    ).join(queries.rename_columns(["query_id", "sentence_0"]), keys="query_id", join_type="left outer")
    no_text = judgements.filter(pc.is_null(judgements["sentence_0"]))
    if no_text.num_rows:
        raise DataError(f"{paths['qrels']}: query {no_text['query_id'][0].as_py()!r} is not in {paths['queries']}")
    if not retrieved and not pc.any(pc.equal(judgements["label"], 0)).as_py():
        raise DataError(
            f"{paths['qrels']} judges no document non-relevant (score 0): a query's candidates are its "
            "judged documents, so there is nothing to rerank; rerank a retriever's top-k instead (eval.retriever or "
            "eval.run_file), or use pair files with negatives (data.eval)"
        )
    return BeirFiles(
        folder=folder,
        split=split,
        corpus=paths["corpus"],
        queries=paths["queries"],
        qrels=paths["qrels"],
        judgements=judgements,
    )


def judged_pairs(documents: pa.Table, judgements: pa.Table) -> pa.Table:
    """The eval pairs of the judged documents in one block of the corpus (an Arrow hash join)."""
    docs = pa.table({"corpus_id": documents["_id"], "sentence_1": document_texts(documents)})
    joined = judgements.join(docs, keys="corpus_id", join_type="inner")
    return joined.select(["sentence_0", "sentence_1", "label", "query_id"])


def _judged_rows(documents: pa.Table, judgements: pa.Table) -> pa.Table:
    """:func:`judged_pairs` as the rows the tokenizing stage takes (those the row checks of pair
    files produce): no skipped row, no row key (eval rows are never resumed mid-way)."""
    pairs = judged_pairs(documents, judgements)
    pairs = pairs.set_column(2, "label", pairs["label"].cast(pa.float32()))
    pairs = pairs.append_column("skip", pa.array([0] * pairs.num_rows, type=pa.int8()))
    return pairs.append_column("row_key", pa.array([-1] * pairs.num_rows, type=pa.int64()))


def corpus_dataset(beir: BeirFiles) -> Any:
    """The corpus as a Ray dataset of ``_id``, ``title``, ``text`` rows (read by Ray Data's tasks)."""
    import ray.data

    return ray.data.read_json(beir.corpus, file_extensions=None, parse_options=_json_options(DOCUMENT_SCHEMA))


def document_texts(documents: pa.Table) -> pa.Array:
    """Each document's text as BEIR's reranking builds it: title and text joined by a space."""
    import pyarrow.compute as pc

    title = pc.fill_null(documents["title"], "") if "title" in documents.column_names else None
    text = pc.fill_null(documents["text"], "")
    return pc.utf8_trim_whitespace(pc.binary_join_element_wise(title, text, " ")) if title is not None else text


def open_beir(beir: BeirFiles) -> PairSource:
    """The judged pairs as a (materialized) Ray dataset with the canonical columns plus query_id."""
    pairs = (
        corpus_dataset(beir)
        .map_batches(
            _judged_rows,  # fn_kwargs fill its second argument
            batch_format="pyarrow",
            fn_kwargs={"judgements": beir.judgements},
        )
        .materialize()
    )
    return PairSource(
        what=beir.what,
        files=[beir.qrels],
        format="jsonl",
        dataset=pairs,
        num_rows=_checked_count(pairs.count(), beir),
        name=beir.name,
    )


def read_beir_pairs(beir: BeirFiles, block_bytes: int = 16 << 20) -> pa.Table:
    """The same pairs, read in this process (``rerank-ray eval``), the corpus streamed in blocks."""
    tables = list(_stream_judged(beir, block_bytes))
    table = pa.concat_tables(tables) if tables else judged_pairs(DOCUMENT_SCHEMA.empty_table(), beir.judgements)
    _checked_count(table.num_rows, beir)
    return table


def _stream_judged(beir: BeirFiles, block_bytes: int) -> Iterator[pa.Table]:
    import pyarrow.json as pajson

    reader = pajson.open_json(
        beir.corpus,
        read_options=pajson.ReadOptions(block_size=block_bytes),
        parse_options=_json_options(DOCUMENT_SCHEMA),
    )
    for batch in reader:
        yield judged_pairs(pa.Table.from_batches([batch]), beir.judgements)


def _checked_count(found: int, beir: BeirFiles) -> int:
    judged = beir.judgements.num_rows
    if found == 0:
        raise DataError(f"eval.beir: none of the {judged} judged documents of {beir.qrels} is in {beir.corpus}")
    if found < judged:
        print(
            f"[rerank-ray] eval.beir: {judged - found} of {judged} judged documents are not in {beir.corpus}; "
            f"evaluating on the {found} found",
            flush=True,
        )
    return found
