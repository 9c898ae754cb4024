"""Evaluation inside the workers: each rank scores its shard of each eval set, rank 0 computes the
metrics once, with the library's evaluators' definitions (:mod:`rerank_ray.evaluation.metrics`),
and every rank gets them. A run with several evaluations (``eval.sets``) scores them one after
the other and reports all their metrics together, as sentence-transformers' SequentialEvaluator
does; the metric that selects the best checkpoint is ``eval.metric_for_best``."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from rerank_ray import console
from rerank_ray.config import Config
from rerank_ray.config.evalsets import EvalSet
from rerank_ray.data.beir import Retrieval
from rerank_ray.data.checks import describe_tally, tally, tally_dict
from rerank_ray.errors import ConfigError
from rerank_ray.evaluation.metrics import compute_metrics
from rerank_ray.training import faults
from rerank_ray.training.audit import AuditLog
from rerank_ray.training.batching import Collator, iter_batches
from rerank_ray.training.collectives import Collectives
from rerank_ray.training.packing import InputForm
from rerank_ray.training.plan import EvalPlan, TrainPlan
from rerank_ray.training.prefetch import prefetch, stall_message


@dataclass
class ShardEvaluator:
    """Scores this rank's shard of one eval set and turns all ranks' scores into its metrics."""

    config: Config
    """The run's config as a run with this evaluation alone (:meth:`Config.for_eval_set`)."""
    plan: TrainPlan
    eval_plan: EvalPlan
    shard: Any
    """This rank's Ray Data iterator of the eval set (``get_dataset_shard("eval")``)."""
    collate: Collator
    collectives: Collectives
    rank: int
    device: Any
    inputs: InputForm
    """How a batch reaches the model: padded or packed (:mod:`rerank_ray.training.packing`)."""
    audit: AuditLog

    @property
    def retrieval(self) -> Retrieval | None:
        return Retrieval(**self.eval_plan.retrieval) if self.eval_plan.retrieval else None

    def evaluate(
        self,
        model: Any,
        autocast: Callable[[], contextlib.AbstractContextManager],
        skipped_before: dict[str, int],
        where: dict[str, Any],
    ) -> tuple[dict[str, float], dict[str, int]]:
        """(metrics, skipped eval rows by reason), the same on every rank. ``skipped_before``:
        the skips the last evaluation reported (said again only when they change); ``where``:
        the session, epoch and step, for the audit."""
        import torch

        with torch.no_grad():
            started = time.perf_counter()
            local = self._score(model, autocast, where)
            gathered = self.collectives.gather_objects(local)
            metrics: dict[str, float] = {}
            skipped = skipped_before
            if self.rank == 0:
                metrics, skipped = self._metrics(gathered, skipped_before, model.num_labels)
                metrics[f"{self.config.eval.name}_runtime"] = time.perf_counter() - started
            metrics, skipped = self.collectives.broadcast_object((metrics, skipped))
        return metrics, skipped

    def _score(self, model: Any, autocast: Callable[[], Any], where: dict[str, Any]) -> tuple[np.ndarray, ...]:
        """This rank's (scores, labels, weights, skip reasons, query ids), scores after the
        model's activation, as ``CrossEncoder.predict`` gives them."""
        import torch

        model.eval()
        scores, labels, weights, skips, groups = [], [], [], [], []
        batches = iter_batches(
            self.shard, self.config.eval.batch_size, self.collate, window_batches=8, group_by_length=True, rng=None
        )
        for batch in prefetch(
            batches,
            self.config.data.prefetch_batches,
            self.config.run.stall_timeout_s,
            functools.partial(stall_message, "eval", "eval"),
        ):
            with autocast(), faults.explain_oom("eval", self.config.eval.batch_size, max_length=self.plan.max_length):
                logits = model(self.inputs.features(batch, self.device))["scores"]
            # Kept on the device, copied to the host once after the last batch: a copy per batch
            # would wait for each batch's kernels (a host sync per batch on a GPU).
            scores.append(model.activation_fn(logits.float()))
            labels.append(batch.labels)
            weights.append(batch.weights)
            skips.append(batch.skip if batch.skip is not None else np.zeros(len(batch), dtype=np.int8))
            if batch.group_ids is not None:
                groups.append(batch.group_ids)
            self.audit.pair_ids(batch, "eval", where["session"], where["epoch"], where["step"])
        device_scores = torch.cat(scores).cpu().numpy() if scores else np.zeros(0, dtype=np.float32)
        return device_scores, _concat(labels), _concat(weights), _concat(skips), _concat(groups)

    def _metrics(
        self, gathered: list[tuple[np.ndarray, ...]], skipped_before: dict[str, int], num_labels: int
    ) -> tuple[dict[str, float], dict[str, int]]:
        """Rank 0: every rank's scores, checked against the eval set's size, to metrics."""
        all_scores = np.concatenate([g[0] for g in gathered])
        all_labels = np.concatenate([g[1] for g in gathered])
        real = np.concatenate([g[2] for g in gathered]) > 0
        skipped = tally_dict(tally(np.concatenate([g[3] for g in gathered])))
        rows = self.eval_plan.rows
        if real.sum() + sum(skipped.values()) != rows:
            raise RuntimeError(
                f"evaluation {self.eval_plan.name} saw {int(real.sum())} pairs and {sum(skipped.values())} skipped "
                f"rows, the eval set has {rows}"
            )
        if skipped and skipped != skipped_before:
            console.say(
                f"[rerank-ray] skipped {sum(skipped.values())} bad eval row(s) of {rows} in {self.eval_plan.name} "
                f"(data.on_bad_row=skip): {describe_tally(skipped)}"
            )
        all_scores = all_scores[real]
        if num_labels == 1:
            all_scores = all_scores.reshape(-1)
        all_groups = np.concatenate([g[4] for g in gathered])
        retrieval = self.retrieval
        metrics = compute_metrics(
            self.config.eval.kind,
            all_scores,
            all_labels[real],
            self.config.eval.name,
            num_labels,
            groups=all_groups[real] if len(all_groups) else None,
            at_k=self.config.eval.at_k,
            judged=retrieval.judged() if retrieval else None,
        )
        if retrieval:  # the retriever's own ranking beside the reranked one, as the library reports it
            metrics.update(retrieval.base)
        return metrics, skipped


@dataclass
class Evaluations:
    """The run's evaluations, scored one after the other at every evaluation step."""

    evaluators: list[ShardEvaluator]
    """One per evaluation of ``eval_sets``, in its order."""
    eval_sets: list[EvalSet]
    best_metric: str
    """``eval.metric_for_best`` (or the first evaluation's headline): said after each evaluation."""
    rank: int

    @property
    def groups(self) -> dict[str, list[str]]:
        """The means reported (a NanoBEIR entry's ``NanoBEIR_R100_mean``) and the evaluations each averages."""
        groups: dict[str, list[str]] = {}
        for eval_set in self.eval_sets:
            if eval_set.mean_of:
                groups.setdefault(eval_set.mean_of, []).append(eval_set.name)
        return groups

    def evaluate(
        self,
        model: Any,
        autocast: Callable[[], contextlib.AbstractContextManager],
        skipped_before: dict[str, int],
        where: dict[str, Any],
    ) -> tuple[dict[str, float], dict[str, int]]:
        """Every evaluation's metrics, and the skipped eval rows by reason (a run with several
        evaluations keys them ``<name>: <reason>``), the same on every rank."""
        metrics: dict[str, float] = {}
        skipped: dict[str, int] = {}
        several = len(self.evaluators) > 1
        for evaluator in self.evaluators:
            prefix = f"{evaluator.eval_plan.name}: " if several else ""
            before = {k[len(prefix) :]: v for k, v in skipped_before.items() if k.startswith(prefix)}
            own, own_skipped = evaluator.evaluate(model, autocast, before, where)
            metrics.update(own)
            skipped.update({prefix + k: v for k, v in own_skipped.items()})
        metrics.update(means(metrics, self.groups))
        if self.best_metric not in metrics:
            raise ConfigError(
                f"eval.metric_for_best {self.best_metric!r} is not among the evaluations' metrics: "
                f"{', '.join(sorted(k for k in metrics if not k.endswith('_runtime')))}"
            )
        if self.rank == 0:
            # Each entry's headline, as the user named it (a NanoBEIR entry's: its mean's).
            headlines = list(dict.fromkeys(eval_set.group_headline for eval_set in self.eval_sets))
            shown = headlines if self.best_metric in headlines else [*headlines, self.best_metric]
            console.say(
                f"[rerank-ray] step {where['step']}: " + ", ".join(f"{key} = {metrics[key]:.4f}" for key in shown)
            )
        return metrics, skipped


def means(metrics: dict[str, float], groups: dict[str, list[str]]) -> dict[str, float]:
    """``<group>_<metric>``: the mean of ``<member>_<metric>`` over the group's evaluations, for
    every metric they all report, as sentence-transformers' NanoBEIR evaluator aggregates its
    datasets (``aggregate_fn=np.mean``, the retriever's ``base_`` metrics too)."""
    out: dict[str, float] = {}
    for group, members in groups.items():
        first = f"{members[0]}_"
        suffixes = [k[len(first) :] for k in metrics if k.startswith(first) and not k.endswith("_runtime")]
        for suffix in suffixes:
            values = [metrics.get(f"{member}_{suffix}") for member in members]
            if all(v is not None for v in values):
                out[f"{group}_{suffix}"] = float(np.mean(values))
    return out


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0,), dtype=np.float32)
