"""Every grouped loss equals sentence-transformers' own, value and gradients, on the same texts:
our path (the collator's draw and tokenization, one forward, :class:`GroupLoss`) against the
library loss's ``forward`` on the raw texts, with ragged lists, padding, and filler and skipped
rows in the batch (which must change nothing)."""

from __future__ import annotations

import inspect
import random

import pyarrow as pa
import pytest
import torch
from tiny import WORDS

from rerank_ray.data.encoding import PairEncoder
from rerank_ray.losses import LOSSES
from rerank_ray.training.batching import Collator, GroupCollator, in_batch_negatives
from rerank_ray.training.losses import GroupLoss, build_library_loss

LIST_LOSSES = {
    "ListNetLoss": {},
    "ListMLELoss": {},
    "PListMLELoss": {},
    "LambdaLoss": {},
    "LambdaLoss-k3": {"k": 3, "weighting_scheme": "NDCGLoss2Scheme"},
    "LambdaLoss-ndcg1": {"weighting_scheme": "NDCGLoss1Scheme", "reduction_log": "natural"},
    "RankNetLoss": {},
    "ADRMSELoss": {"activation_fn": "Sigmoid"},
}
TUPLE_LOSSES = {
    "MultipleNegativesRankingLoss": {"num_negatives": None},
    "MultipleNegativesRankingLoss-drawn": {"num_negatives": 3},
    "MultipleNegativesRankingLoss-sigmoid-off": {"activation_fn": None, "scale": 5.0},
    "CachedMultipleNegativesRankingLoss": {"num_negatives": 2, "mini_batch_size": 4},
    "MarginMSELoss": {},
    "MarginMSELoss-margins": {},
}


def _lists(n: int, seed: int = 0) -> tuple[list[str], list[list[str]], list[list[float]]]:
    rng = random.Random(seed)
    queries = [" ".join(rng.sample(WORDS, 2)) for _ in range(n)]
    docs = [[" ".join(rng.sample(WORDS, rng.randint(2, 7))) for _ in range(rng.randint(2, 6))] for _ in range(n)]
    labels = [[float(rng.randint(0, 3)) for _ in d] for d in docs]
    for lab in labels:
        lab[0] = 3.0 if all(x == lab[0] for x in lab) else lab[0]  # some order in every list
    return queries, docs, labels


def _table(queries, docs, labels, filler: int = 2) -> pa.Table:
    """The stream's rows for the worker: real rows, then a skipped row and filler rows (weight 0)."""
    rows = len(queries)
    return pa.table(
        {
            "query": queries + ["", ""] + [""] * (filler - 1),
            "documents": pa.array(docs + [[], []] + [[]] * (filler - 1), pa.list_(pa.string())),
            "labels": pa.array(labels + [[], []] + [[]] * (filler - 1), pa.list_(pa.float32())),
            "weight": pa.array([1.0] * rows + [0.0] * (filler + 1), pa.float32()),
            "skip": pa.array([0] * rows + [1] + [0] * filler, pa.int8()),
            "row_key": pa.array(list(range(rows + filler + 1)), pa.int64()),
        }
    )


def _grads(model) -> list[torch.Tensor]:
    grads = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    return grads


def _ours(model, library, table, seed: int, **collator) -> tuple[torch.Tensor, list[torch.Tensor]]:
    encoder = PairEncoder(preprocessor=model)  # the loaded model's own preprocess
    collate = GroupCollator(
        encoder=encoder,
        pad=Collator.for_encoder(encoder),
        generator=torch.Generator().manual_seed(seed),
        **collator,
    )
    batch = collate(table)
    logits = model(batch.features(torch.device("cpu")))["scores"]
    total = GroupLoss(library)(logits, batch, torch.device("cpu"))
    value = total / max(batch.queries, 1)
    value.backward()
    return value.detach(), _grads(model)


def _check(expected, expected_grads, ours, our_grads):
    torch.testing.assert_close(ours, expected.detach(), rtol=1e-5, atol=1e-6)
    assert len(our_grads) == len(expected_grads) > 0
    for mine, theirs in zip(our_grads, expected_grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("case", list(LIST_LOSSES))
def test_listwise_loss_equals_library(tiny_bert, case):
    from sentence_transformers import CrossEncoder

    name = case.split("-")[0]
    model = CrossEncoder(str(tiny_bert))
    library = build_library_loss(model, name, LIST_LOSSES[case])
    queries, docs, labels = _lists(5)
    expected = library([queries, docs], [torch.tensor(lab) for lab in labels])
    expected.backward()
    expected_grads = _grads(model)
    ours, our_grads = _ours(model, library, _table(queries, docs, labels), seed=0)
    _check(expected, expected_grads, ours, our_grads)


@pytest.mark.parametrize("case", list(TUPLE_LOSSES))
def test_tuple_loss_equals_library(tiny_bert, case):
    from sentence_transformers import CrossEncoder

    name = case.split("-")[0]
    model = CrossEncoder(str(tiny_bert))
    library = build_library_loss(model, name, TUPLE_LOSSES[case])
    rng = random.Random(1)
    n, k = 6, 3  # queries; documents per query (a positive and 2 hard negatives)
    queries = [" ".join(rng.sample(WORDS, 2)) for _ in range(n)]
    docs = [[" ".join(rng.sample(WORDS, rng.randint(2, 7))) for _ in range(k)] for _ in range(n)]
    columns = [queries] + [[d[c] for d in docs] for c in range(k)]
    in_batch = name != "MarginMSELoss"
    if in_batch:
        labels = [[1.0] + [0.0] * (k - 1) for _ in range(n)]
        torch.manual_seed(7)  # the library draws its in-batch negatives from torch's default generator
        expected = library(columns, None)
    else:
        scores = [[rng.uniform(-3, 3) for _ in range(k)] for _ in range(n)]
        margins = case.endswith("margins")
        labels = [[s[0] - x for x in s[1:]] for s in scores] if margins else scores
        expected = library(columns, torch.tensor(labels))
    expected.backward()
    expected_grads = _grads(model)
    ours, our_grads = _ours(
        model,
        library,
        _table(queries, docs, labels),
        seed=7,
        in_batch=in_batch,
        num_negatives=TUPLE_LOSSES[case].get("num_negatives", 4),
        keep_first=True,
    )
    _check(expected, expected_grads, ours, our_grads)


def test_in_batch_draw_equals_the_library_draw(tiny_bert):
    """The negatives drawn in the prefetch thread are the ones the library's forward would draw."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.losses import MultipleNegativesRankingLoss

    library = MultipleNegativesRankingLoss(CrossEncoder(str(tiny_bert)), num_negatives=3)
    anchors = [f"q{i}" for i in range(5)]
    candidates = [[f"p{i}" for i in range(5)], [f"n{i}" for i in range(5)]]
    flat = [c for column in candidates for c in column]
    torch.manual_seed(11)
    theirs = list(library.get_in_batch_negatives(anchors, candidates))
    ours = in_batch_negatives(5, 2, 3, torch.Generator().manual_seed(11))
    assert [[flat[i] for i in column] for column in ours] == theirs


def test_the_loss_table_matches_the_library():
    """Every loss class of the library is in the table, with the keyword arguments its class takes."""
    from sentence_transformers.cross_encoder import losses

    classes = {
        name
        for name in losses.__all__
        if name.endswith("Loss") and isinstance(getattr(losses, name), type) and name != "PListMLELambdaWeight"
    }
    assert classes == set(LOSSES)
    for name, spec in LOSSES.items():
        parameters = list(inspect.signature(getattr(losses, name)).parameters)
        assert set(spec.kwargs) == {p for p in parameters if p not in ("model", "kwargs")}, name


def test_a_batch_without_a_real_query_still_reaches_every_parameter(tiny_bert):
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(tiny_bert))
    library = build_library_loss(model, "ListNetLoss", {})
    table = _table([], [], [], filler=3)
    ours, grads = _ours(model, library, table, seed=0)
    assert float(ours) == 0.0
    assert len(grads) == len([p for p in model.parameters() if p.requires_grad])
    assert all(float(g.abs().sum()) == 0.0 for g in grads)


def test_the_gradient_cache_gives_the_gradients_of_the_library(tiny_bert):
    """CachedMultipleNegativesRankingLoss through rerank-ray's gradient cache (chunks of 5 pairs)
    equals the library's own cached loss (no dropout: the library pads each chunk to its own
    length, so dropout masks could not match), and with dropout it equals the same chunks scored
    with a graph: the second pass replays the first pass's dropout masks."""
    from contextlib import nullcontext

    from sentence_transformers import CrossEncoder
    from tiny import build_tiny_bert

    from rerank_ray.training.losses import cached_backward

    rng = random.Random(2)
    n, k = 5, 2
    queries = [" ".join(rng.sample(WORDS, 2)) for _ in range(n)]
    docs = [[" ".join(rng.sample(WORDS, rng.randint(2, 7))) for _ in range(k)] for _ in range(n)]
    columns = [queries] + [[d[c] for d in docs] for c in range(k)]
    cpu = torch.device("cpu")

    def cached(model, library):
        collate = GroupCollator(
            encoder=PairEncoder(preprocessor=model),
            pad=Collator.for_tokenizer(model.tokenizer),
            in_batch=True,
            num_negatives=2,
            keep_first=True,
            generator=torch.Generator().manual_seed(3),
        )
        batch = collate(_table(queries, docs, [[1.0, 0.0]] * n))
        features = batch.features(cpu)
        torch.manual_seed(11)
        total = cached_backward(
            lambda f, grad: model(f)["scores"],
            features,
            batch,
            GroupLoss(library),
            cpu,
            5,
            lambda t: t / n,  # the mean over the queries, as the library returns
            nullcontext,
            True,
        )
        return batch, features, total / n, _grads(model)

    model = CrossEncoder(str(tiny_bert))
    library = build_library_loss(
        model, "CachedMultipleNegativesRankingLoss", {"num_negatives": 2, "mini_batch_size": 5}
    )
    torch.manual_seed(3)  # the library's draw of in-batch negatives
    expected = library(columns, None)
    expected.backward()
    expected_grads = _grads(model)
    _, _, value, grads = cached(model, library)
    _check(expected, expected_grads, value, grads)

    model = CrossEncoder(str(build_tiny_bert(tiny_bert.parent / "dropout-bert", dropout=0.3)))
    model.train()
    library = build_library_loss(
        model, "CachedMultipleNegativesRankingLoss", {"num_negatives": 2, "mini_batch_size": 5}
    )
    batch, features, value, grads = cached(model, library)
    torch.manual_seed(11)
    rows = features["input_ids"].shape[0]
    logits = torch.cat([model({k: v[s : s + 5] for k, v in features.items()})["scores"] for s in range(0, rows, 5)])
    reference = GroupLoss(library)(logits, batch, cpu) / n
    reference.backward()
    _check(reference, _grads(model), value, grads)
