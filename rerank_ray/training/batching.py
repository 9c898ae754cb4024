"""Worker side of the stream: windows of tokenized rows -> shuffled, length-grouped, padded batches.

Ray Data hands each worker windows of ``window_batches * batch_size`` tokenized rows. Within a
window we (optionally) sort by length so each batch holds pairs of similar length, cut the window
into batches, and shuffle the order of those batches. Every row of the window lands in exactly
one batch, so every pair is still trained once per epoch; the number of batches per worker is
``ceil(rows_per_worker / batch_size)``, the same on every worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from rerank_ray.data.encoding import PairEncoder

if TYPE_CHECKING:
    import torch


@dataclass
class Batch:
    """One padded batch, as numpy arrays on the host."""

    input_ids: np.ndarray  # (n, L) int64
    attention_mask: np.ndarray  # (n, L) int64
    token_type_ids: np.ndarray | None
    labels: np.ndarray  # (n,) float32, or int64 class ids
    weights: np.ndarray  # (n,) float32: 0 for filler rows
    pair_ids: list | None = None
    row_keys: np.ndarray | None = None  # (n,) int64: each row's stable key (-1 for filler rows)
    skip: np.ndarray | None = None  # (n,) int8: why a row was skipped (0: a good row)
    group_ids: np.ndarray | None = None  # (n,) int64: the query of each reranking eval pair

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_pairs(self) -> float:
        return float(self.weights.sum())

    def features(self, device: torch.device, mask: str = "2d", keep_mask: bool = False) -> dict[str, torch.Tensor]:
        """The model's inputs on ``device`` (pinned, non-blocking copies on CUDA). ``mask``: the
        attention mask as :func:`~rerank_ray.training.models.mask_kind` says the model takes it
        without a host sync: ``2d`` as padded; ``bool`` / ``additive`` a 4D mask built here, on
        the host, from the padding we know, and none at all for a batch without padding (unless
        ``keep_mask``: a compiled model keeps one input signature)."""
        arrays: dict[str, np.ndarray] = {"input_ids": self.input_ids}
        if mask == "2d":
            arrays["attention_mask"] = self.attention_mask
        elif keep_mask or not self.attention_mask.all():
            attend = self.attention_mask[:, None, None, :].astype(bool)  # (batch, 1, query: any, key)
            arrays["attention_mask"] = (
                attend if mask == "bool" else np.where(attend, 0.0, np.finfo(np.float32).min).astype(np.float32)
            )
        if self.token_type_ids is not None:
            arrays["token_type_ids"] = self.token_type_ids
        return {name: to_device(array, device) for name, array in arrays.items()}

    def targets(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return to_device(self.labels, device), to_device(self.weights, device)


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    import torch

    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def _ragged(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(flat values, lengths) of a list column, without a Python loop."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy()[offsets[0] : offsets[-1]]
    return values, np.diff(offsets)


#: Token lengths a compiled run pads to (``train.torch_compile``): multiples of 16, so at most
#: ``max_length / 16`` length buckets, each a graph.
COMPILE_LENGTH_MULTIPLE = 16


def pad(values: np.ndarray, lengths: np.ndarray, pad_value: int, left: bool = False, multiple: int = 1) -> np.ndarray:
    """Rows of ``lengths`` taken in order from ``values``, padded to the longest (rounded up to ``multiple``)."""
    width = int(lengths.max()) if len(lengths) else 0
    width = -(-width // multiple) * multiple
    out = np.full((len(lengths), width), pad_value, dtype=np.int64)
    positions = np.arange(width)
    mask = positions >= (width - lengths)[:, None] if left else positions < lengths[:, None]
    out[mask] = values  # row-major fill order matches the concatenated rows
    return out


@dataclass
class Collator:
    """Pads rows into a :class:`Batch` the way the library pads the model's batches."""

    pad_token_id: int
    pad_token_type_id: int = 0
    left_padding: bool = False
    pad_to_multiple_of: int = 1
    fill_to: int = 0
    """Batches of fewer rows (an epoch's last) get weight-0 copies of their first row up to this
    many, so that a compiled model sees one batch size (:meth:`for_compile`)."""

    @classmethod
    def for_tokenizer(cls, tokenizer, pad_to_multiple_of: int = 1) -> Collator:
        return cls(
            pad_token_id=int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
            pad_token_type_id=int(getattr(tokenizer, "pad_token_type_id", 0) or 0),
            left_padding=getattr(tokenizer, "padding_side", "right") == "left",
            pad_to_multiple_of=pad_to_multiple_of,
        )

    @classmethod
    def for_encoder(cls, encoder: PairEncoder, pad_to_multiple_of: int = 1) -> Collator:
        """Pads as the library pads the model's batches: with the tokenizer of its Transformer
        module, on that tokenizer's side (the library sets a causal-LM reranker's to the left:
        its score reads the last position)."""
        return cls.for_tokenizer(encoder.tokenizer, pad_to_multiple_of)

    def for_compile(self, batch_size: int) -> Collator:
        """This collator with shapes ``torch.compile`` compiles a bounded number of graphs for:
        lengths padded to multiples of :data:`COMPILE_LENGTH_MULTIPLE` (a graph per length bucket
        rather than per length) and every batch ``batch_size`` rows (no graph for an epoch's
        smaller last batch)."""
        return replace(self, pad_to_multiple_of=COMPILE_LENGTH_MULTIPLE, fill_to=batch_size)

    def pad_tokens(
        self, ids: np.ndarray, lengths: np.ndarray, types: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(input_ids, attention_mask, token_type_ids) of rows of ``lengths`` tokens taken in order
        from the flat ``ids`` (and ``types``), padded as the tokenizer pads."""
        input_ids = pad(ids, lengths, self.pad_token_id, self.left_padding, self.pad_to_multiple_of)
        ones = np.ones(len(ids), dtype=np.int64)
        attention_mask = pad(ones, lengths, 0, self.left_padding, self.pad_to_multiple_of)
        token_type_ids = None
        if types is not None:
            token_type_ids = pad(
                types.astype(np.int64), lengths, self.pad_token_type_id, self.left_padding, self.pad_to_multiple_of
            )
        return input_ids, attention_mask, token_type_ids

    def __call__(self, rows: pa.Table) -> Batch:
        rows = self._filled(rows)
        ids, lengths = _ragged(rows.column("input_ids"))
        types = _ragged(rows.column("token_type_ids"))[0] if "token_type_ids" in rows.column_names else None
        input_ids, attention_mask, token_type_ids = self.pad_tokens(ids, lengths, types)
        labels = rows.column("label").to_numpy()  # read-only view: the astype below copies
        return Batch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            # Class ids stay integers; targets become float32 whatever the file held.
            labels=labels.astype(np.int64 if np.issubdtype(labels.dtype, np.integer) else np.float32),
            weights=rows.column("weight").to_numpy().astype(np.float32),
            pair_ids=rows.column("pair_id").to_pylist() if "pair_id" in rows.column_names else None,
            row_keys=_column_numpy(rows, "row_key", np.int64),
            skip=_column_numpy(rows, "skip", np.int8),
            group_ids=_column_numpy(rows, "group_id", np.int64),
        )

    def _filled(self, rows: pa.Table) -> pa.Table:
        """``rows`` and weight-0 copies of its first row up to :attr:`fill_to` rows: the same
        tokens, so the copies' logits are finite and their weight keeps them out of every loss,
        metric, data position (row key -1) and audit (pair ids of real rows only)."""
        missing = self.fill_to - rows.num_rows
        if missing <= 0 or rows.num_rows == 0:
            return rows
        copies = rows.take(pa.array(np.zeros(missing, dtype=np.int64)))
        marks = {"weight": 0.0, "row_key": -1, "skip": 0}
        for name, value in marks.items():
            if name in copies.column_names:
                index = copies.column_names.index(name)
                column = pa.array(np.full(missing, value), type=copies.schema.field(name).type)
                copies = copies.set_column(index, name, column)
        return pa.concat_tables([rows, copies])


@dataclass
class GroupBatch:
    """One batch of grouped rows (queries with their documents, :mod:`rerank_ray.data.shapes`),
    as padded pairs on the host and where each pair belongs.

    Only the real rows' pairs are scored (a batch without one scores one empty pair, so that every
    rank still runs its forward and backward). For the in-batch losses the pairs come column by
    column (every query's positive, then each in-batch negative, then each hard negative), as
    MultipleNegativesRankingLoss scores them; otherwise query by query."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray | None
    weights: np.ndarray  # (rows,) float32: 1 for a real query, 0 for filler and skipped rows
    doc_counts: np.ndarray  # (real queries,) pairs of each real query, in pair order
    labels: np.ndarray  # (pairs,) float32: each pair's label (teacher score, judgement)
    label_counts: np.ndarray  # (real queries,) labels of each (an n-tuple's margins: one fewer)
    columns: int = 0  # in-batch losses: score columns per query (1 + in-batch + hard negatives)
    pair_ids: list | None = None
    row_keys: np.ndarray | None = None
    skip: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.weights)

    @property
    def num_pairs(self) -> float:
        """Real queries: the unit of the loss's mean (``per_device_batch_size`` counts them)."""
        return float(self.weights.sum())

    @property
    def queries(self) -> int:
        return len(self.doc_counts)

    def features(self, device: torch.device, mask: str = "2d", keep_mask: bool = False) -> dict[str, torch.Tensor]:
        return Batch.features(self, device, mask, keep_mask)  # type: ignore[arg-type]  # the same three arrays


def in_batch_negatives(batch_size: int, num_columns: int, num_negatives: int | None, generator) -> np.ndarray:
    """(negatives, batch_size) indices into a batch's candidates (column-major: every query's
    positive, then each hard-negative column), drawn the way sentence-transformers'
    ``MultipleNegativesRankingLoss.get_in_batch_negatives`` draws them: for each query, without
    replacement among the other queries' candidates, ``num_negatives`` of them (all when None or
    when fewer are there). By hand because the library draws them inside its ``forward``, on the
    training thread, from texts; here they are drawn in the prefetch thread, before tokenization,
    with the run's seeded ``generator`` (a torch.Generator: the same draw as the library's for the
    same seed, which tests/test_losses.py checks)."""
    import torch

    mask = ~torch.eye(batch_size, dtype=torch.bool).repeat(1, num_columns)
    valid = batch_size * num_columns - num_columns
    if num_negatives is not None and num_negatives < valid:
        chosen = torch.multinomial(mask.float(), num_negatives, generator=generator)
    else:
        chosen = torch.arange(batch_size * num_columns).repeat(batch_size, 1)[mask].reshape(batch_size, -1)
    return chosen.T.numpy()


@dataclass
class GroupCollator:
    """Grouped rows -> a :class:`GroupBatch`: draws each query's documents (``max_docs``), the
    in-batch negatives (``in_batch``), then tokenizes and pads the pairs.

    Runs in the prefetch thread (:mod:`rerank_ray.training.prefetch`), which is why it tokenizes:
    the in-batch negatives pair a query with other queries' documents, so those pairs exist only
    once the batch does, and a capped list is tokenized for the documents drawn this epoch only.
    The tokenization and the padding are the pointwise path's
    (:class:`~rerank_ray.data.encoding.PairEncoder`, :class:`Collator`), which are the CrossEncoder's."""

    encoder: PairEncoder
    pad: Collator
    in_batch: bool = False
    """Score every query against the batch's other candidates (MultipleNegativesRankingLoss)."""
    num_negatives: int | None = None
    """In-batch negatives per query (None: all)."""
    max_docs: int | None = None
    keep_first: bool = False
    """An n-tuple: the first document is the positive, kept when ``max_docs`` draws."""
    rng: np.random.Generator | None = None
    generator: Any = None  # torch.Generator of the in-batch draw

    def lengths(self, rows: pa.Table) -> np.ndarray:
        """Characters of each row's query plus its longest document: what length grouping sorts by."""
        import pyarrow.compute as pc

        longest = pc.list_value_length(rows.column("documents")).fill_null(0)
        docs = pc.utf8_length(pc.list_flatten(rows.column("documents")))
        query = np.asarray(pc.utf8_length(rows.column("query")).fill_null(0), dtype=np.int64)
        counts = np.asarray(longest, dtype=np.int64)
        if not len(docs):
            return query
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        flat = np.asarray(docs.fill_null(0), dtype=np.int64)
        most = np.zeros(len(counts), dtype=np.int64)
        nonempty = counts > 0
        most[nonempty] = np.maximum.reduceat(flat, starts[nonempty])
        return query + most

    def __call__(self, rows: pa.Table) -> GroupBatch:
        weights = rows.column("weight").to_numpy().astype(np.float32)
        real = np.flatnonzero(weights > 0)
        queries = rows.column("query").to_pylist()
        documents = rows.column("documents").to_pylist()
        labels = rows.column("labels").to_pylist()
        picked = [self._draw(documents[i], labels[i]) for i in real]
        if self.in_batch:
            firsts, seconds, counts, flat_labels, label_counts, columns = self._columns(
                [queries[i] for i in real], [p[0] for p in picked]
            )
        else:
            firsts = [queries[i] for i, (docs, _) in zip(real, picked) for _ in docs]
            seconds = [doc for docs, _ in picked for doc in docs]
            counts = np.array([len(docs) for docs, _ in picked], dtype=np.int64)
            flat_labels = np.array([x for _, lab in picked for x in lab], dtype=np.float32)
            label_counts = np.array([len(lab) for _, lab in picked], dtype=np.int64)
            columns = 0
        if not firsts:  # no real query here: one empty pair keeps this rank's forward and backward
            firsts, seconds = [""], [""]
        input_ids, attention_mask, token_type_ids = self._encode(firsts, seconds)
        return GroupBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            weights=weights,
            doc_counts=counts,
            labels=flat_labels,
            label_counts=label_counts,
            columns=columns,
            pair_ids=rows.column("pair_id").to_pylist() if "pair_id" in rows.column_names else None,
            row_keys=_column_numpy(rows, "row_key", np.int64),
            skip=_column_numpy(rows, "skip", np.int8),
        )

    def _draw(self, docs: list[str], labels: list[float]) -> tuple[list[str], list[float]]:
        """A query's documents for this epoch: all, or ``max_docs`` of them drawn without
        replacement, in their order (an n-tuple keeps its positive, first, and draws among its
        negatives; margins, one per negative, follow their negatives)."""
        if self.max_docs is None or len(docs) <= self.max_docs or self.rng is None:
            return docs, labels
        if not self.keep_first:
            chosen = np.sort(self.rng.choice(len(docs), self.max_docs, replace=False))
            return [docs[i] for i in chosen], [labels[i] for i in chosen]
        negatives = np.sort(self.rng.choice(len(docs) - 1, self.max_docs - 1, replace=False)) + 1
        kept = [docs[0]] + [docs[i] for i in negatives]
        if len(labels) == len(docs):
            return kept, [labels[0]] + [labels[i] for i in negatives]
        return kept, [labels[i - 1] for i in negatives]

    def _columns(self, queries: list[str], docs: list[list[str]]):
        """The pairs of an in-batch batch, column by column: positives, in-batch negatives, hard negatives."""
        n = len(queries)
        if n == 0:
            return [], [], np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64), 0
        k = min(len(d) for d in docs)  # an n-tuple: the same count in every row
        candidates = [docs[row][col] for col in range(k) for row in range(n)]  # column-major
        drawn = in_batch_negatives(n, k, self.num_negatives, self.generator)
        seconds = candidates[:n]
        for column in drawn:
            seconds += [candidates[index] for index in column]
        seconds += candidates[n:]
        columns = 1 + len(drawn) + (k - 1)
        firsts = queries * columns
        return firsts, seconds, np.full(n, columns, np.int64), np.zeros(0, np.float32), np.zeros(n, np.int64), columns

    def _encode(self, firsts: list[str], seconds: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        encoded = self.encoder.encode(firsts, seconds)
        lengths = np.fromiter((len(x) for x in encoded["input_ids"]), dtype=np.int64, count=len(firsts))
        flat = np.fromiter((t for x in encoded["input_ids"] for t in x), dtype=np.int64, count=int(lengths.sum()))
        types = None
        if "token_type_ids" in encoded:
            types = np.fromiter((t for x in encoded["token_type_ids"] for t in x), dtype=np.int64, count=len(flat))
        return self.pad.pad_tokens(flat, lengths, types)


def _column_numpy(rows: pa.Table, name: str, dtype) -> np.ndarray | None:
    if name not in rows.column_names:
        return None
    return rows.column(name).to_numpy().astype(dtype, copy=False)


def row_lengths(rows: pa.Table) -> np.ndarray:
    column = rows.column("input_ids")
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return np.diff(column.offsets.to_numpy())


def window_order(
    lengths: np.ndarray,
    batch_size: int,
    rng: np.random.Generator | None,
    group_by_length: bool,
    strata: int = 1,
) -> list[np.ndarray]:
    """Row indices of each batch of one window.

    Shuffled: rows are permuted first (so equal lengths tie at random), then stably sorted by
    length when grouping, cut into batches of ``batch_size``, and the batches are permuted.

    Grouping with ``strata`` > 1 (the micro-batches of one optimizer step): the window's sorted
    batches are split into that many runs of similar length (strata), each run is permuted on
    its own, and the batches are laid out step by step, one from each stratum: every
    ``strata`` consecutive batches hold short, middle and long pairs alike. Each micro-batch
    still carries little padding, but the step's gradient is no longer one length's (and so one
    kind of pair's): grouping whole steps by length cost about 0.01 of Spearman on STS
    Benchmark (benchmarks/RESULTS.md). The steps are then permuted.
    """
    n = len(lengths)
    order = rng.permutation(n) if rng is not None else np.arange(n)
    if group_by_length:
        order = order[np.argsort(lengths[order], kind="stable")]
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if not group_by_length or strata <= 1:
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches
    runs = [list(run) for run in np.array_split(np.arange(len(batches)), strata)]
    if rng is not None:
        runs = [[run[i] for i in rng.permutation(len(run))] for run in runs]
    steps = [[run[i] for run in runs if i < len(run)] for i in range(max(len(run) for run in runs))]
    if rng is not None:
        steps = [steps[i] for i in rng.permutation(len(steps))]
    steps.sort(key=lambda step: len(step) < strata)  # a short step (a window's ragged end) last, kept whole
    return [batches[i] for step in steps for i in step]


def stratified_window_batches(window_batches: int, strata: int) -> int:
    """``window_batches`` rounded up to a multiple of ``strata``: every full window then holds
    whole steps of one micro-batch per stratum, so the steps of consecutive windows stay
    aligned with the optimizer steps (:func:`optimizer_steps` counts batches)."""
    return -(-window_batches // strata) * strata


def iter_batches(
    shard,
    batch_size: int,
    collate: Collator | GroupCollator,
    *,
    window_batches: int,
    group_by_length: bool,
    rng: np.random.Generator | None,
    prefetch_windows: int = 2,
    strata: int = 1,
) -> Iterator[Batch | GroupBatch]:
    """Batches of one epoch from a Ray Data shard iterator (``DataIterator``); ``strata``: see
    :func:`window_order` (the micro-batches of an optimizer step, when grouping by length)."""
    if group_by_length and strata > 1:
        window_batches = stratified_window_batches(window_batches, strata)
    window_rows = batch_size * window_batches
    measure = getattr(collate, "lengths", row_lengths)
    for window in shard.iter_batches(batch_size=window_rows, batch_format="pyarrow", prefetch_batches=prefetch_windows):
        lengths = measure(window)
        for index in window_order(lengths, batch_size, rng, group_by_length, strata):
            yield collate(window.take(pa.array(index)))


def optimizer_steps(
    batches: Iterator[Batch | GroupBatch], expected: int, accumulation: int, where: str
) -> Iterator[list[Batch | GroupBatch]]:
    """One epoch's batches on one rank, ``accumulation`` to an optimizer step (the last step of
    the epoch may hold fewer). ``expected``: the batches the plan gives this rank; ``where``
    names the rank and epoch in errors.

    Every rank must run the same steps: each step's collectives pair up across ranks. A batch
    beyond the plan raises before it is trained, so before a collective the other ranks (already
    in the next epoch's) would never join, which would hold them until the backend's timeout (30
    minutes for NCCL); too few raise when the stream ends."""
    pending: list[Batch | GroupBatch] = []
    seen = 0
    for batch in batches:
        seen += 1
        if seen > expected:
            raise RuntimeError(
                f"{where}: a batch beyond the {expected} planned, stopped before it was trained (its "
                "collectives would wait for ranks that have finished the epoch): the shard duplicated rows"
            )
        pending.append(batch)
        if len(pending) == accumulation:
            yield pending
            pending = []
    if pending:
        yield pending
    if seen != expected:
        raise RuntimeError(f"{where}: {seen} batches, {expected} were planned: the shard lost rows")
