"""Rerankers that do not fit one GPU: LoRA adapters, activation checkpointing and FSDP2 sharding.

Without Ray: LoRA on the tiny encoder (a new head, trained and saved) and the tiny causal LM (no
head), its checkpoint restored exactly and its merged export scoring as the adapted model;
activation checkpointing giving the same loss and gradients; FSDP2 over two gloo processes
reaching DDP's weights, its distributed checkpoint read back on one and on two ranks. With Ray:
the loop under LoRA and under FSDP, a worker killed in each, every pair trained once per epoch."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import base_config
from test_faults import assert_every_pair_once_per_epoch, read_audit, sessions_in_order, trained_per_epoch
from tiny import synthetic_pairs, write_jsonl

from rerank_ray.config import Config, LoraConfig, ModelConfig
from rerank_ray.errors import ConfigError
from rerank_ray.run.driver import train
from rerank_ray.training import adapters, checkpointing, sharding
from rerank_ray.training.faults import FAULTS_ENV
from rerank_ray.training.models import forward_extras, load_cross_encoder, load_encoder

PAIRS = [("red car", "blue boat on the lake"), ("a cat", "the dog"), ("sun rain", "moon and star"), ("tree", "fish")]


def _features(model, folder: str, max_length: int = 64) -> dict:
    from test_encoding import _Handle, _rows

    from rerank_ray.data.stream import tokenize_batch
    from rerank_ray.training.batching import Collator

    encoder = load_encoder(ModelConfig(name_or_path=folder), max_length)
    rows = _rows([a for a, _ in PAIRS], [b for _, b in PAIRS])
    batch = Collator.for_encoder(encoder)(tokenize_batch(rows, _Handle(encoder)))
    return {**batch.features(torch.device("cpu")), **forward_extras(model)}


def _step(model, features: dict) -> torch.Tensor:
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(dict(features))["scores"].reshape(-1), labels)
    loss.backward()
    return loss.detach()


@pytest.mark.parametrize("family", ["tiny_bert", "tiny_causal"])
def test_lora_trains_the_adapters_and_a_new_head_and_restores_them_exactly(family, request, tmp_path):
    from sentence_transformers import CrossEncoder

    folder = str(request.getfixturevalue(family))
    config = ModelConfig(name_or_path=folder, lora=LoraConfig(r=4, dropout=0.0))
    torch.manual_seed(0)
    model = load_cross_encoder(config, 64)
    total_before = sum(p.numel() for p in model.parameters())
    adapters.add_lora(model, config.lora)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    lora = {n: p for n, p in trainable.items() if "lora_" in n}
    head = {n: p for n, p in trainable.items() if "lora_" not in n}
    assert lora and adapters.trainable_parameters(model) == sum(p.numel() for p in trainable.values())
    if family == "tiny_bert":  # the new scoring head trains in full beside the adapters (and is saved)
        assert sorted(n.rsplit(".", 1)[-1] for n in head) == ["bias", "weight"] and all("classifier" in n for n in head)
    else:  # a causal LM scores with its yes/no logits: no head, adapters only
        assert head == {}
    assert adapters.trainable_parameters(model) < total_before / 5

    features = _features(model, folder)
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=1e-2)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    for _ in range(3):
        _step(model, features)
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(p, frozen_before[n]) for n, p in model.named_parameters() if not p.requires_grad)
    model.eval()
    with torch.no_grad():
        adapted = model(dict(features))["scores"].reshape(-1)

    # The checkpoint holds the adapter and the head only; a fresh base with the same adapters restores them exactly.
    model.save(str(tmp_path / "checkpoint" / checkpointing.MODEL_DIR))
    saved = {p.name for p in (tmp_path / "checkpoint" / checkpointing.MODEL_DIR).iterdir()}
    assert adapters.ADAPTER_WEIGHTS in saved and "model.safetensors" not in saved
    assert checkpointing.model_format(str(tmp_path / "checkpoint")) == "adapter"
    fresh = load_cross_encoder(config, 64)
    adapters.add_lora(fresh, config.lora)
    adapters.load_adapter_state(fresh, str(tmp_path / "checkpoint" / checkpointing.MODEL_DIR))
    expected = model.state_dict()
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, expected[name]), name

    # The export: adapters merged into the weights, a folder CrossEncoder loads without peft.
    adapters.merge(fresh)
    assert not any("lora_" in n for n, _ in fresh.named_parameters())
    fresh.save(str(tmp_path / "merged"))
    exported = CrossEncoder(str(tmp_path / "merged"), device="cpu")
    exported.eval()
    with torch.no_grad():
        merged = exported(dict(_features(exported, str(tmp_path / "merged"))))["scores"].reshape(-1)
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["tiny_bert", "tiny_causal"])
@pytest.mark.parametrize("lora", [False, True])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(family, lora, request):
    folder = str(request.getfixturevalue(family))
    config = ModelConfig(name_or_path=folder, lora=LoraConfig(r=4 if lora else 0, dropout=0.0))

    def run(checkpointing_on: bool):
        torch.manual_seed(0)
        model = load_cross_encoder(config, 64)
        if lora:
            adapters.add_lora(model, config.lora)
            for name, parameter in model.named_parameters():  # B starts at 0: give A a gradient too
                if "lora_B" in name:
                    torch.nn.init.normal_(parameter, std=0.1, generator=torch.Generator().manual_seed(1))
        if checkpointing_on:
            model.activation_checkpointing_enable()
        model.train()
        loss = _step(model, _features(model, folder))
        return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = run(False)
    checkpointed_loss, checkpointed_grads = run(True)
    assert torch.equal(loss, checkpointed_loss)
    assert sorted(grads) == sorted(checkpointed_grads) and len(grads) > 0
    for name in grads:
        torch.testing.assert_close(checkpointed_grads[name], grads[name], atol=1e-7, rtol=1e-6, msg=name)


def test_memory_settings_are_checked_before_ray():
    raw = {"model": {"name_or_path": "m"}, "data": {"train": "t.jsonl"}}
    with pytest.raises(ConfigError, match="model.lora.r must be 0"):
        Config.from_dict({**raw, "model": {"name_or_path": "m", "lora": {"r": -1}}})
    with pytest.raises(ConfigError, match="model.lora.r is 0"):
        Config.from_dict({**raw, "model": {"name_or_path": "m", "lora": {"save_adapter": True}}})
    with pytest.raises(ConfigError, match="fsdp trains in fp32 or bf16"):
        Config.from_dict({**raw, "scaling": {"strategy": "fsdp"}, "train": {"precision": "fp16"}})
    config = Config.from_dict(
        {**raw, "model": {"name_or_path": "m", "lora": {"r": 8}}, "scaling": {"strategy": "fsdp"}}
    )
    assert config.model.lora.r == 8 and config.scaling.strategy == "fsdp"


# ---------------------------------------------------------------------------------------------
# FSDP2 over two gloo processes, without Ray


def _fsdp_worker(rank: int, world: int, port: int, folder: str, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    config = ModelConfig(name_or_path=folder)
    results = {}
    for strategy in ("ddp", "fsdp"):
        torch.manual_seed(0)
        model = load_cross_encoder(config, 64)
        features = _features(model, folder)
        mine = {k: (v[rank::world] if torch.is_tensor(v) else v) for k, v in features.items()}
        if strategy == "fsdp":
            assert sharding.shard(model, "cpu", world) == 2  # the tiny model's 2 blocks
            wrapped = model
        else:
            wrapped = DistributedDataParallel(model)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        labels = torch.tensor([1.0, 0.0, 1.0, 0.0])[rank::world]
        for _ in range(4):
            logits = wrapped(dict(mine))["scores"].reshape(-1)
            torch.nn.functional.binary_cross_entropy_with_logits(logits, labels).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            optimizer.step()
            optimizer.zero_grad()
        state = sharding.full_state_dict(model) if strategy == "fsdp" else model.state_dict()
        results[strategy] = {k: v.detach().clone().cpu() for k, v in state.items()}
        if strategy == "fsdp":
            sharding.save_shards(f"{out}/dcp", model, optimizer)
            # Read back on the same two ranks into a fresh sharded model: equal weights.
            torch.manual_seed(1)
            again = load_cross_encoder(config, 64)
            sharding.shard(again, "cpu", world)
            sharding.load_shards(f"{out}/dcp", again)
            results["reloaded"] = {k: v.detach().clone().cpu() for k, v in sharding.full_state_dict(again).items()}
    if rank == 0:
        torch.save(results, f"{out}/results.pt")
    dist.destroy_process_group()


def test_fsdp_reaches_ddps_weights_and_its_checkpoint_reads_back_on_one_and_two_ranks(tiny_bert, tmp_path):
    """Two gloo processes, the same global batch: FSDP2 (per-block shards) and DDP end 4 clipped
    AdamW steps with the same weights; the distributed checkpoint written by the two ranks reads
    back on two ranks and in one process without a process group (the export's way)."""
    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_fsdp_worker, args=(2, port, str(tiny_bert), str(tmp_path)), nprocs=2, join=True)
    results = torch.load(tmp_path / "results.pt", weights_only=True)
    assert sorted(results["fsdp"]) == sorted(results["ddp"])
    for name, value in results["ddp"].items():
        torch.testing.assert_close(results["fsdp"][name], value, atol=1e-6, rtol=1e-5, msg=name)
        assert torch.equal(results["reloaded"][name], results["fsdp"][name]), name
    single = load_cross_encoder(ModelConfig(name_or_path=str(tiny_bert)), 64)
    sharding.load_shards(str(tmp_path / "dcp"), single)
    for name, value in single.state_dict().items():
        assert torch.equal(value, results["fsdp"][name]), name


# ---------------------------------------------------------------------------------------------
# The real loop


def _killed_run_config(base_model: Path, tmp_path: Path, name: str, evaluate: bool = False, **sections) -> dict:
    """203 pairs on 2 workers (13 steps an epoch), a checkpoint every 4 steps, one restart allowed."""
    rows = synthetic_pairs(203, seed=1)
    raw = base_config(
        base_model,
        write_jsonl(rows, tmp_path / "data" / "train.jsonl"),
        write_jsonl(synthetic_pairs(61, seed=2), tmp_path / "data" / "eval.jsonl") if evaluate else None,
        tmp_path / "runs",
        data={"id_column": "pair_id"},
        train={"epochs": 1, "learning_rate": 5e-3, "logging_steps": 4},
        eval={"steps": 10},
        run={"storage_path": str(tmp_path / "runs"), "name": name, "audit": True, "checkpoint_steps": 4,
             "max_failures": 1},
    )  # fmt: skip
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def _kill_rank_1_after(step: int, tmp_path: Path, monkeypatch) -> Path:
    faults_dir = tmp_path / "faults"
    faults_dir.mkdir()
    spec = {"dir": str(faults_dir), "faults": [{"name": f"step-{step}", "at": "step", "rank": 1, "step": step}]}
    monkeypatch.setenv(FAULTS_ENV, json.dumps(spec))
    return faults_dir


@pytest.mark.ray
def test_lora_under_ddp_survives_a_killed_worker_and_exports_the_merged_model(
    ray_local, tiny_bert, tmp_path, monkeypatch
):
    """The encoder with LoRA (its new head trained and saved beside the adapters): rank 1 killed
    after step 7, the restart restores step 4's adapter checkpoint and trains the rest of the
    epoch's pairs once, the ranks agreeing at every checkpoint; the export is the merged model, the
    adapter alone beside it scores the same."""
    from sentence_transformers import CrossEncoder

    faults = _kill_rank_1_after(7, tmp_path, monkeypatch)
    raw = _killed_run_config(
        tiny_bert, tmp_path, "lora", model={"lora": {"r": 4, "dropout": 0.0, "save_adapter": True}}
    )
    outcome = train(Config.from_dict(raw))
    assert {p.name for p in faults.iterdir()} == {"step-7"}
    records = read_audit(Path(outcome.run_dir))
    sessions = sessions_in_order(records)
    assert [restored for _, restored in sessions] == [None, 4]
    assert_every_pair_once_per_epoch(trained_per_epoch(records, sessions), 1, 203)
    digests: dict[int, dict[int, str]] = {}
    for record in records:
        if record["kind"] == "params":
            digests.setdefault(record["step"], {})[record["rank"]] = record["digest"]
    assert all(len(set(by_rank.values())) == 1 for by_rank in digests.values())  # the ranks agree at every check

    out = Path(outcome.output_dir)
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert (out / "adapter" / "adapter_config.json").is_file()
    merged = CrossEncoder(str(out), device="cpu").predict(PAIRS, show_progress_bar=False)
    adapter = CrossEncoder(str(out / "adapter"), device="cpu").predict(PAIRS, show_progress_bar=False)
    np.testing.assert_allclose(merged, adapter, atol=1e-5)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "- LoRA: rank 4, alpha 8, dropout 0" in card and "merged into the exported weights" in card


@pytest.mark.ray
def test_fsdp_trains_the_weights_ddp_trains(ray_local, tiny_bert, tmp_path):
    """The same run under DDP and under FSDP2 (2 workers, fp32, no dropout): the exported weights
    and the reported metric agree."""
    from safetensors.numpy import load_file

    common = {
        "run": {"audit": False, "max_failures": 0, "checkpoint_steps": 0},
        "eval": {"steps": 0, "before_training": False},
    }
    ddp = train(Config.from_dict(_killed_run_config(tiny_bert, tmp_path, "ddp", evaluate=True, **common)))
    fsdp = train(
        Config.from_dict(
            _killed_run_config(tiny_bert, tmp_path, "fsdp", evaluate=True, scaling={"strategy": "fsdp"}, **common)
        )
    )
    theirs = load_file(next(Path(ddp.output_dir).glob("*.safetensors")))
    ours = load_file(next(Path(fsdp.output_dir).glob("*.safetensors")))
    assert sorted(ours) == sorted(theirs)
    for name, value in theirs.items():
        np.testing.assert_allclose(ours[name], value, atol=2e-5, rtol=1e-4, err_msg=name)
    assert fsdp.metrics["final"]["eval_average_precision"] == pytest.approx(
        ddp.metrics["final"]["eval_average_precision"], abs=1e-4
    )
    card = (Path(fsdp.output_dir) / "README.md").read_text(encoding="utf-8")
    assert "(FSDP2, each transformer block sharded, gloo)" in card


@pytest.mark.ray
def test_a_sharded_causal_reranker_with_lora_survives_a_killed_worker(ray_local, tiny_causal, tmp_path, monkeypatch):
    """FSDP2, LoRA and activation checkpointing together on the causal-LM reranker: rank 1 is
    killed after step 7; every rank restores its shards of step 4 (a checkpoint complete with
    both ranks' files) and the rest of the epoch trains each pair once; the export, gathered from
    the shards and merged, loads as the library's causal CrossEncoder."""
    from sentence_transformers import CrossEncoder

    faults = _kill_rank_1_after(7, tmp_path, monkeypatch)
    raw = _killed_run_config(
        tiny_causal,
        tmp_path,
        "sharded",
        model={"lora": {"r": 4, "dropout": 0.0}},
        train={"gradient_checkpointing": True},
        scaling={"strategy": "fsdp"},
    )
    outcome = train(Config.from_dict(raw))
    assert {p.name for p in faults.iterdir()} == {"step-7"}
    records = read_audit(Path(outcome.run_dir))
    sessions = sessions_in_order(records)
    assert [restored for _, restored in sessions] == [None, 4]
    assert_every_pair_once_per_epoch(trained_per_epoch(records, sessions), 1, 203)
    shards = next(Path(outcome.run_dir).glob("checkpoint-*/model_shards"))
    assert {p.name for p in shards.iterdir()} >= {".metadata", "__0_0.distcp", "__1_0.distcp"}
    model = CrossEncoder(outcome.output_dir, device="cpu")
    assert model[0].transformer_task == "text-generation" and not any("lora_" in n for n, _ in model.named_parameters())
    assert np.isfinite(model.predict(PAIRS, show_progress_bar=False)).all()
    card = (Path(outcome.output_dir) / "README.md").read_text(encoding="utf-8")
    assert "FSDP2" in card and "activation checkpointing" in card and "- LoRA: rank 4" in card
