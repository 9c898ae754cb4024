"""Preemption: SIGTERM to the driver ends a run at its next progress step, after a checkpoint,
and ``--resume`` continues from it.

Schedulers signal the driver before they kill it (Kubernetes' grace period, Slurm, a spot
instance's notice). Ray Train 2.60 runs the training function in a thread of each worker actor,
where Python cannot install a signal handler, so the driver catches SIGTERM and writes a marker
into the run folder (:data:`STOP_FILE`, local or object storage); rank 0 looks for it at every
progress step (``train.logging_steps``), every rank learns what it found in one broadcast, and
all of them write that step's checkpoint and return. The worst-case delay is one progress
interval plus a checkpoint. A second SIGTERM ends the driver at once (Ray's own handler).
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Iterator

from rerank_ray import storage

#: The marker the driver writes into the run folder when it is asked to stop.
STOP_FILE = "stop-requested.json"
#: The driver's exit code after a stop by SIGTERM (128 + the signal's number, the shells' rule).
EXIT_CODE = 128 + signal.SIGTERM


def marker(run_dir: str) -> str:
    return storage.join(run_dir, STOP_FILE)


def request_stop(run_dir: str, reason: str) -> None:
    fs, path = storage.filesystem(marker(run_dir))
    with fs.open_output_stream(path) as handle:
        handle.write(json.dumps({"reason": reason, "time": time.time()}).encode())


def stop_requested(run_dir: str) -> bool:
    """Whether the driver asked the run to stop; storage that cannot be read answers no (the
    next progress step looks again)."""
    try:
        return storage.is_file(marker(run_dir))
    except OSError:
        return False


def clear(run_dir: str) -> None:
    """Remove a marker an earlier, stopped attempt left (a resumed run must not stop at once)."""
    import pyarrow.fs as pafs

    fs, path = storage.filesystem(marker(run_dir))
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


@contextlib.contextmanager
def stop_on_sigterm(run_dir: str) -> Iterator[list[int]]:
    """While the run trains: the first SIGTERM asks it to stop (the list yielded records it);
    a second one goes to the handler that was there before (Ray's: exit now)."""
    received: list[int] = []
    previous = signal.getsignal(signal.SIGTERM)

    def handle(signum: int, frame: object) -> None:
        if received:
            signal.signal(signal.SIGTERM, previous)
            signal.raise_signal(signal.SIGTERM)
            return
        received.append(signum)
        print(
            "[rerank-ray] SIGTERM: stopping at the next progress step after a checkpoint "
            "(a second SIGTERM stops at once)",
            flush=True,
        )
        request_stop(run_dir, "SIGTERM")

    signal.signal(signal.SIGTERM, handle)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)
