"""The pieces behind fault tolerance, without Ray: data positions and the step arithmetic of a
restored epoch, checkpoint completeness and retention, out-of-memory messages, which failures are
retried, secrets, and remote code."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rerank_ray import errors
from rerank_ray.config import Config, ConfigError
from rerank_ray.data import position
from rerank_ray.errors import DataError
from rerank_ray.redaction import redact, redact_obj
from rerank_ray.training import checkpointing, faults

# ---------------------------------------------------------------------------------------------
# Data position


def test_key_ranges_round_trip():
    keys = np.concatenate([position.row_keys(0, 0, 10), position.row_keys(0, 20, 5), position.row_keys(3, 7, 4)])
    ranges = position.to_ranges(np.random.default_rng(0).permutation(keys))
    assert ranges.tolist() == [[0, 10], [20, 25], [(3 << 40) + 7, (3 << 40) + 11]]
    assert position.count_in_ranges(ranges) == 19
    probe = np.array([0, 9, 10, 19, 20, 24, 25, (3 << 40) + 7, (3 << 40) + 6])
    assert position.in_ranges(probe, ranges).tolist() == [True, True, False, False, True, True, False, True, False]
    merged = position.merge_ranges(ranges, position.to_ranges(np.arange(8, 22)))
    assert merged.tolist()[:1] == [[0, 25]]
    assert position.key_location((3 << 40) + 9) == (3, 9)

    trained = position.TrainedRows()
    trained.add(np.array([5, 6, -1, 7]))  # -1: a filler row, never a trained pair
    trained.add(np.array([1, 2]))
    assert trained.ranges().tolist() == [[1, 3], [5, 8]]

    saved = position.DataPosition(epoch=1, trained=merged, files_digest="abc", train_rows=123)
    again = position.DataPosition.from_bytes(saved.to_bytes())
    assert again.epoch == 1 and again.train_rows == 123 and np.array_equal(again.trained, merged)


def test_rest_of_epoch_has_the_batches_the_epoch_had_left():
    """Simulate what streaming_split may do: any rows to any worker, the short batch anywhere in
    a worker's epoch, filler rows anywhere. Whatever happened, the rows left after b batches per
    worker make exactly n - b batches per worker once padded and split again."""
    for trial in range(2000):
        check_rest_of_epoch(np.random.default_rng(trial))


def check_rest_of_epoch(rng: np.random.Generator) -> None:
    world = int(rng.integers(1, 5))
    batch = int(rng.integers(1, 10))
    pairs = int(rng.integers(1, 200))
    padded = pairs + (-pairs) % world
    per_worker = padded // world
    batches = -(-per_worker // batch)
    done = int(rng.integers(0, batches))
    rows = rng.permutation(np.arange(padded) < pairs)  # True: a real pair, False: a filler row
    trained_pairs = 0
    for worker in range(world):
        mine = rows[worker * per_worker : (worker + 1) * per_worker]
        sizes = [batch] * (batches - 1) + [per_worker - batch * (batches - 1)]
        rng.shuffle(sizes)
        trained_pairs += int(mine[: sum(sizes[:done])].sum())
    assert position.partial_epoch_batches(pairs - trained_pairs, world, batch) == batches - done


# ---------------------------------------------------------------------------------------------
# Checkpoints: complete or ignored; the last K and the best are kept


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


def test_out_of_memory_names_the_batch_size_and_the_fix():
    with pytest.raises(errors.OutOfMemory) as caught, faults.explain_oom("train", 32, 2, 4, 256):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    message = str(caught.value)
    for part in (
        "train.per_device_batch_size=32",
        "train.per_device_batch_size=16 and train.gradient_accumulation_steps=4",
        "global batch of 256",
        "Tried to allocate 2.00 GiB",
    ):
        assert part in message, message
    assert isinstance(caught.value.__cause__, torch.OutOfMemoryError)

    eval_advice = "eval.batch_size=64 .max_length 128.: set eval.batch_size=32"
    with pytest.raises(errors.OutOfMemory, match=eval_advice), faults.explain_oom("eval", 64, max_length=128):
        raise torch.OutOfMemoryError("CUDA out of memory.")
    with pytest.raises(RuntimeError, match="gloo"), faults.explain_oom("train", 8):
        raise RuntimeError("gloo: connection reset")  # not an out-of-memory error: left alone


def test_input_errors_stop_the_run_other_failures_are_retried():
    callback = faults.stop_retrying_callback()
    wrapped = RuntimeError("Ray Data task failed")
    wrapped.__cause__ = DataError("data.train: f.parquet, row 7: ...")
    with pytest.raises(errors.StopRetrying, match="rank 1: data.train: f.parquet, row 7") as caught:
        callback.after_exception(None, {0: RuntimeError("connection closed by peer"), 1: wrapped})
    # The cause survives the pickling that carries it from Ray's controller to the driver.
    revived = pickle.loads(pickle.dumps(caught.value))
    assert isinstance(errors.clear_error(revived), DataError)
    callback.after_exception(None, {0: RuntimeError("The actor died unexpectedly")})  # retried: no raise
    oom = errors.OutOfMemory("out of accelerator memory ...")
    with pytest.raises(errors.StopRetrying):
        callback.after_exception(None, {0: oom})
    # A worker's SIGTERM is retried (the restart resumes from the checkpoint it wrote), and the
    # driver finds it under Ray's wrapping when no retry is left (exit 143, --resume).
    preempted = errors.WorkerPreempted("rank(s) [1] got SIGTERM ...")
    callback.after_exception(None, {0: RuntimeError("peer gone"), 1: preempted})  # no raise
    failed = RuntimeError("Training failed after 2 retries")
    failed.worker_failures = {1: preempted}  # what ray.train.TrainingFailedError holds
    assert errors.find_error(failed, errors.WorkerPreempted) is preempted
    assert errors.clear_error(failed) is None


WORKER_SIGTERM = """
import os, signal, sys, time
from rerank_ray.training import preemption

preemption._WORKER_TRAINING.set()
preemption._install_worker_handler()
os.kill(os.getpid(), signal.SIGTERM)  # while training: noted, the process goes on
time.sleep(0.2)
print("noted" if preemption.worker_signalled() else "missed", flush=True)
preemption._WORKER_TRAINING.clear()
os.kill(os.getpid(), signal.SIGTERM)  # after training: the handler before (here the default) ends it
time.sleep(5)
print("still alive", flush=True)
"""


def test_a_workers_sigterm_is_noted_while_it_trains_and_ends_it_after():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", WORKER_SIGTERM], capture_output=True, text=True, timeout=60)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("[rerank-ray] this worker got SIGTERM: checkpoint at the next progress step")
    assert lines[1:] == ["noted"], done.stdout + done.stderr
    assert done.returncode == -15  # ended by the SIGTERM after training


DRIVER_SIGTERM = """
import os, signal, sys, time
from rerank_ray.training import preemption

with preemption.stop_on_sigterm(sys.argv[1]) as received:
    os.kill(os.getpid(), signal.SIGTERM)  # the first: noted, the stop marker written, the driver goes on
    time.sleep(0.2)
    print("asked" if received and preemption.stop_requested(sys.argv[1]) else "missed", flush=True)
    os.kill(os.getpid(), signal.SIGTERM)  # the second: the handler before (here the default) ends it
    time.sleep(5)
    print("still alive", flush=True)
"""


def test_the_drivers_first_sigterm_asks_the_run_to_stop_and_a_second_ends_it(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", DRIVER_SIGTERM, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    lines = done.stdout.splitlines()
    assert lines[0].startswith("[rerank-ray] SIGTERM: stopping at the next progress step")
    assert lines[1:] == ["asked"], done.stdout + done.stderr
    assert done.returncode == -15


def test_error_messages_are_always_utf8_encodable():
    """Ray sends a task's error as UTF-8; a message holding lone surrogates (a line in another
    encoding) killed the worker instead, and the task was retried for ever."""
    line = "ab\u00e9".encode("utf-16").decode("utf-8", "surrogateescape")
    for error in (errors.DataError(f"row 3 cannot be parsed ({line})"), errors.ConfigError(f"key {line}")):
        str(error).encode("utf-8")  # does not raise
        assert "\\udcff\\udcfe" in str(error)
        assert str(pickle.loads(pickle.dumps(error))) == str(error)


# ---------------------------------------------------------------------------------------------
# Secrets


def test_redact_masks_secret_values_and_token_shapes():
    environ = {
        "HF_TOKEN": "hf_abcdefghijklmnopqrstuvwxyz012345",
        "MY_SERVICE_PASSWORD": "hunter2hunter2",
        "HOME": "/root",
    }
    text = (
        "token hf_abcdefghijklmnopqrstuvwxyz012345 pw hunter2hunter2 home /root "
        "key AKIAIOSFODNN7EXAMPLE other hf_ZZZZZZZZZZZZZZZZZZZZZZZZZZ "
        "s3://AKID:SECRET@bucket/x gs://b/x?X-Goog-Signature=abc123&ok=1"
    )
    out = redact(text, environ)
    for secret in ("hf_abcdefghij", "hunter2", "AKIAIOSFODNN7EXAMPLE", "hf_ZZZZ", "AKID:SECRET", "abc123"):
        assert secret not in out, out
    assert "/root" in out and "s3://***@bucket/x" in out and "ok=1" in out
    assert redact_obj({"a": [text], "hf_abcdefghijklmnopqrstuvwxyz012345": 1}, environ) == {"***": 1, "a": [out]}
    # Variables matched only by name are masked when their value looks like a secret.
    settings = {"MAX_TOKENS": "100000000", "TOKEN_CACHE": "/tmp/token-cache", "MY_API_KEY": "k3y-abcdefgh"}
    assert redact("max 100000000 in /tmp/token-cache with k3y-abcdefgh", settings) == (
        "max 100000000 in /tmp/token-cache with ***"
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("data.train", "s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI@bucket/train/"),
        ("run.storage_path", "s3://bucket/runs?access_key=AKIA&secret_key=wJalrXUtnFEMI"),
        ("model.name_or_path", "https://user:pa55word@models.example.com/m"),
    ],
)
def test_paths_with_credentials_are_refused(tiny_bert, key, value):
    raw = {"model": {"name_or_path": str(tiny_bert)}, "data": {"train": ["x.jsonl"]}}
    section, field = key.split(".")
    raw.setdefault(section, {})[field] = [value] if key == "data.train" else value
    with pytest.raises(ConfigError) as caught:
        Config.from_dict(raw)
    message = str(caught.value)
    assert message.startswith(key) and "environment" in message
    assert "wJalrXUtnFEMI" not in message and "pa55word" not in message


def test_remote_code_runs_only_when_the_config_allows_it(tiny_bert, tmp_path):
    """A model folder that ships its own modelling code (``auto_map``): with the default config
    that code is never imported; ``model.trust_remote_code: true`` imports it."""
    from rerank_ray.config import ModelConfig
    from rerank_ray.training.models import load_cross_encoder, load_tokenizer

    folder = tmp_path / "remote"
    shutil.copytree(tiny_bert, folder)
    marker = tmp_path / "REMOTE_CODE_RAN"
    (folder / "custom_bert.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import BertConfig, BertForSequenceClassification\n"
        "class CustomConfig(BertConfig):\n    model_type = 'bert'\n"
        "class CustomBert(BertForSequenceClassification):\n    config_class = CustomConfig\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "custom_bert.CustomConfig",
        "AutoModelForSequenceClassification": "custom_bert.CustomBert",
    }
    (folder / "config.json").write_text(json.dumps(config))

    model = ModelConfig(name_or_path=str(folder))
    assert model.trust_remote_code is False
    load_tokenizer(model)
    assert type(load_cross_encoder(model, 32).model).__name__ == "BertForSequenceClassification"
    assert not marker.exists()

    model.trust_remote_code = True
    assert type(load_cross_encoder(model, 32).model).__name__ == "CustomBert"
    assert marker.exists()
