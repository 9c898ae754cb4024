"""Padding-free batches (``data.padding_free``, :mod:`rerank_ray.training.packing`): a batch packed
into one row scores every pair as the padded batch does, gradients included, for each packable
family (tiny BERT, XLM-R with its positions after the padding index, and the causal-LM reranker)
under eager and SDPA attention on CPU; the same row with attention across pairs does not (the test can
fail); DeBERTa-v2 is refused by ``on`` and padded by ``auto``; a real 2-worker run packed
trains the padded run's weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import base_config, synthetic_pairs, write_jsonl
from test_encoding import _Handle, _pairs, _rows

from rerank_ray.config import Config, ModelConfig
from rerank_ray.data.stream import tokenize_batch
from rerank_ray.errors import ConfigError
from rerank_ray.training.batching import Collator
from rerank_ray.training.models import load_cross_encoder, load_encoder
from rerank_ray.training.packing import InputForm, check_padding_free, input_form, pack, wants_packing

PACKABLE = ["tiny_bert", "tiny_xlm_roberta", "tiny_causal"]
MAX_LENGTH = {"tiny_causal": 64}


def _model_and_batch(folder: Path, attn: str, max_length: int, pairs: int = 13, seed: int = 3):
    """A CrossEncoder with weights drawn wide (the tiny models' own init scores every pair about
    the same, which would hide a pair reading another's tokens), and a padded batch of its pairs."""
    config = ModelConfig(name_or_path=str(folder), attn_implementation=attn)
    model = load_cross_encoder(config, max_length)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim == 2 and "embeddings.position" not in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    encoder = load_encoder(config, max_length)
    queries, documents = _pairs(pairs, seed=seed)
    batch = Collator.for_encoder(encoder)(tokenize_batch(_rows(queries, documents), _Handle(encoder)))
    assert not batch.attention_mask.all()  # there is padding to remove
    return model, batch


def _scores(model, features) -> torch.Tensor:
    return model(features)["scores"].reshape(-1)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", PACKABLE)
def test_a_packed_batch_scores_every_pair_as_the_padded_batch(family, attn, request):
    model, batch = _model_and_batch(request.getfixturevalue(family), attn, MAX_LENGTH.get(family, 24))
    padded_form = input_form(model, "off", "cpu", compiled=False)
    packed_form = input_form(model, "on", "cpu", compiled=False)
    assert not padded_form.packed and packed_form.packed
    device = torch.device("cpu")
    packed_inputs = packed_form.features(batch, device)
    assert "attention_mask" not in packed_inputs and packed_inputs["input_ids"].shape == (
        1,
        int(batch.attention_mask.sum()),
    )
    model.eval()
    with torch.no_grad():
        padded = _scores(model, padded_form.features(batch, device))
        packed = _scores(model, packed_inputs)
        # The control: the same row with a mask that lets every token see the whole row (pairs
        # read each other) scores otherwise.
        control = _scores(model, {**packed_inputs, "attention_mask": torch.ones_like(packed_inputs["input_ids"])})
    assert padded.shape == packed.shape == (len(batch),)
    assert float(padded.max() - padded.min()) > 0.3  # the pairs score apart
    torch.testing.assert_close(packed, padded, rtol=1e-4, atol=2e-5)
    assert float((control - padded).abs().max()) > 0.05


@pytest.mark.parametrize("family", PACKABLE)
def test_a_packed_batch_gives_the_padded_batchs_gradients(family, request):
    model, batch = _model_and_batch(request.getfixturevalue(family), "sdpa", MAX_LENGTH.get(family, 24), pairs=9)
    weights = torch.linspace(-1.0, 1.0, len(batch))
    gradients = []
    for setting in ("off", "on"):
        form = input_form(model, setting, "cpu", compiled=False)
        model.zero_grad(set_to_none=True)
        (_scores(model, form.features(batch, torch.device("cpu"))) * weights).sum().backward()
        gradients.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    padded, packed = gradients
    assert sorted(padded) == sorted(packed)
    for name, grad in padded.items():
        scale = float(grad.abs().max())
        if scale > 1e-4:  # a key bias's gradient is zero but for rounding (softmax ignores a shift)
            torch.testing.assert_close(packed[name], grad, rtol=1e-3, atol=1e-4 * scale, msg=name)


def test_pack_takes_the_real_tokens_of_either_padding_side():
    ids = np.array([[5, 6, 7, 0], [8, 9, 0, 0]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    right, longest = pack(ids, mask, np.array([[0, 0, 1, 0], [0, 1, 0, 0]]), start=0)
    left, _ = pack(np.array([[0, 5, 6, 7], [0, 0, 8, 9]]), mask[:, ::-1].copy(), None, start=2)
    assert longest == 3
    assert right["input_ids"].tolist() == left["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert right["position_ids"].tolist() == [[0, 1, 2, 0, 1]] and left["position_ids"].tolist() == [[2, 3, 4, 2, 3]]
    assert right["token_type_ids"].tolist() == [[0, 0, 1, 0, 1]]
    assert right["cu_seq_lens"].tolist() == [0, 3, 5] and right["cu_seq_lens"].dtype == np.int32


def test_auto_packs_only_under_a_flash_kernel_on_a_gpu():
    assert wants_packing("auto", "flash_attention_2", "cuda", compiled=False)
    assert not wants_packing("auto", "flash_attention_2", "cuda", compiled=True)
    assert not wants_packing("auto", "sdpa", "cuda", compiled=False)
    assert not wants_packing("auto", "flash_attention_2", "cpu", compiled=False)
    assert wants_packing("on", "sdpa", "cpu", compiled=False)
    assert not wants_packing("off", "flash_attention_2", "cuda", compiled=False)


def test_deberta_is_refused_by_on_and_padded_by_auto(tiny_deberta_v2):
    config = ModelConfig(name_or_path=str(tiny_deberta_v2))
    with pytest.raises(ConfigError, match=r"data.padding_free: on: .* model type 'deberta-v2' is not one"):
        check_padding_free(config, "on")
    check_padding_free(config, "auto")
    model = load_cross_encoder(config, 24)
    with pytest.raises(ConfigError, match="cannot be packed"):
        input_form(model, "on", "cpu", compiled=False)
    assert input_form(model, "auto", "cuda", compiled=False) == InputForm(mask="2d", extras={})


def test_padding_free_on_and_torch_compile_are_refused_together(tiny_bert, tmp_path):
    raw = base_config(tiny_bert, tmp_path / "train.jsonl", None, tmp_path / "runs")
    raw["data"]["padding_free"] = "on"
    raw["train"]["torch_compile"] = True
    with pytest.raises(ConfigError, match="padding_free: on and train.torch_compile"):
        Config.from_dict(raw)


@pytest.mark.ray
def test_a_packed_run_trains_the_padded_runs_weights(ray_local, tiny_causal, tmp_path):
    """The causal-LM reranker on 2 workers, padded and packed (fp32, no dropout): the same exported
    weights and the same evaluation."""
    from safetensors.numpy import load_file

    from rerank_ray.run.driver import train

    outcomes = []
    for setting in ("off", "on"):
        raw = base_config(
            tiny_causal,
            write_jsonl(synthetic_pairs(96, seed=1), tmp_path / "train.jsonl"),
            write_jsonl(synthetic_pairs(40, seed=2), tmp_path / "eval.jsonl"),
            tmp_path / "runs",
            data={"padding_free": setting},
            train={"epochs": 1, "learning_rate": 5e-3, "per_device_batch_size": 8},
            eval={"steps": 0, "before_training": False},
            run={"storage_path": str(tmp_path / "runs"), "name": setting, "checkpoint_steps": 0},
        )
        outcomes.append(train(Config.from_dict(raw)))
    padded, packed = outcomes
    assert (padded.metrics["final"]["padding_free"], packed.metrics["final"]["padding_free"]) == (False, True)
    theirs = load_file(next(Path(padded.output_dir).glob("*.safetensors")))
    ours = load_file(next(Path(packed.output_dir).glob("*.safetensors")))
    for name, value in theirs.items():
        np.testing.assert_allclose(ours[name], value, atol=2e-5, rtol=1e-4, err_msg=name)
    assert packed.metrics["final"]["eval_average_precision"] == pytest.approx(
        padded.metrics["final"]["eval_average_precision"], abs=1e-4
    )
