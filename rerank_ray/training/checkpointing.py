"""Checkpoints: what one holds, how it reaches storage whole or not at all, which ones are kept.

A checkpoint is a folder ``<storage_path>/<run>/checkpoint-<step>/`` with

- ``model/``: the CrossEncoder (sentence-transformers' own save format; with LoRA its adapter and
  saved modules only, peft's format);
- under FSDP instead, ``model_shards/`` and ``optimizer_shards/``: the sharded state dicts in torch's
  distributed checkpoint format, every rank's shard its own file (:mod:`rerank_ray.training.sharding`);
- ``training_state.pt``: optimizer (unless sharded), scheduler, grad scaler, loop state, every rank's RNG states;
- ``data_position.npz``: the pairs already trained in the current epoch (:mod:`rerank_ray.data.position`);
- ``history.json``: the logged losses and metrics so far;
- ``checkpoint.json``: the completion marker, written last. It lists every other file with its size,
  plus the step and the metrics of that checkpoint.

Atomicity. Ray Train uploads a reported checkpoint from the worker with ``pyarrow.fs.copy_files``
and registers it (in its run snapshot) only after the upload returns. A worker that dies part-way
through an upload therefore leaves a partial folder that Ray never registers, and a restarted
attempt reaching the same step later uploads into that same folder. We pass our own
``checkpoint_upload_fn`` (:func:`upload`) to ``ray.train.report``: it removes whatever an earlier
attempt left in the folder, copies the files, and writes ``checkpoint.json`` only after every
other file is in storage. A folder without a marker, or whose files do not match it, is
incomplete and is never restored or exported (:func:`verify`). Object stores give read-after-write
consistency, so a visible marker means the files it lists are visible too.

This module owns that format: :func:`save` writes a checkpoint folder from what the loop hands
over (model, optimizer, scheduler, grad scaler, :class:`LoopState`, RNG states, data position),
:func:`load_state` reads it back; the worker never names a file of it.

Restore. Workers (and :class:`RestOfEpoch`, which builds the rest of an
interrupted epoch) restore from the newest *complete* checkpoint in the run folder
(:func:`latest_complete`), found by listing storage, so both always agree, whether the run was
restarted by Ray Train after a worker died or by ``--resume`` after the whole job stopped.

Retention. Ray Train keeps the K best checkpoints by one metric plus the latest; we want the
last K plus the best. So Ray keeps every checkpoint (``num_to_keep=None``) and :func:`prune`
empties the others, leaving a ``pruned.json`` tombstone in the folder: Ray's run snapshot lists
every checkpoint it registered and refuses to resume when one of their folders is gone.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.fs as pafs

from rerank_ray import console, storage
from rerank_ray.data.checks import REASONS
from rerank_ray.data.position import POSITION_FILE, DataPosition, clip_ranges
from rerank_ray.data.stream import PairStream
from rerank_ray.errors import CheckpointError, DataError, StorageUnavailable
from rerank_ray.redaction import redact
from rerank_ray.training import faults
from rerank_ray.training.sharding import MODEL_SHARDS

if TYPE_CHECKING:
    import ray.data

MARKER = "checkpoint.json"
TOMBSTONE = "pruned.json"
PREFIX = "checkpoint-"
STATE_FILE = "training_state.pt"
HISTORY_FILE = "history.json"
MODEL_DIR = "model"
FORMAT_VERSION = 1


def dir_name(step: int) -> str:
    return f"{PREFIX}{step:07d}"


def run_filesystem(storage_path: str, run_name: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path of the run folder on it) for a local folder or a URI (whose
    query string may carry pyarrow options)."""
    filesystem, path = storage.filesystem(storage.join(storage_path, run_name))
    return filesystem, path.rstrip("/")


@dataclass
class CheckpointInfo:
    """A complete checkpoint in storage, as its marker describes it."""

    name: str
    path: str
    step: int
    metrics: dict[str, Any]
    filesystem: Any = field(repr=False, default=None)

    def uri_or_path(self) -> str:
        return self.path


# ---------------------------------------------------------------------------------------------
# Writing


def write_marker(
    folder: str, step: int, metrics: dict[str, Any], files: dict[str, int] | None = None
) -> dict[str, Any]:
    """Write ``checkpoint.json`` into a finished local checkpoint folder: the files and their sizes
    (``files``: every rank's, for a sharded checkpoint; else the folder's own)."""
    files = local_files(folder) if files is None else files
    manifest = {
        "format": FORMAT_VERSION,
        "step": step,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))},
        "files": files,
        "written_at": time.time(),
    }
    with open(os.path.join(folder, MARKER), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


@dataclass
class LoopState:
    """What a checkpoint must carry besides the weights to continue a run."""

    global_step: int = 0
    epoch: int = 0
    batches_done_in_epoch: int = 0
    pairs_seen: float = 0.0
    train_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped_in_epoch: list[int] = field(default_factory=lambda: [0] * (len(REASONS) + 1))
    """Bad training rows skipped so far in this epoch, all ranks, by reason code."""
    skipped_train: dict[str, int] = field(default_factory=dict)
    """Bad training rows skipped in the last complete epoch, by reason."""
    skipped_eval: dict[str, int] = field(default_factory=dict)
    """Bad eval rows skipped, by reason."""
    best_headline: float | None = None
    """The best headline metric of the evaluations after training began (early stopping)."""
    evaluations_without_gain: int = 0
    """Evaluations in a row since the headline last gained more than the least delta."""
    stopped_early: bool = False
    """Early stopping ended the run (``eval.early_stopping_patience``)."""


@dataclass
class TrainingState:
    """What :func:`load_state` reads back from a checkpoint folder, besides the model."""

    optimizer: dict[str, Any] | None
    """None for a sharded checkpoint: the optimizer's state is in its shards."""
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    loop: LoopState
    rng: list[dict[str, Any]]
    """Every rank's RNG states, by rank."""
    position: DataPosition


def save(
    folder: str,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    scaler: Any,
    loop: LoopState,
    rng: list[dict[str, Any]],
    position: DataPosition,
    metrics: dict[str, Any],
    write_complete_marker: bool = True,
) -> None:
    """Write a checkpoint into the local ``folder``: the CrossEncoder (``model`` is one), the
    optimizer, scheduler and grad scaler states, the loop state, every rank's RNG states, the data
    position, the history, and last the marker that lists them all. Sharded (FSDP): ``model`` and
    ``optimizer`` None, their shards already in the folder, and the marker written once every
    rank's files are in storage (:func:`upload_sharded`)."""
    import torch

    if model is not None:  # None: the model is in the sharded files (sharding.save_shards)
        model.save(os.path.join(folder, MODEL_DIR), create_model_card=False)
    torch.save(
        {
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "loop": asdict(loop),
            "rng": rng,
        },
        os.path.join(folder, STATE_FILE),
    )
    Path(folder, POSITION_FILE).write_bytes(position.to_bytes())
    Path(folder, HISTORY_FILE).write_text(json.dumps(loop.history, indent=1))
    if write_complete_marker:
        write_marker(folder, loop.global_step, metrics)  # last: it lists the files above


def model_dir(folder: str) -> str:
    """The CrossEncoder folder inside a checkpoint folder."""
    return os.path.join(folder, MODEL_DIR)


def model_format(folder: str) -> str:
    """What a (downloaded) checkpoint holds of the model: ``full`` (the whole CrossEncoder),
    ``adapter`` (LoRA adapters and saved modules) or ``shards`` (FSDP's sharded state)."""
    if os.path.isdir(os.path.join(folder, MODEL_SHARDS)):
        return "shards"
    if os.path.isfile(os.path.join(folder, MODEL_DIR, "adapter_config.json")):
        return "adapter"
    return "full"


def _numpy_array_globals() -> list[Any]:
    """What a pickled numpy array names: checkpoints written before the RNG states were stored
    as tensors hold numpy's Mersenne Twister state as an array."""
    from numpy._core import multiarray

    return [multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_state(folder: str, name: str = "") -> TrainingState:
    """The training state of a checkpoint folder downloaded by :func:`download` (``name``: the
    checkpoint's, for messages).

    Read with ``weights_only=True``: tensors, plain values and numpy arrays, nothing that runs
    code. A checkpoint lives in shared storage, where anyone who can write to it could otherwise
    make every worker that restores it run what they like; such a file is refused instead."""
    import torch

    path = os.path.join(folder, STATE_FILE)
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint {name or folder}: {STATE_FILE} holds objects other than tensors and plain values "
            f"({reason[:200]}); it is not loaded, since loading it would run code. A checkpoint rerank-ray "
            "wrote never does: restore the file, delete that checkpoint folder, or start a new run"
        ) from err
    return TrainingState(
        optimizer=saved["optimizer"],
        scheduler=saved["scheduler"],
        scaler=saved["scaler"],
        loop=LoopState(**saved["loop"]),
        rng=saved.get("rng") or [],
        position=DataPosition.from_bytes(Path(folder, POSITION_FILE).read_bytes()),
    )


def read_history(folder: str) -> list[dict[str, Any]]:
    """The history a checkpoint folder recorded (losses and metrics, step by step)."""
    return json.loads(Path(folder, HISTORY_FILE).read_text())


def upload(checkpoint: Any, checkpoint_dir_name: str, retry_s: float = 300.0, storage_uri: str = "") -> Any:
    """Ray Train's ``checkpoint_upload_fn``: copy the checkpoint into the run folder, marker last,
    retrying while storage is unreachable (:func:`copy_checkpoint`). ``retry_s`` and
    ``storage_uri`` (what a message names) are bound by the worker with ``functools.partial``.

    Runs in the worker that reported the checkpoint (rank 0), inside ``ray.train.report``.
    """
    import ray.train

    train_storage = ray.train.get_context().get_storage()
    filesystem = train_storage.storage_filesystem
    destination = train_storage.build_checkpoint_path_from_name(checkpoint_dir_name)
    copy_checkpoint(
        checkpoint.path, filesystem, destination, retry_s, storage_uri or destination, _step_of(checkpoint_dir_name)
    )
    return ray.train.Checkpoint(path=destination, filesystem=filesystem)


#: A marker name no file has: every file of the folder is uploaded, none held back.
_NO_MARKER = "\0"

#: Waits between upload attempts: doubling from the first, capped at the last.
RETRY_FIRST_S, RETRY_MAX_S = 1.0, 30.0


def copy_checkpoint(
    local: str,
    filesystem: Any,
    destination: str,
    retry_s: float,
    storage_uri: str,
    step: int = -1,
    replace: bool = True,
    marker: bool = True,
) -> None:
    """Copy the checkpoint folder ``local`` to ``destination`` (marker last). Object storage that
    throttles or drops connections fails an upload with an ``OSError`` (pyarrow's own retries,
    about 10 s, already spent): the whole folder is uploaded again after a wait (1, 2, 4 ... 30 s)
    until ``retry_s`` have passed, then :class:`StorageUnavailable` ends the run. A folder left
    half-uploaded has no marker, so it is never restored: the last complete checkpoint stays the
    restore point."""
    deadline = time.monotonic() + retry_s
    wait = RETRY_FIRST_S
    attempt = 1
    while True:
        try:
            _copy_once(local, filesystem, destination, step, replace, marker)
            return
        except OSError as err:
            left = deadline - time.monotonic()
            where = redact(storage_uri)
            if left <= 0:
                raise StorageUnavailable(
                    f"checkpoint {os.path.basename(destination.rstrip('/'))}: storage {where} unreachable for "
                    f"{retry_s:g} s (run.storage_retry_s; {attempt} attempt(s)): {redact(str(err))}. The newest "
                    "complete checkpoint in storage stays the restore point: once storage is back, run the same "
                    "command with --resume"
                ) from err
            console.say(
                f"[rerank-ray] checkpoint upload to {where} failed (attempt {attempt}: {redact(str(err))[:200]}); "
                f"retrying in {min(wait, left):.0f} s, for {left:.0f} s more (run.storage_retry_s)"
            )
            time.sleep(min(wait, left))
            wait = min(wait * 2, RETRY_MAX_S)
            attempt += 1


def _copy_once(local: str, filesystem: Any, destination: str, step: int, replace: bool, marker: bool) -> None:
    # A folder of this name holds what an earlier attempt left (a partial upload, or a tombstone);
    # nothing restores from it (a complete one would have been restored from), so replace it.
    # (A sharded checkpoint's ranks share the folder: rank 0 cleared it before any uploads.)
    if replace and filesystem.get_file_info(destination).type != pafs.FileType.NotFound:
        filesystem.delete_dir(destination)
    storage.upload_folder(
        local,
        filesystem,
        destination,
        marker=MARKER if marker else _NO_MARKER,
        first=MODEL_DIR,
        after_first=lambda: faults.fire("checkpoint_upload", step=step),
    )


def local_files(folder: str) -> dict[str, int]:
    """Every file under ``folder`` (relative path -> size), the marker left out."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, folder).replace(os.sep, "/")
            if relative != MARKER:
                files[relative] = os.path.getsize(path)
    return files


def upload_sharded(
    folder: str,
    checkpoint_dir_name: str,
    collectives: Any,
    rank: int,
    metrics: dict[str, Any],
    step: int,
    retry_s: float = 300.0,
    storage_uri: str = "",
) -> Any:
    """Every rank: put a sharded checkpoint in storage, the marker last. Each rank uploads its own
    files (its model and optimizer shards; rank 0 also the metadata and the training state) into
    the one checkpoint folder, retrying flaky storage as :func:`copy_checkpoint` does; once every
    rank has succeeded, rank 0 writes the marker, listing every rank's files. Returns the
    registered ``ray.train.Checkpoint`` on rank 0 (reported with Ray Train's ``NO_UPLOAD``), None
    elsewhere. A collective: every rank calls it."""
    import ray.train
    import torch

    train_storage = ray.train.get_context().get_storage()
    filesystem = train_storage.storage_filesystem
    destination = train_storage.build_checkpoint_path_from_name(checkpoint_dir_name)
    every_rank_files = collectives.gather_objects(local_files(folder))
    if rank == 0 and filesystem.get_file_info(destination).type != pafs.FileType.NotFound:
        filesystem.delete_dir(destination)  # what an earlier attempt left: never restored
    collectives.sum(1.0)  # a barrier: nothing is uploaded into the folder before it is cleared
    failure = ""
    try:
        copy_checkpoint(
            folder, filesystem, destination, retry_s, storage_uri or destination, step, replace=False, marker=False
        )
    except StorageUnavailable as err:
        failure = str(err)
    failed = collectives.sum(1.0 if failure else 0.0, dtype=torch.float64)
    if float(failed) > 0:
        raise StorageUnavailable(failure or f"checkpoint {checkpoint_dir_name}: another rank's upload failed")
    if rank != 0:
        return None
    merged: dict[str, int] = {}
    for files in every_rank_files:
        merged.update(files)
    write_marker(folder, step, metrics, files=merged)
    pafs.copy_files(
        os.path.join(folder, MARKER),
        f"{destination}/{MARKER}",
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=filesystem,
        use_threads=False,
    )
    return ray.train.Checkpoint(path=destination, filesystem=filesystem)


def _step_of(name: str) -> int:
    try:
        return int(name.removeprefix(PREFIX))
    except ValueError:
        return -1


# ---------------------------------------------------------------------------------------------
# Finding complete checkpoints


def verify(filesystem: Any, path: str) -> CheckpointInfo | str:
    """The checkpoint at ``path`` if its marker is there and every file it lists has its size;
    otherwise the reason it is incomplete."""
    try:
        with filesystem.open_input_stream(f"{path}/{MARKER}") as f:
            manifest = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return f"no {MARKER} (the write did not finish)"
    except (OSError, ValueError) as err:
        return f"unreadable {MARKER}: {err}"
    files = manifest.get("files", {})
    infos = filesystem.get_file_info([f"{path}/{name}" for name in files]) if files else []
    for (name, size), info in zip(files.items(), infos):
        if info.type != pafs.FileType.File:
            return f"{name} is missing"
        if info.size != size:
            return f"{name} has {info.size} bytes, {size} were written"
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return CheckpointInfo(
        name=name, path=path, step=int(manifest["step"]), metrics=manifest.get("metrics", {}), filesystem=filesystem
    )


def scan(storage_path: str, run_name: str) -> tuple[list[CheckpointInfo], dict[str, str]]:
    """(complete checkpoints by step, {incomplete folder: why}) of a run; tombstones are left out."""
    filesystem, run_path = run_filesystem(storage_path, run_name)
    try:
        entries = filesystem.get_file_info(pafs.FileSelector(run_path, allow_not_found=True))
    except OSError:
        return [], {}
    complete, incomplete = [], {}
    for entry in entries:
        if entry.type != pafs.FileType.Directory or not entry.base_name.startswith(PREFIX):
            continue
        if filesystem.get_file_info(f"{entry.path}/{TOMBSTONE}").type == pafs.FileType.File:
            continue
        result = verify(filesystem, entry.path)
        if isinstance(result, str):
            incomplete[entry.path] = result
        else:
            complete.append(result)
    complete.sort(key=lambda c: c.step)
    return complete, incomplete


def latest_complete(storage_path: str, run_name: str) -> CheckpointInfo | None:
    complete, _ = scan(storage_path, run_name)
    return complete[-1] if complete else None


def read_position(info: CheckpointInfo) -> DataPosition | None:
    try:
        with info.filesystem.open_input_stream(f"{info.path}/{POSITION_FILE}") as f:
            return DataPosition.from_bytes(f.read())
    except FileNotFoundError:
        return None


def download(info: CheckpointInfo, local: str) -> str:
    pafs.copy_files(info.path, local, source_filesystem=info.filesystem, destination_filesystem=pafs.LocalFileSystem())
    return local


# ---------------------------------------------------------------------------------------------
# Retention


def choose_kept(complete: list[CheckpointInfo], keep_last: int, headline: str | None) -> list[CheckpointInfo]:
    """The last ``keep_last`` checkpoints by step, plus the best by ``headline`` (higher is better;
    on a tie, the later one)."""
    kept = {c.name: c for c in complete[-keep_last:]}
    scored = [c for c in complete if headline and isinstance(c.metrics.get(headline), (int, float))]
    if scored:
        best = max(scored, key=lambda c: (c.metrics[headline], c.step))
        kept[best.name] = best
    return sorted(kept.values(), key=lambda c: c.step)


def best_checkpoint(complete: list[CheckpointInfo], headline: str | None) -> CheckpointInfo | None:
    scored = [c for c in complete if headline and isinstance(c.metrics.get(headline), (int, float))]
    return max(scored, key=lambda c: (c.metrics[headline], c.step)) if scored else None


def prune(
    storage_path: str, run_name: str, keep_last: int, headline: str | None, in_flight: Iterable[str] = ()
) -> list[str]:
    """Empty every checkpoint folder that is not kept (complete or not), leaving a tombstone.

    Called by rank 0 after each checkpoint it wrote and by the driver when training ends.
    ``in_flight``: the names of checkpoints still uploading in the background
    (``run.checkpoint_upload: async``): incomplete because they are not finished yet, not because
    an attempt died, so left alone."""
    complete, incomplete = scan(storage_path, run_name)
    kept = {c.name for c in choose_kept(complete, keep_last, headline)}
    busy = set(in_flight)
    doomed = [c.path for c in complete if c.name not in kept] + [
        path for path in incomplete if path.rstrip("/").rsplit("/", 1)[-1] not in busy
    ]
    filesystem, _ = run_filesystem(storage_path, run_name)
    for path in doomed:
        filesystem.delete_dir_contents(path, missing_dir_ok=True)
        with filesystem.open_output_stream(f"{path}/{TOMBSTONE}") as f:
            f.write(
                json.dumps(
                    {
                        "pruned": True,
                        "why": f"rerank-ray keeps the last {keep_last} checkpoints and the best; the folder "
                        "stays because Ray Train's run snapshot lists it",
                    }
                ).encode()
            )
    return doomed


# ---------------------------------------------------------------------------------------------
# RNG states


def rng_state() -> dict[str, Any]:
    import torch

    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        # As a tensor and plain values, which torch.load(weights_only=True) reads back.
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    keys = keys.numpy() if torch.is_tensor(keys) else np.asarray(keys)  # an array in older checkpoints
    np.random.set_state((kind, keys.astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# The rest of an interrupted epoch


@dataclass
class RestOfEpoch:
    """``TorchTrainer(datasets={"train_rest": RestOfEpoch(...)})``: called by Ray Train in its
    controller every time a worker group starts. It finds the checkpoint the workers will restore
    (the newest complete one in the run folder, :func:`latest_complete`,
    the same call the workers make) and returns the rows that checkpoint's epoch has not trained.
    Without a checkpoint in the middle of an epoch it returns the full stream, which no worker
    then reads."""

    stream: PairStream
    """How to read, check, tokenize and pad the training split (a mixture's: one training set)."""
    storage_path: str
    run_name: str
    files_digest: str | None = None
    """A mixture's: the digest of all its sets' files, which the position records (None: the stream's)."""
    train_rows: int | None = None
    """A mixture's: the rows of all its sets (None: the stream's)."""
    keys: tuple[int, int] | None = None
    """A mixture's: the span of this set's row keys; the position's other keys are other sets'."""

    def __call__(self) -> ray.data.Dataset:
        point = latest_complete(self.storage_path, self.run_name)
        position = read_position(point) if point is not None else None
        if position is None or position.trained_rows == 0:
            return self.stream.build()[0]
        digest = self.files_digest or self.stream.files_digest
        rows = self.train_rows if self.train_rows is not None else self.stream.num_rows
        if position.files_digest != digest or position.train_rows != rows:
            raise DataError(
                f"data.train changed since {point.name} was written ({rows} rows now, "
                f"{position.train_rows} then): a run resumes only on "
                "the same files. Restore the files, or start a new run (another run.name)"
            )
        trained = clip_ranges(position.trained, *self.keys) if self.keys else position.trained
        dataset, _ = self.stream.build(exclude=trained)
        return dataset
