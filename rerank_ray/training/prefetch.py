"""A background thread that prepares a stream's items ahead of the step that consumes them, with
a watchdog that ends a stalled stream with its cause."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from rerank_ray.errors import DataStalled

T = TypeVar("T")


def prefetch(
    items: Iterator[T], depth: int, stall_s: float = 0.0, stalled: Callable[[float], str] | None = None
) -> Iterator[T]:
    """``items``, produced by a background thread up to ``depth`` items ahead of the consumer.

    Ray Data already prefetches windows (``prefetch_batches`` in
    :func:`rerank_ray.training.batching.iter_batches`); this moves the rest of the
    host work (taking, sorting and padding a window's rows into batches, and waiting for the next
    window) off the step thread, so the step does not wait for it. The work is mostly pyarrow,
    numpy and Ray object fetches, which release the GIL. The thread starts at once, not at the
    first ``next``: a stream opened before the model loads fills meanwhile. An error in the
    producer (a bad row met in the stream) is re-raised in the consumer, unchanged. ``depth`` 0:
    no thread, the consumer produces each item itself.

    ``stall_s`` > 0: a watchdog. A consumer that waits that long for one item raises
    :class:`DataStalled` with ``stalled(stall_s)`` as its message: a stream that makes no progress
    (Ray Data's tasks starved of CPUs, a store that stopped answering) ends the run with a cause
    instead of hanging it.
    """
    if depth <= 0:
        return iter(items)
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(message: tuple) -> bool:
        while not stop.is_set():
            try:
                slots.put(message, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("done", None))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
            put(("error", err))

    def consume() -> Iterator[T]:
        try:
            while True:
                try:
                    kind, value = slots.get(timeout=stall_s if stall_s > 0 else None)
                except queue.Empty:
                    raise DataStalled(stalled(stall_s) if stalled else f"no item for {stall_s:g} s") from None
                if kind == "item":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            stop.set()

    # A daemon thread: a consumer that stops early (an error in a step) must not hang the worker
    # on a producer blocked in the Ray iterator; ``stop`` ends it at its next put.
    threading.Thread(target=produce, name="rerank-ray-prefetch", daemon=True).start()
    return consume()


def stall_message(stream: str, dataset: str, seconds: float) -> str:
    """What a worker says when its data stream delivered nothing for ``seconds``: the stream, its
    stages, and the CPUs Ray has free for them (none free is the usual cause)."""
    import ray

    free = ray.available_resources().get("CPU", 0.0)
    total = ray.cluster_resources().get("CPU", 0.0)
    return (
        f"the {stream} data stream (Ray Data dataset {dataset!r}: read, check and tokenize tasks) delivered no batch "
        f"for {seconds:g} s (run.stall_timeout_s). The Ray cluster has {free:g} of {total:g} CPUs free"
        + (
            ": Ray Data's tasks need at least 1 beside the training workers' (lower scaling.cpus_per_worker or "
            "scaling.num_workers, add a node, or stop what else holds the CPUs)"
            if free < 1
            else "; check that the data's storage answers, or raise run.stall_timeout_s for a slower source"
        )
    )
