"""Preemption: SIGTERM to the driver ends a run at its next progress step, after a checkpoint,
and ``--resume`` continues from it; SIGTERM to a worker (its machine going away) writes a
checkpoint at the next progress step and restarts the worker group from it.

Schedulers signal the driver before they kill it (Kubernetes' grace period, Slurm, a spot
instance's notice). Ray Train 2.60 runs the training function in a thread of each worker actor,
where Python cannot install a signal handler, so the driver catches SIGTERM and writes a marker
into the run folder (:data:`STOP_FILE`, local or object storage); rank 0 looks for it at every
progress step (``train.logging_steps``), every rank learns what it found in one all-reduce
(which also carries the workers' own flags, below), and all of them write that step's checkpoint
and return. The worst-case delay is one progress
interval plus a checkpoint. A second SIGTERM ends the driver at once (Ray's own handler).

A worker's SIGTERM (its machine shutting down gracefully, a spot instance's notice handler,
``kill``) would otherwise end the worker process at once (Ray's handler raises SystemExit) and cost
everything since the last checkpoint. The training thread cannot install a handler, but the
actor's main thread can, and it is free while the thread trains (Ray Train's ``run_train_fn``
returns at once): :func:`watch_worker_sigterm` runs :func:`_install_worker_handler` there as a
task of the worker's own actor. The handler only sets a flag; at the next progress step every
rank learns which ranks were signalled (one all-reduce), all write that step's checkpoint, and
all raise :class:`~rerank_ray.errors.WorkerPreempted`, a failure Ray Train retries
(``run.max_failures``): the new worker group restores the checkpoint just written, on the nodes
left. A second SIGTERM to the worker goes to Ray's handler.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from rerank_ray import console, storage
from rerank_ray.errors import WorkerPreempted

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


def _sigterm_handler(note_first: Callable[[], bool]) -> tuple[Callable[[int, object], None], object]:
    """A SIGTERM handler that ``note_first`` may note once, and the handler it replaces.

    ``note_first`` runs on the first SIGTERM and returns whether it noted it (True: the process
    goes on); every later SIGTERM, and one ``note_first`` declines, goes to the handler that was
    there before (Ray's in a driver or worker: the process exits)."""
    previous = signal.getsignal(signal.SIGTERM)
    noted: list[bool] = []

    def handle(signum: int, frame: object) -> None:
        if noted or not note_first():
            signal.signal(signal.SIGTERM, previous)
            signal.raise_signal(signal.SIGTERM)
            return
        noted.append(True)

    return handle, previous


@contextlib.contextmanager
def stop_on_sigterm(run_dir: str) -> Iterator[list[int]]:
    """While the run trains: the first SIGTERM asks it to stop (the list yielded records it);
    a second one goes to the handler that was there before (Ray's: exit now)."""
    received: list[int] = []

    def ask_to_stop() -> bool:
        received.append(signal.SIGTERM)
        print(
            "[rerank-ray] SIGTERM: stopping at the next progress step after a checkpoint "
            "(a second SIGTERM stops at once)",
            flush=True,
        )
        request_stop(run_dir, "SIGTERM")
        return True

    handle, previous = _sigterm_handler(ask_to_stop)
    signal.signal(signal.SIGTERM, handle)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------------------------
# SIGTERM to a worker

_WORKER_SIGNALLED = threading.Event()
_WORKER_TRAINING = threading.Event()  # set while the training function runs in this process


def _install_worker_handler() -> None:
    """Runs on the worker actor's main thread: the first SIGTERM while the training function runs
    sets the flag; a second one, or one after training ended (Ray stopping its worker), goes to
    the handler that was there before (Ray's: the process exits)."""

    def flag_this_worker() -> bool:
        # Not while no training function runs; nor a second time in this process (a handler
        # installed before this one, which a later handler hands the signal to).
        if not _WORKER_TRAINING.is_set() or _WORKER_SIGNALLED.is_set():
            return False
        _WORKER_SIGNALLED.set()
        print(
            "[rerank-ray] this worker got SIGTERM: checkpoint at the next progress step, then the workers "
            "restart from it (a second SIGTERM ends it at once)",
            flush=True,
        )
        return True

    _WORKER_SIGNALLED.clear()
    signal.signal(signal.SIGTERM, _sigterm_handler(flag_this_worker)[0])


@contextlib.contextmanager
def watch_worker_sigterm() -> Iterator[str | None]:
    """From the training thread, around the training: install the worker's handler on its
    actor's main thread. Yields why it could not (the worker then dies on SIGTERM, as a killed
    worker), or None. Once the training function is done, SIGTERM ends the process again."""
    import ray

    _WORKER_TRAINING.set()
    unwatched = None
    try:
        actor = ray.get_runtime_context().current_actor
        ray.get(actor.execute.remote(_install_worker_handler), timeout=60)
    except Exception as err:  # noqa: BLE001 - a worker without the handler still trains
        unwatched = f"{type(err).__name__}: {err}"
    try:
        yield unwatched
    finally:
        _WORKER_TRAINING.clear()


def worker_signalled() -> bool:
    """Whether this worker process got SIGTERM since its handler was installed."""
    return _WORKER_SIGNALLED.is_set()


def agree_to_stop(collectives: Any, rank: int, world_size: int, run_dir: str, step: int) -> tuple[bool, list[int]]:
    """(the driver asked the run to stop, the ranks that got SIGTERM), the same on every rank: rank 0
    looks for the driver's marker, each rank at its own flag, and one all-reduce tells every rank
    all of it, so all stop at this step."""
    import torch

    flags = np.zeros(1 + world_size, dtype=np.int64)
    flags[0] = rank == 0 and stop_requested(run_dir)
    flags[1 + rank] = worker_signalled()
    flags = collectives.sum(flags, dtype=torch.int64).cpu().numpy()  # a progress step: a sync is fine
    signalled = [int(r) for r in np.flatnonzero(flags[1:])]
    if flags[0] and rank == 0:
        console.say(f"[rerank-ray] stop requested: checkpoint at step {step}, then exit")
    elif signalled and rank == 0:
        console.say(
            f"[rerank-ray] SIGTERM to rank(s) {signalled}: checkpoint at step {step}, then the workers restart from it"
        )
    return bool(flags[0]), signalled


def worker_preempted(ranks: list[int], checkpoint: str, max_failures: int) -> WorkerPreempted:
    """What ends a worker group whose ranks got SIGTERM, once their checkpoint is written."""
    return WorkerPreempted(
        f"rank(s) {ranks} got SIGTERM (its machine going away): {checkpoint} is written, the restore point "
        f"(Ray Train restarts the workers from it while run.max_failures={max_failures} allows)"
    )
