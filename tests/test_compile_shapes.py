"""``train.torch_compile``: the batches of an epoch take a bounded number of shapes, so the compiled
model compiles a graph per length bucket (and none for the epoch's smaller last batch), counted
with dynamo's CompileCounter over an epoch of real collated batches."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest
from tiny import WORDS

from rerank_ray.data.encoding import PairEncoder
from rerank_ray.data.stream import tokenize_batch
from rerank_ray.training.batching import COMPILE_LENGTH_MULTIPLE, Collator, row_lengths, window_order

ROWS, BATCH = 203, 8


class _Handle:
    """What tokenize_batch takes from the driver (a PairEncoder in Ray's object store), in this process."""

    def __init__(self, encoder):
        self.encoder = encoder

    def get(self):
        return self.encoder


def _epoch_rows(model) -> pa.Table:
    """Pairs from 1 to 55 words: token lengths across four buckets of 16."""
    rng = random.Random(3)
    pairs = pa.table(
        {
            "sentence_0": [rng.choice(WORDS) for _ in range(ROWS)],
            "sentence_1": [" ".join(rng.choices(WORDS, k=rng.randint(1, 55))) for _ in range(ROWS)],
            "label": pa.array([float(i % 2) for i in range(ROWS)], pa.float32()),
            "skip": pa.array([0] * ROWS, pa.int8()),
            "row_key": pa.array(np.arange(ROWS), pa.int64()),
        }
    )
    return tokenize_batch(pairs, _Handle(PairEncoder(preprocessor=model)))


def _batches(rows: pa.Table, collate: Collator) -> list:
    order = window_order(row_lengths(rows), BATCH, np.random.default_rng(0), True)
    return [collate(rows.take(pa.array(index))) for index in order]


def _graphs(model, batches) -> int:
    import torch
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, dynamic=False)
    with torch.no_grad():
        for batch in batches:
            compiled(**batch.features(torch.device("cpu")))
    return counter.frame_count


def test_compiled_runs_see_one_batch_size_and_a_graph_per_length_bucket(tiny_bert):
    pytest.importorskip("torch._dynamo")
    from sentence_transformers import CrossEncoder

    encoder = CrossEncoder(str(tiny_bert), device="cpu", max_length=128)
    rows = _epoch_rows(encoder)
    plain = Collator.for_tokenizer(encoder.tokenizer)
    compiled_shapes = plain.for_compile(BATCH)
    batches = _batches(rows, compiled_shapes)

    shapes = {b.input_ids.shape for b in batches}
    assert {rows for rows, _ in shapes} == {BATCH}  # the last batch (203 = 25 x 8 + 3) filled
    assert all(length % COMPILE_LENGTH_MULTIPLE == 0 for _, length in shapes)
    buckets = len(shapes)
    assert 3 <= buckets <= 128 // COMPILE_LENGTH_MULTIPLE
    # The filled rows weigh 0 and have no row key: every real pair is there once, no more.
    weights = np.concatenate([b.weights for b in batches])
    keys = np.concatenate([b.row_keys for b in batches])
    assert weights.sum() == ROWS and sorted(keys[keys >= 0].tolist()) == list(range(ROWS))
    assert (weights == 0).sum() == 5 and (keys[weights == 0] == -1).all()

    assert _graphs(encoder.model, batches) <= buckets + 1
    # Without it, a graph per distinct length and one more for the last batch: up to dynamo's
    # recompile limit, past which it runs the model uncompiled.
    plain_batches = _batches(rows, plain)
    plain_shapes = {b.input_ids.shape for b in plain_batches}
    assert len(plain_shapes) > buckets + 1
    assert _graphs(encoder.model, plain_batches) > buckets + 1
