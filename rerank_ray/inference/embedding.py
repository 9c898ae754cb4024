"""Embedding texts with a bi-encoder in Ray Data: the actor shared by ``rerank-ray mine`` and by
evaluation's first stage (``eval.retriever``), and the columns of its rows.

A row of the embedding stage is a text with its role (a query, a positive, a document), its
order among the texts given, its hash (:func:`text_hashes`, the text's name as a candidate) and,
after the actor, its normalised embedding. The embedded blocks stay in Ray's object store and
are searched block by block (:mod:`rerank_ray.inference.search`).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from rerank_ray.config import ModelConfig
from rerank_ray.training import faults
from rerank_ray.training.models import model_source

TEXT, ROLE, HASH, EMBEDDING = "text", "role", "hash", "embedding"
#: What a row of the embedding stage is: a query, a positive, or a document of the corpus files.
QUERY, POSITIVE, DOCUMENT = 0, 1, 2


@dataclass
class EmbedderSpec:
    """What an embedding actor loads and how it encodes: the small part of ``mine:`` (or of
    ``eval.retriever``'s settings) the actors need."""

    model: str
    """The bi-encoder (a SentenceTransformer): hub id, local folder or ``pkg:<module>``."""
    batch_size: int = 32
    """Texts per forward pass."""
    query_prompt: str | None = None
    query_prompt_name: str | None = None
    corpus_prompt: str | None = None
    corpus_prompt_name: str | None = None
    cpus_per_actor: float = 1.0
    """CPUs of each actor (its torch threads on CPU)."""
    rows_per_batch: int = 1024
    """Texts handed to an actor at a time."""
    trust_remote_code: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def text_hashes(texts: list[str]) -> np.ndarray:
    """A 64-bit hash of each text (BLAKE2b): the text's name as a candidate. Two different texts
    share one with odds of about n^2 / 2^65 (1e-8 for a million documents)."""
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little", signed=True)
            for t in texts
        ],
        dtype=np.int64,
    )


class Embedder:
    """A Ray Data actor: the bi-encoder, loaded once, embedding blocks of texts with the library's
    ``encode_query`` / ``encode_document`` (normalised, with their prompts), each row keyed by
    the hash of its text."""

    def __init__(self, spec: dict[str, Any], test_faults: dict[str, Any] | None = None):
        import torch
        from sentence_transformers import SentenceTransformer

        self.config = EmbedderSpec(**spec)
        faults.install(test_faults, rank=0)
        self.batches = 0
        cuda = torch.cuda.is_available()
        if not cuda:
            torch.set_num_threads(max(1, int(self.config.cpus_per_actor)))
        source = model_source(ModelConfig(name_or_path=self.config.model))
        self.model = SentenceTransformer(
            source, device="cuda" if cuda else "cpu", trust_remote_code=self.config.trust_remote_code
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        self.batches += 1
        faults.fire("embed", self.batches)  # tests only: a real death of this actor at its n-th batch
        texts = batch[TEXT].to_pylist()
        roles = batch[ROLE].to_numpy()
        dim = self.model.get_sentence_embedding_dimension()
        vectors = np.zeros((len(texts), dim), dtype=np.float32)
        config = self.config
        for is_query in (True, False):
            rows = np.flatnonzero((roles == QUERY) == is_query)
            if not len(rows):
                continue
            encode = self.model.encode_query if is_query else self.model.encode_document
            vectors[rows] = encode(
                [texts[i] for i in rows],
                batch_size=config.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
                prompt_name=config.query_prompt_name if is_query else config.corpus_prompt_name,
                prompt=config.query_prompt if is_query else config.corpus_prompt,
            )
        flat = pa.array(vectors.reshape(-1), pa.float32())
        return batch.append_column(HASH, pa.array(text_hashes(texts), pa.int64())).append_column(
            EMBEDDING, pa.FixedSizeListArray.from_arrays(flat, dim)
        )


def matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size-list column as a [rows, dim] float32 array."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    dim = array.type.list_size
    return np.asarray(array.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)


def keep_roles(batch: pa.Table, roles: tuple[int, ...]) -> pa.Table:
    import pyarrow.compute as pc

    return batch.filter(pc.is_in(batch[ROLE], pa.array(roles, pa.int8())))
