"""A data stream that makes no progress ends the run naming it (issue 17): the watchdog of the
prefetch queue that feeds every training and evaluation batch, alone and in a real run whose data
stage loses its CPUs to another placement group once training is under way (slow).

Not here: a real run whose training workers reserve every CPU from the start (2 workers x 2 of
4, the up-front check off). Tried, it hung before any batch was asked for (in Ray Train's and Ray
Data's setup, outside the watchdog's wait), so that starvation is caught only by the check before
training (scaling.check_cluster_cpus, tests/test_cluster.py)."""

from __future__ import annotations

import threading

import pytest

from rerank_ray.errors import DataStalled
from rerank_ray.training.prefetch import prefetch


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


@pytest.mark.ray
@pytest.mark.slow  # about a minute: a run, a pause and the stall timeout
def test_a_run_whose_data_stage_loses_its_cpus_ends_naming_the_stream(
    ray_local, tiny_bert, pair_files, tmp_path, monkeypatch
):
    """A data stage starved once the run is under way: while epoch 1 trains (rank 0 paused after
    step 3, before the prefetch thread opens epoch 2's stream), another placement group takes
    every CPU the training workers leave. Epoch 2's read and tokenize tasks never start; after
    run.stall_timeout_s the run ends with the watchdog's DataStalled (not retried), naming the
    train stream, its stages and the free CPUs, instead of hanging."""
    import json
    import time

    from conftest import base_config
    from ray.util.placement_group import placement_group, remove_placement_group

    from rerank_ray.config import Config
    from rerank_ray.run.driver import train
    from rerank_ray.training.faults import FAULTS_ENV

    faults_dir = tmp_path / "faults"
    faults_dir.mkdir()
    spec = {"dir": str(faults_dir), "faults": [{"name": "pause", "at": "step", "rank": 0, "step": 3, "action": "pause",
                                                 "seconds": 5}]}  # fmt: skip
    monkeypatch.setenv(FAULTS_ENV, json.dumps(spec))
    raw = base_config(
        tiny_bert, pair_files["train"], None, tmp_path / "runs",
        run={"storage_path": str(tmp_path / "runs"), "name": "starved", "stall_timeout_s": 10, "max_failures": 2},
    )  # fmt: skip
    taken: list = []

    def take_the_free_cpus() -> None:  # what another job's actors would hold
        deadline = time.monotonic() + 300
        while not (faults_dir / "pause").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        free = int(ray_local.available_resources().get("CPU", 0))
        if free >= 1:
            taken.append(placement_group([{"CPU": free}]))
            taken[0].wait(60)

    hog = threading.Thread(target=take_the_free_cpus, daemon=True)
    hog.start()
    try:
        with pytest.raises(DataStalled) as caught:
            train(Config.from_dict(raw))  # the driver's SIGTERM handler wants the main thread
    finally:
        hog.join(60)
        for group in taken:
            remove_placement_group(group)
    assert taken, "the CPUs were never taken"
    message = str(caught.value)
    assert (
        "the train data stream (Ray Data dataset 'train': read, check and tokenize tasks) delivered no batch" in message
    )
    assert "for 10 s (run.stall_timeout_s)" in message and "CPUs free: Ray Data's tasks need at least 1" in message
