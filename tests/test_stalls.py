"""A data stream that makes no progress ends the run naming it (issue 17): the watchdog of the
prefetch queue that feeds every training and evaluation batch.

Not here: a real run whose training workers reserve every CPU (2 workers x 2 of 4, the up-front
check off). Tried, it hung before any batch was asked for (in Ray Train's and Ray Data's setup,
outside the watchdog's wait), so that starvation is caught only by the check before training
(scaling.check_cluster_cpus, tests/test_cluster.py)."""

from __future__ import annotations

import threading

import pytest

from rerank_ray.errors import DataStalled
from rerank_ray.training.batching import prefetch


def test_a_consumer_waiting_past_the_stall_timeout_is_told_why():
    released = threading.Event()

    def two_then_stuck():
        yield 1
        yield 2
        released.wait(30)  # a Ray Data iterator that never delivers

    items = prefetch(two_then_stuck(), depth=2, stall_s=0.5, stalled=lambda s: f"the train stream: nothing for {s} s")
    assert next(items) == 1 and next(items) == 2
    with pytest.raises(DataStalled, match=r"the train stream: nothing for 0.5 s"):
        next(items)
    released.set()


def test_a_slow_stream_within_the_timeout_is_not_a_stall():
    import time

    def slow():
        for i in range(3):
            time.sleep(0.2)
            yield i

    assert list(prefetch(slow(), depth=1, stall_s=2.0)) == [0, 1, 2]
