"""No host sync in a training step or an evaluation batch (issue 13): the attention mask reaches
the model in the form its attention takes without asking the device a question.

transformers' masking_utils, handed a 2D mask, checks ``padding_mask.all()`` in Python on every
forward: a ``_local_scalar_dense``, which on a GPU waits for every kernel queued so far. A
TorchDispatchMode counts such calls (``_local_scalar_dense``, ``item``, ``is_nonzero``); on CPU
they are the same calls a GPU would sync on (``-m gpu``: on CUDA, under
``torch.cuda.set_sync_debug_mode("error")`` as well). The 4D mask built on the host gives the
same logits."""

from __future__ import annotations

import collections
import contextlib

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rerank_ray.config import ModelConfig
from rerank_ray.training.batching import Collator
from rerank_ray.training.losses import PointwiseLoss, PointwiseObjective, build_library_loss
from rerank_ray.training.models import load_cross_encoder, load_tokenizer, mask_kind

SYNCS = {"aten._local_scalar_dense.default", "aten.item.default", "aten.is_nonzero.default"}


class HostSyncs(TorchDispatchMode):
    """Counts the ops that read a device value on the host."""

    def __init__(self):
        super().__init__()
        self.count = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in SYNCS:
            self.count[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _batch(tokenizer, padded: bool):
    texts = [("red car", "blue boat on the lake"), ("a cat", "the dog"), ("sun", "moon and star")]
    if not padded:
        texts = [("red car", "blue boat"), ("a cat", "the dog"), ("sun rain", "moon star")]
    encoded = tokenizer([a for a, _ in texts], [b for _, b in texts], truncation=True, max_length=32)
    columns = {"input_ids": pa.array(encoded["input_ids"], pa.list_(pa.int64()))}
    if "token_type_ids" in encoded:
        columns["token_type_ids"] = pa.array(encoded["token_type_ids"], pa.list_(pa.int64()))
    columns["label"] = pa.array([1.0, 0.0, 1.0], pa.float32())
    columns["weight"] = pa.array([1.0, 1.0, 1.0], pa.float32())
    batch = Collator.for_tokenizer(tokenizer)(pa.table(columns))
    assert bool(batch.attention_mask.all()) is (not padded)
    return batch


def _model(folder, attention: str | None):
    config = ModelConfig(name_or_path=str(folder), attn_implementation=attention)
    return load_cross_encoder(config, 32), load_tokenizer(config)


def _sync_debug(device: torch.device):
    """On a GPU, torch's own check too: any synchronising call raises."""
    if device.type != "cuda":
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def erroring():
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")

    return erroring()


@pytest.mark.parametrize("family", ["tiny_bert", "tiny_xlm_roberta"])
@pytest.mark.parametrize("attention", [None, "eager"])
@pytest.mark.parametrize("on", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_a_training_step_and_an_eval_batch_read_nothing_back(family, attention, on, request):
    if on == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    device = torch.device(on)
    model, tokenizer = _model(request.getfixturevalue(family), attention)
    model.to(device)
    kind = mask_kind(model)
    assert kind == ("additive" if attention == "eager" else "bool")
    objective = PointwiseObjective(PointwiseLoss.from_library(build_library_loss(model, "BinaryCrossEntropyLoss", {})))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    for padded in (True, False):
        batch = _batch(tokenizer, padded)
        model.train()
        syncs = HostSyncs()
        with syncs, _sync_debug(device):
            total = objective(model(batch.features(device, kind))["scores"], batch, device)
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        assert not syncs.count, (padded, syncs.count)
        model.eval()
        with torch.no_grad(), HostSyncs() as syncs, _sync_debug(device):
            model.activation_fn(model(batch.features(device, kind))["scores"].float())
        assert not syncs.count, (padded, syncs.count)
    # The counter sees the sync the 2D mask costs (so the zeros above are not for want of looking).
    with torch.no_grad(), HostSyncs() as syncs:
        model(_batch(tokenizer, padded=True).features(device, "2d"))
    assert syncs.count["aten._local_scalar_dense.default"] >= 1


@pytest.mark.parametrize("family", ["tiny_bert", "tiny_xlm_roberta", "tiny_deberta_v2"])
@pytest.mark.parametrize("attention", [None, "eager"])
def test_the_4d_mask_gives_the_logits_of_the_2d_one(family, attention, request):
    model, tokenizer = _model(request.getfixturevalue(family), attention)
    model.eval()
    kind = mask_kind(model)
    if family == "tiny_deberta_v2":
        assert kind == "2d"  # builds its own mask from the 2D one
    device = torch.device("cpu")
    for padded in (True, False):
        batch = _batch(tokenizer, padded)
        with torch.no_grad():
            given = model(batch.features(device, "2d"))["scores"]
            ours = model(batch.features(device, kind))["scores"]
            kept = model(batch.features(device, kind, keep_mask=True))["scores"]
        np.testing.assert_allclose(ours.numpy(), given.numpy(), atol=1e-5)
        np.testing.assert_allclose(kept.numpy(), given.numpy(), atol=1e-5)
