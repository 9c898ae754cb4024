"""Early stopping on the headline metric, by transformers' EarlyStoppingCallback rule."""

from __future__ import annotations

from rerank_ray.training.checkpointing import LoopState


def watch(state: LoopState, value: float, patience: int, min_delta: float, at_end: bool) -> bool:
    """Count the evaluation that measured ``value`` into ``state``; True when this evaluation
    stops the run (after its checkpoint).

    An evaluation that gains more than ``min_delta`` over the best so far resets the count, any
    other adds one; the count reaching ``patience`` stops the run, unless it is at its end anyway
    (``at_end``). The best value is the highest seen, gain or not."""
    best = state.best_headline
    if best is None or value - best > min_delta:
        state.evaluations_without_gain = 0
    else:
        state.evaluations_without_gain += 1
    if best is None or value > best:
        state.best_headline = value
    if state.evaluations_without_gain >= patience and not at_end:
        state.stopped_early = True
        return True
    return False
