"""``rerank-ray mine``'s config: the ``mine:`` section of its YAML, or its flags (one per key)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rerank_ray.config.loading import build, read_yaml
from rerank_ray.errors import ConfigError
from rerank_ray.redaction import check_no_inline_credentials

#: Output formats of ``rerank-ray mine``, as ``mine_hard_negatives``' ``output_format`` names them.
MINE_FORMATS = ("triplet", "n-tuple", "labeled-pair", "labeled-list")


@dataclass
class MineConfig:
    """``rerank-ray mine`` (the ``mine:`` section of its YAML): hard negatives for (query,
    positive) pairs, chosen as ``sentence_transformers.util.mine_hard_negatives`` chooses them.
    The keys after ``output_scores`` are that function's parameters, with its defaults."""

    pairs: list[str] = field(default_factory=list)
    """Files, folders or globs of (query, positive) pairs: ``query`` and ``positive`` columns,
    labelled pairs (the rows with a label above 0 are the positives), n-tuples (their query and
    positive) or lists (the documents labelled above 0). Parquet, JSON Lines, CSV or TSV."""
    corpus: list[str] = field(default_factory=list)
    """Files of documents to mine from. The positives are always candidates too (added where the
    corpus lacks them, as the library adds them). Empty: the positives are the corpus."""
    corpus_column: str = "text"
    """The corpus files' text column."""
    corpus_title_column: str | None = "title"
    """A title column joined before the text with a space where the file has it (as BEIR's
    reranking builds a document); null: the text alone."""
    columns: dict[str, str] = field(default_factory=dict)
    """Canonical column -> your column in the pair files, as ``data.columns`` (``query``,
    ``positive``; ``sentence_0``, ``sentence_1``, ``label``; ``documents``, ``labels``)."""
    embedder: str = ""
    """The bi-encoder (a SentenceTransformer): hub id, local folder or ``pkg:<module>``."""
    output: str = ""
    """A new folder (local or URI) for the mined rows, as Parquet parts; the summary is written
    beside it (``<output>.summary.json``)."""
    output_format: Literal["triplet", "n-tuple", "labeled-pair", "labeled-list"] = "triplet"
    """``triplet`` (query, positive, negative), ``n-tuple`` (query, positive, negative_1..n),
    ``labeled-pair`` (sentence_0, sentence_1, label) or ``labeled-list`` (query, documents,
    labels): written with the canonical column names ``rerank-ray train`` reads."""
    output_scores: bool = False
    """Add a ``score`` column: the similarity of each written pair (a list per row for triplets,
    tuples and lists). Unlike the library, the labels stay beside it."""
    range_min: int = 0
    """Skip the ``range_min`` most similar candidates (likely unlabelled positives)."""
    range_max: int | None = None
    """Consider candidates up to this rank. Null: derived as the library derives it."""
    max_score: float | None = None
    """Drop candidates more similar than this."""
    min_score: float | None = None
    """Drop candidates less similar than this."""
    absolute_margin: float | None = None
    """Drop candidates within this margin of the (hardest) positive's similarity."""
    relative_margin: float | None = None
    """Drop candidates above ``positive - |positive| * relative_margin``."""
    num_negatives: int = 3
    """Negatives per query."""
    sampling_strategy: Literal["top", "random"] = "top"
    """``top``: the most similar candidates left; ``random``: a seeded sample of them."""
    include_positives: bool = False
    """Keep the positives among the candidates (for reranking eval sets; the output becomes n-tuple)."""
    query_prompt: str | None = None
    """A prompt prepended to each query when embedding (wins over ``query_prompt_name``)."""
    query_prompt_name: str | None = None
    """A prompt of the embedder's ``prompts`` for the queries."""
    corpus_prompt: str | None = None
    """A prompt prepended to each document when embedding."""
    corpus_prompt_name: str | None = None
    """A prompt of the embedder's ``prompts`` for the documents."""
    cross_encoder: str | None = None
    """A cross-encoder that rescores the candidates before the filters (as the library does:
    only when a margin, ``max_score`` or ``min_score`` is set)."""
    batch_size: int = 32
    """Texts per forward pass of the embedder (and of the cross-encoder)."""
    use_faiss: bool = False
    """Search each block with faiss (``IndexFlatIP``: exact inner product, as the library's
    ``use_faiss``); needs faiss on every node (``pip install faiss-cpu``, or ``faiss-gpu``)."""
    search_batch_size: int = 16384
    """Queries per search task (the library's ``faiss_batch_size``): a task holds this many
    queries' candidates and one block of the corpus at a time."""
    seed: int = 0
    """Seed of ``sampling_strategy: random``."""
    rows_per_batch: int = 1024
    """Texts handed to an embedding actor at a time."""
    concurrency: int | None = None
    """Embedding actors at once. Null: one per GPU of the cluster, else one."""
    cpus_per_actor: float = 1.0
    """CPUs of each embedding actor (its torch threads on CPU)."""
    trust_remote_code: bool = False
    """Run modelling code shipped with the embedder or cross-encoder."""

    def check(self) -> None:
        """The checks that need no data; each error names the key (the flag is the key with dashes)."""
        for key in ("pairs", "embedder", "output"):
            if not getattr(self, key):
                raise ConfigError(f"mine.{key} is required (--{key.replace('_', '-')})")
        if self.num_negatives < 1:
            raise ConfigError(f"mine.num_negatives must be at least 1, got {self.num_negatives}")
        if self.range_min < 0:
            raise ConfigError(f"mine.range_min must be non-negative, got {self.range_min}")
        for key in ("batch_size", "search_batch_size", "rows_per_batch"):
            if getattr(self, key) < 1:
                raise ConfigError(f"mine.{key} must be at least 1, got {getattr(self, key)}")
        if self.use_faiss:
            try:
                import faiss  # noqa: F401
            except ImportError:
                raise ConfigError("mine.use_faiss needs faiss: pip install faiss-cpu (or faiss-gpu)") from None
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"mine.concurrency must be at least 1, got {self.concurrency}")
        check_no_inline_credentials(
            {"mine.pairs": self.pairs, "mine.corpus": self.corpus, "mine.output": [self.output]}
        )


def load_mine_config(path: str | Path | None, values: dict[str, Any]) -> MineConfig:
    """The ``mine:`` section of a YAML file (or none), then ``values`` (the flags given) over it."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(Path(path)).get("mine") or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: mine must be a mapping of keys, got {raw!r}")
    raw = {**raw, **values}
    config = build(MineConfig, raw, prefix="mine.")
    config.check()
    return config
