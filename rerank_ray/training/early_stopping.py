"""Early stopping on the headline metric, by transformers' EarlyStoppingCallback rule."""

from __future__ import annotations

from rerank_ray import console
from rerank_ray.config import EvalConfig
from rerank_ray.training.checkpointing import LoopState
from rerank_ray.training.plan import TrainPlan


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


def watch_run(state: LoopState, metrics: dict[str, float], evaluation: EvalConfig, plan: TrainPlan, say: bool) -> None:
    """The rule on a run's evaluation (``eval.early_stopping_patience``, on ``eval.metric_for_best``
    or the headline); ``say``: this rank says where the run stops."""
    patience, min_delta = evaluation.early_stopping_patience, evaluation.early_stopping_min_delta
    if not patience:
        return
    headline = plan.headline_metric
    at_end = state.global_step >= plan.total_steps
    if watch(state, metrics[headline], patience, min_delta, at_end) and say:
        console.say(
            f"[rerank-ray] early stopping at step {state.global_step} of {plan.total_steps}: "
            f"{headline} gained no more than {min_delta:g} in {patience} evaluation(s) "
            f"(best {state.best_headline:.4f})"
        )
