"""Data positions and the step arithmetic of a restored epoch (rerank_ray.data.position), without Ray."""

from __future__ import annotations

import numpy as np

from rerank_ray.data import position

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
