"""Worker-side batching and the tokenization stage, checked against sentence-transformers."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from rerank_ray.training.batching import pad, stratified_window_batches, window_order
from rerank_ray.training.prefetch import prefetch


@pytest.mark.parametrize("group", [True, False])
@pytest.mark.parametrize("n", [1, 31, 64, 65])
def test_window_order_puts_every_row_in_exactly_one_batch(group, n):
    lengths = np.random.default_rng(0).integers(3, 50, size=n)
    batches = window_order(lengths, 8, np.random.default_rng(1), group)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(n))
    assert len(batches) == -(-n // 8)
    assert all(len(b) == 8 for b in sorted(batches, key=len)[1:]) or n <= 8


def test_grouping_by_length_cuts_padding():
    lengths = np.random.default_rng(0).integers(3, 200, size=512)

    def padded(batches):
        return sum(len(b) * lengths[b].max() for b in batches)

    grouped = padded(window_order(lengths, 16, np.random.default_rng(1), True))
    random_ = padded(window_order(lengths, 16, np.random.default_rng(1), False))
    assert grouped < 0.7 * random_
    assert grouped < 1.1 * lengths.sum()


@pytest.mark.parametrize("n", [256, 250, 37])
def test_stratified_steps_take_one_length_sorted_micro_batch_from_each_stratum(n):
    """Grouping with 4 micro-batches a step: each step of 4 consecutive batches spans the
    window's lengths (one batch per quarter of the sorted window), each batch stays sorted
    (little padding), every row is in exactly one batch, and only the window's last step may
    be short."""
    lengths = np.random.default_rng(0).integers(3, 200, size=n)
    batches = window_order(lengths, 8, np.random.default_rng(1), True, strata=4)
    assert sorted(np.concatenate(batches).tolist()) == list(range(n))
    by_length = sorted(range(len(batches)), key=lambda i: (lengths[batches[i]].min(), lengths[batches[i]].max()))
    for shorter, longer in zip(by_length, by_length[1:]):  # each micro-batch is a run of the sorted window
        assert lengths[batches[shorter]].max() <= lengths[batches[longer]].min()
    stratum_of = {batch: j * 4 // len(batches) for j, batch in enumerate(by_length)}
    full_steps = len(batches) // 4
    for s in range(full_steps):
        step = range(4 * s, 4 * s + 4)
        assert sorted(stratum_of[i] for i in step) == [0, 1, 2, 3], s
    firsts = [by_length.index(4 * s) for s in range(full_steps)]  # each step's shortest batch
    assert full_steps < 2 or firsts != sorted(firsts)  # the steps (and the batches in each stratum) are permuted

    def padded(batches):
        return sum(len(b) * lengths[b].max() for b in batches)

    assert padded(batches) < 0.7 * padded(window_order(lengths, 8, np.random.default_rng(1), False))


def test_stratified_windows_hold_whole_steps():
    assert stratified_window_batches(32, 4) == 32
    assert stratified_window_batches(32, 3) == 33
    assert stratified_window_batches(5, 1) == 5


def test_pad_left_and_right():
    values = np.array([1, 2, 3, 4, 5, 6])
    lengths = np.array([2, 4])
    np.testing.assert_array_equal(pad(values, lengths, 0), [[1, 2, 0, 0], [3, 4, 5, 6]])
    np.testing.assert_array_equal(pad(values, lengths, 0, left=True), [[0, 0, 1, 2], [3, 4, 5, 6]])
    assert pad(values, lengths, 0, multiple=8).shape == (2, 8)


@pytest.mark.parametrize("depth", [0, 1, 4])
def test_prefetch_yields_every_item_in_order_and_raises_the_producers_error(depth):
    assert list(prefetch(iter(range(50)), depth)) == list(range(50))

    class BadRow(ValueError):
        pass

    def failing():
        yield from range(3)
        raise BadRow("row 4 is bad")

    got = []
    with pytest.raises(BadRow, match="row 4 is bad"):
        for item in prefetch(failing(), depth):
            got.append(item)
    assert got == [0, 1, 2]  # the items before the error still arrive, in order


def test_prefetch_runs_ahead_of_the_consumer_and_stops_when_the_consumer_does():
    produced = []

    def slow_source():
        for i in range(100):
            produced.append(i)
            yield i

    items = prefetch(slow_source(), 3)
    assert next(items) == 0
    deadline = time.monotonic() + 5
    while len(produced) < 4 and time.monotonic() < deadline:  # 1 taken + 3 waiting in the queue
        time.sleep(0.01)
    assert len(produced) >= 4, "the producer did not run ahead"
    items.close()  # a consumer that stops early (an error in a step)
    deadline = time.monotonic() + 5
    while any(t.name == "rerank-ray-prefetch" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "rerank-ray-prefetch" for t in threading.enumerate())
    assert len(produced) < 100
