"""The checkpoint format without Ray (rerank_ray.training.checkpointing): round trips, the earlier
format, a tampered state refused, completeness and retention."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rerank_ray import errors
from rerank_ray.data import position
from rerank_ray.training import checkpointing


def write_checkpoint(run: Path, step: int, metric: float | None = None) -> Path:
    folder = run / checkpointing.dir_name(step)
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "model.safetensors").write_bytes(os.urandom(2000))
    (folder / checkpointing.STATE_FILE).write_bytes(os.urandom(500))
    (folder / position.POSITION_FILE).write_bytes(
        position.DataPosition(0, np.zeros((0, 2), np.int64), "d", 10).to_bytes()
    )
    metrics = {"step": step, **({"eval_ap": metric} if metric is not None else {})}
    checkpointing.write_marker(str(folder), step, metrics)
    return folder


def _training_state(tiny_bert):
    """A real model, optimizer, scheduler and scaler after one step, as a worker holds them."""
    from sentence_transformers import CrossEncoder
    from transformers import get_scheduler

    model = CrossEncoder(str(tiny_bert))
    optimizer = torch.optim.AdamW(model.model.parameters(), lr=1e-3)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=10)
    model.model(**model.tokenizer(["a b"], ["c d"], return_tensors="pt")).logits.sum().backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=False)


def test_a_checkpoint_round_trips_without_unpickling_code(tiny_bert, tmp_path):
    """What the worker hands over comes back: optimizer, scheduler, loop state, data position and
    every rank's RNG states, read with ``weights_only=True``; restoring the RNG states replays
    the same draws."""
    model, optimizer, scheduler, scaler = _training_state(tiny_bert)
    loop = checkpointing.LoopState(global_step=3, epoch=1, batches_done_in_epoch=2, history=[{"step": 3, "loss": 0.5}])
    where = position.DataPosition(1, np.array([[0, 16]], dtype=np.int64), "digest", 40)
    rng = checkpointing.rng_state()
    expected = (np.random.rand(), float(torch.rand(1)))
    checkpointing.save(str(tmp_path), model, optimizer, scheduler, scaler, loop, [rng], where, {"step": 3})
    saved = checkpointing.load_state(str(tmp_path), "checkpoint-0000003")
    assert saved.loop == loop and saved.position.trained.tolist() == [[0, 16]]
    assert saved.optimizer["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]
    assert saved.scheduler == scheduler.state_dict()
    checkpointing.set_rng_state(saved.rng[0])
    assert (np.random.rand(), float(torch.rand(1))) == expected
    assert checkpointing.read_history(str(tmp_path)) == loop.history


def test_a_checkpoint_of_the_earlier_format_still_restores(tmp_path):
    """Checkpoints written before the RNG states were stored as tensors hold numpy's state as an
    array: numpy's array constructors are all the loader allows beyond tensors."""
    state = {"python": __import__("random").getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    expected = np.random.rand()
    torch.save(
        {"optimizer": {}, "scheduler": {}, "scaler": {}, "loop": {"global_step": 4}, "rng": [state]},
        tmp_path / checkpointing.STATE_FILE,
    )
    (tmp_path / position.POSITION_FILE).write_bytes(
        position.DataPosition(0, np.zeros((0, 2), np.int64), "d", 1).to_bytes()
    )
    saved = checkpointing.load_state(str(tmp_path))
    checkpointing.set_rng_state(saved.rng[0])
    assert saved.loop.global_step == 4 and np.random.rand() == expected


class _RunsCode:
    """What a tampered training-state file could hold: an object whose unpickling runs a call."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_tampered_training_state_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"optimizer": _RunsCode(marker), "loop": {}}, tmp_path / checkpointing.STATE_FILE)
    with pytest.raises(errors.CheckpointError, match=r"checkpoint checkpoint-0000008: training_state.pt holds objects"):
        checkpointing.load_state(str(tmp_path), "checkpoint-0000008")
    assert not marker.exists()
    # Not retried, and shown as the message alone (exit 2), like bad input.
    assert isinstance(errors.clear_error(RuntimeError("worker failed")), type(None))
    wrapped = RuntimeError("restore failed")
    wrapped.__cause__ = errors.CheckpointError("checkpoint x: ...")
    assert isinstance(errors.clear_error(wrapped), errors.CheckpointError)


def test_incomplete_checkpoints_are_never_restored(tmp_path):
    run = tmp_path / "runs" / "r"
    for step in (4, 8, 12, 16):
        write_checkpoint(run, step)
    (run / "checkpoint-0000012" / checkpointing.MARKER).unlink()  # the upload stopped before the marker
    (run / "checkpoint-0000016" / checkpointing.STATE_FILE).write_bytes(b"cut")  # a file cut short
    partial = run / "checkpoint-0000020"
    (partial / "model").mkdir(parents=True)  # an upload that died after its first files
    complete, incomplete = checkpointing.scan(str(tmp_path / "runs"), "r")
    assert [c.step for c in complete] == [4, 8]
    assert set(incomplete) == {str(run / f"checkpoint-00000{s}") for s in (12, 16, 20)}
    assert "no checkpoint.json" in incomplete[str(partial)]
    assert "training_state.pt has 3 bytes" in incomplete[str(run / "checkpoint-0000016")]
    latest = checkpointing.latest_complete(str(tmp_path / "runs"), "r")
    assert latest.step == 8 and checkpointing.read_position(latest).train_rows == 10
    shutil.rmtree(run / "checkpoint-0000008" / "model")
    assert checkpointing.latest_complete(str(tmp_path / "runs"), "r").step == 4


def test_prune_keeps_the_last_k_and_the_best(tmp_path):
    run = tmp_path / "runs" / "r"
    for step, metric in [(10, 0.7), (20, 0.9), (30, None), (40, 0.8), (50, None), (60, 0.85)]:
        write_checkpoint(run, step, metric)
    (run / "checkpoint-0000070" / "model").mkdir(parents=True)  # incomplete
    pruned = checkpointing.prune(str(tmp_path / "runs"), "r", keep_last=2, headline="eval_ap")
    assert sorted(Path(p).name for p in pruned) == [
        "checkpoint-0000010",
        "checkpoint-0000030",
        "checkpoint-0000040",
        "checkpoint-0000070",
    ]
    complete, incomplete = checkpointing.scan(str(tmp_path / "runs"), "r")
    assert [c.step for c in complete] == [20, 50, 60] and not incomplete
    # Pruned folders stay (Ray's run snapshot lists them) but hold only the tombstone.
    assert sorted(os.listdir(run / "checkpoint-0000010")) == [checkpointing.TOMBSTONE]
    assert checkpointing.best_checkpoint(complete, "eval_ap").step == 20


# ---------------------------------------------------------------------------------------------
# Out of memory, and which failures are worth a retry
