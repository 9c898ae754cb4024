"""The position in the training data: which pairs this epoch has already trained.

Why a set of keys and not "k batches done": Ray Data's ``streaming_split`` hands blocks to the
workers as they ask for them, so the rows worker 0 gets in its first k batches differ from run
to run. Skipping k batches after a restore would train some pairs twice and others never.
Instead every row carries a stable key, ``row_key = file_index << 40 | row_in_file`` (set by the
reader, :mod:`rerank_ray.data.reading`), the workers note the keys they train, and a checkpoint stores
the union over all workers as sorted ``[start, end)`` ranges (files are read from start to end,
their rows shuffled ``data.shuffle_buffer_rows`` at a time, so an epoch's keys compress to whole
ranges for the blocks done and short ones only inside the blocks in flight).

After a restore the rest of the interrupted epoch is a separate dataset, ``train_rest``: the same
files, read again, minus the rows whose keys the checkpoint holds, plus weight-0 filler rows to a
multiple of the number of workers. Ray Train builds it from :class:`RestOfEpoch` each time it
starts a worker group (a callable in ``TorchTrainer(datasets=...)`` is called at every worker
group start, in the controller), so it always matches the checkpoint the workers restore. Its
row count is exact, so every worker runs the same number of steps, and that number equals the
steps the epoch had left (see :func:`partial_epoch_batches`).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

#: Bits of a row key that hold the row within its file (up to 2**40 rows per file, 2**23 files).
ROW_BITS = 40
POSITION_FILE = "data_position.npz"


def row_keys(file_index: int, first_row: int, count: int) -> np.ndarray:
    return (np.int64(file_index) << ROW_BITS) + np.arange(first_row, first_row + count, dtype=np.int64)


def key_location(key: int) -> tuple[int, int]:
    """(file index, 0-based row) of a row key."""
    return int(key) >> ROW_BITS, int(key) & ((1 << ROW_BITS) - 1)


def to_ranges(keys: np.ndarray) -> np.ndarray:
    """Sorted, merged ``[start, end)`` ranges (shape (n, 2), int64) covering ``keys``."""
    keys = np.unique(np.asarray(keys, dtype=np.int64))
    if len(keys) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    breaks = np.flatnonzero(np.diff(keys) != 1)
    starts = np.concatenate([[keys[0]], keys[breaks + 1]])
    ends = np.concatenate([keys[breaks], [keys[-1]]]) + 1
    return np.stack([starts, ends], axis=1)


def merge_ranges(*parts: np.ndarray) -> np.ndarray:
    """Union of several range arrays, merged."""
    ranges = np.concatenate([p.reshape(-1, 2) for p in parts]) if parts else np.zeros((0, 2), np.int64)
    if len(ranges) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    ranges = ranges[np.argsort(ranges[:, 0], kind="stable")].astype(np.int64)
    # A range opens a new merged range when it starts after every range before it has ended.
    # (Vectorised: shuffled reading leaves many short ranges per file in flight.)
    reach = np.maximum.accumulate(ranges[:, 1])
    opens = np.flatnonzero(np.concatenate([[True], ranges[1:, 0] > reach[:-1]]))
    return np.stack([ranges[opens, 0], np.maximum.reduceat(ranges[:, 1], opens)], axis=1)


def count_in_ranges(ranges: np.ndarray) -> int:
    return int((ranges[:, 1] - ranges[:, 0]).sum()) if len(ranges) else 0


def in_ranges(keys: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """Mask of the keys that fall inside the (merged) ranges."""
    if len(ranges) == 0:
        return np.zeros(len(keys), dtype=bool)
    slot = np.searchsorted(ranges[:, 0], keys, side="right") - 1
    inside = slot >= 0
    inside[inside] = keys[inside] < ranges[slot[inside], 1]
    return inside


class TrainedRows:
    """The keys one worker trained since the epoch began (or since the restore)."""

    def __init__(self) -> None:
        self._pending: list[np.ndarray] = []
        self._ranges = np.zeros((0, 2), dtype=np.int64)

    def add(self, keys: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=np.int64)
        keys = keys[keys >= 0]  # filler rows carry -1
        if len(keys):
            self._pending.append(keys)
        if len(self._pending) > 256:
            self.ranges()

    def ranges(self) -> np.ndarray:
        if self._pending:
            self._ranges = merge_ranges(self._ranges, to_ranges(np.concatenate(self._pending)))
            self._pending = []
        return self._ranges

    def clear(self) -> None:
        self._pending, self._ranges = [], np.zeros((0, 2), dtype=np.int64)


def files_digest(files: list[str]) -> str:
    """Identifies the training file list: row keys index into it, so it must not change."""
    return hashlib.sha256("\n".join(files).encode()).hexdigest()[:16]


@dataclass
class DataPosition:
    """Where an epoch stands, as a checkpoint stores it."""

    epoch: int
    """0-based epoch the ranges belong to (an epoch that ended is stored as the next one, empty)."""
    trained: np.ndarray
    """Keys already trained in ``epoch``, as merged ranges."""
    files_digest: str
    train_rows: int
    """Rows in the training files (bad rows kept as placeholders included)."""

    @property
    def trained_rows(self) -> int:
        return count_in_ranges(self.trained)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        meta = json.dumps({"epoch": self.epoch, "files_digest": self.files_digest, "train_rows": self.train_rows})
        np.savez(buffer, trained=self.trained, meta=np.frombuffer(meta.encode(), dtype=np.uint8))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> DataPosition:
        with np.load(io.BytesIO(data)) as saved:
            meta = json.loads(saved["meta"].tobytes().decode())
            return cls(trained=saved["trained"].astype(np.int64).reshape(-1, 2), **meta)


def clip_ranges(ranges: np.ndarray, start: int, end: int) -> np.ndarray:
    """The parts of the ``[start, end)`` ``ranges`` inside ``[start, end)``: one training set's
    keys of a mixture's position (its files' keys are one such span)."""
    clipped = np.clip(np.asarray(ranges, dtype=np.int64).reshape(-1, 2), start, end)
    return clipped[clipped[:, 1] > clipped[:, 0]]


def file_keys(first_file: int, files: int) -> tuple[int, int]:
    """The span ``[start, end)`` of the row keys of ``files`` files numbered from ``first_file``."""
    return first_file << ROW_BITS, (first_file + files) << ROW_BITS


def partial_epoch_batches(remaining_rows: int, world_size: int, batch_size: int, multiple: int = 0) -> int:
    """Batches per worker for the rest of an epoch: the remaining rows, padded to a multiple of
    the workers, split evenly, cut into batches.

    This equals the batches the epoch had left on every worker. Each worker's epoch has R rows in
    n batches: n - 1 full ones and one short one of r rows (0 < r <= B), placed anywhere by the
    shuffle. After b batches a worker has trained between bB - (B - r) and bB rows (fewer than bB
    if the short batch or a filler row was among them), so what is left per worker lies in
    ((n - b - 1)B, (n - b)B]: n - b batches, whichever rows the stream handed to which worker.
    The worker checks this equality when it restores. ``multiple``: what the rows are padded to a
    multiple of (an elastic run's; by default the number of workers)."""
    padded = remaining_rows + (-remaining_rows) % (multiple or world_size)
    return math.ceil(padded / world_size / batch_size) if padded else 0


def drop_trained(batch: pa.Table, ranges: np.ndarray) -> pa.Table:
    """Ray Data map: the rows whose key is not in ``ranges``."""
    keys = batch.column("row_key").to_numpy()
    return batch.filter(pa.array(~in_ranges(keys, ranges)))
