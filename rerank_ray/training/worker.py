"""The per-worker training loop: model, shard iterator, step, evaluation, reporting.

Runs inside every Ray Train worker. The driver hands it the config as a plain dict and the
:class:`~rerank_ray.training.plan.TrainPlan`; everything else (model, optimizer, batches) is built here.

Why a loop of our own rather than sentence-transformers' CrossEncoderTrainer: that trainer wants
a map-style HF dataset (a Ray shard turned into one is sharded again by accelerate, silently
skipping half the data), tokenizes on the training thread, and turns on DDP's
``find_unused_parameters`` for a CrossEncoder. Here the model, the loss's criterion, the
evaluators and the checkpoint format are the library's; only the loop is ours.

Faults: a checkpoint (:mod:`rerank_ray.training.checkpointing`, which owns its format) holds the weights, the optimizer,
scheduler and grad scaler, every rank's RNG states and the position in the data (the keys of the
pairs trained so far in the epoch, :mod:`rerank_ray.data.position`). A worker group that Ray Train
restarts after a worker died, or a run continued with ``--resume``, restores the newest complete
checkpoint and trains the rest of the interrupted epoch from the ``train_rest`` dataset: exactly
the pairs that epoch had not trained yet.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from rerank_ray import console, storage
from rerank_ray.config import Config
from rerank_ray.data.checks import REASONS, describe_tally, tally, tally_dict
from rerank_ray.data.position import DataPosition, TrainedRows, merge_ranges, partial_epoch_batches
from rerank_ray.training import checkpointing, early_stopping, faults, mixture, preemption, setup, sharding, strategy
from rerank_ray.training.audit import AuditLog, check_replicas
from rerank_ray.training.batching import Batch, Collator, GroupBatch, optimizer_steps
from rerank_ray.training.checkpointing import CheckpointInfo, LoopState
from rerank_ray.training.collectives import Collectives
from rerank_ray.training.evaluate import Evaluations, ShardEvaluator
from rerank_ray.training.losses import (
    GroupLoss,
    cached_backward,
)
from rerank_ray.training.measures import resource_metrics
from rerank_ray.training.mixture import MixtureSteps
from rerank_ray.training.models import load_encoder
from rerank_ray.training.packing import input_form
from rerank_ray.training.plan import TrainPlan
from rerank_ray.training.prefetch import prefetch, stall_message
from rerank_ray.training.progress import ProgressLine, quiet_libraries
from rerank_ray.training.setup import autocast_dtype, group_collator, matmul_precision, seed_everything
from rerank_ray.training.tracking import Tracker

if TYPE_CHECKING:
    import torch

# torch is imported in each method that uses it, not here: the driver, and so the command line,
# import this module, and torch takes seconds to import (the workers have it loaded already).


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entrypoint: rebuild the config and run the loop."""
    quiet_libraries()
    console.attach(loop_config.get("console"))
    config = Config.from_dict(loop_config["config"])
    plan = TrainPlan.from_dict(loop_config["plan"])
    import ray.train

    faults.install(loop_config.get("faults"), ray.train.get_context().get_world_rank())
    with preemption.watch_worker_sigterm() as unwatched:
        if unwatched:
            console.say(f"[rerank-ray] SIGTERM to this worker will end it at once (no handler: {unwatched})")
        Worker(config, plan, tracking=loop_config.get("tracking")).run()


class Worker:
    def __init__(self, config: Config, plan: TrainPlan, tracking: dict[str, Any] | None = None):
        import ray.train
        import torch

        self.config = config
        self.plan = plan
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        # The planned global batch on the workers there are (an elastic run may have fewer).
        self.layout = plan.layout(config, self.world_size)
        if self.rank == 0 and self.world_size != config.scaling.num_workers:
            console.say(f"[rerank-ray] {self.layout.describe(config)}")
        self.device = ray.train.torch.get_device()
        self.collectives = Collectives(self.device, self.world_size, always=faults.force_collectives())
        self.tracker = Tracker.from_dict(tracking, self.rank)  # rank 0 logs; a no-op elsewhere
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, int(config.scaling.cpus_per_worker)))
        precision = matmul_precision(self.device.type, config.train.tf32)
        if precision is not None:
            torch.set_float32_matmul_precision(precision)
        self.state = LoopState()
        self.session = uuid.uuid4().hex[:12]
        self.preempted = False  # the driver asked the run to stop (SIGTERM): it checkpoints and returns
        self.signalled_ranks: list[int] = []  # ranks that got SIGTERM: checkpoint, then restart the group
        self.restored_from: int | None = None
        self.trained = TrainedRows()  # keys this rank trained in the epoch since start or restore
        self.restored_ranges = np.zeros((0, 2), dtype=np.int64)  # keys the restored epoch had trained
        self.epoch_skips = np.zeros(len(REASONS) + 1, dtype=np.int64)  # this rank, since start/restore
        self.restored_skips = np.zeros(len(REASONS) + 1, dtype=np.int64)
        self.train_shard = ray.train.get_dataset_shard("train")
        self.audit = AuditLog(plan.audit_dir, self.rank)
        self.autocast_dtype = autocast_dtype(config.train.precision, self.device.type, self.rank)
        # Measurements for metrics.json (benchmarks read them): when the first step of this
        # session ended, and how long the step thread waited for batches.
        self.first_step_unix: float | None = None
        self.data_wait_seconds = 0.0
        self.checkpoint_wait_seconds = 0.0  # the step thread held by checkpoints (writing; uploading unless async)
        # Checkpoints this rank reported for a background upload (names), perhaps not yet complete.
        self.uploading: list[str] = []
        self.epoch_data_wait = 0.0  # the same, in the current epoch
        # The newest complete checkpoint in the run folder, found by listing storage: the call
        # RestOfEpoch makes for the train_rest dataset too, so both pick the same one. A fresh run
        # never finds one (the driver refuses an existing run name without --resume).
        point = checkpointing.latest_complete(self.config.run.storage_path, self.config.run.name or "")
        # The library's preprocessing of this model (prompt, chat template, truncation, padding side).
        encoder = load_encoder(config.model, plan.max_length)
        self.collate = Collator.for_encoder(encoder)
        # Compiled: length buckets and full batches, a bounded number of graphs (tests/test_compile_shapes.py).
        self.train_collate = (
            self.collate.for_compile(self.layout.batch_size) if config.train.torch_compile else self.collate
        )
        # Grouped shapes: the pairs are formed and tokenized per batch, in the prefetch thread
        # (the only user of this tokenizer: eval batches and pairs arrive tokenized).
        self.group_collate = (
            group_collator(config, plan.train_shape, encoder, self.collate)
            if plan.train_shape != "pairs" and not plan.mixture
            else None
        )
        # A fresh run opens its first epoch's stream now, so that Ray Data starts reading and
        # tokenizing (and the prefetch thread padding) while the model loads, rather than after.
        self._stream = self._open_stream(0, resuming=False) if point is None and not plan.mixture else None
        self.mixture = (
            MixtureSteps.open(
                config, plan, self.layout, self.rank, setup.mixture_collates(config, plan, encoder, self.collate)
            )
            if plan.mixture
            else None
        )
        self._build(point)
        eval_sets = config.eval_sets()
        self.evaluator = (
            Evaluations(
                [
                    ShardEvaluator(
                        config=config.for_eval_set(eval_set),
                        plan=plan,
                        eval_plan=eval_plan,
                        shard=ray.train.get_dataset_shard(eval_plan.dataset),
                        collate=self.collate,
                        collectives=self.collectives,
                        rank=self.rank,
                        device=self.device,
                        inputs=self.inputs,
                        audit=self.audit,
                    )
                    for eval_set, eval_plan in zip(eval_sets, plan.evals, strict=True)
                ],
                eval_sets,
                plan.headline_metric,
                self.rank,
            )
            if plan.evals
            else None
        )
        # One id per worker-group attempt, shared by its ranks (audit files).
        self.session = self.collectives.broadcast_object(self.session)
        self.audit.session = self.session

    # ------------------------------------------------------------------ setup
    def _build(self, point: CheckpointInfo | None) -> None:
        import ray.train
        import ray.train.torch
        import torch
        from transformers import Trainer, get_scheduler

        train = self.config.train
        # Same seed on every rank: the new scoring head starts identical everywhere (DDP would
        # broadcast rank 0's anyway); dropout and shuffles get per-rank seeds below.
        seed_everything(train.seed)
        restored_dir = None
        if point is not None:
            restored_dir = tempfile.mkdtemp(prefix="rerank-restore-")
            checkpointing.download(point, restored_dir)
            ray_latest = ray.train.get_checkpoint()
            if self.rank == 0 and ray_latest is not None and ray_latest.path.rstrip("/") != point.path.rstrip("/"):
                console.say(
                    f"[rerank-ray] restoring {point.name}, the newest complete checkpoint "
                    f"(Ray Train's latest registered one is {ray_latest.path.rstrip('/').rsplit('/', 1)[-1]})"
                )
        # The model as the config holds it: LoRA or every weight, activation checkpointing, DDP
        # or FSDP shards (rerank_ray.training.strategy); a restored checkpoint's weights in it.
        self.prepared = strategy.prepare(
            self.config,
            self.plan.max_length,
            self.device,
            self.world_size,
            self.collectives,
            self.audit,
            restored_dir,
            self.autocast_dtype,
        )
        self.model, self.ddp_model = self.prepared.model, self.prepared.wrapped
        # Padded (the attention mask in the form that needs no host sync, and what the library's
        # preprocess adds besides tensors) or packed (data.padding_free): rerank_ray.training.packing.
        self.inputs = input_form(
            self.model, self.config.data.padding_free, self.device.type, self.config.train.torch_compile
        )
        if self.inputs.packed and self.rank == 0:
            console.say(
                f"[rerank-ray] padding-free batches (data.padding_free={self.config.data.padding_free}): "
                "each batch's pairs packed into one row, no padding computed"
            )
        # A mixture: one per training set, in the order of plan.mixture (the step sets self.objective).
        self.objectives = [
            setup.objective(self.model, view.train, grouped, self.device)
            for view, grouped in setup.training_views(self.config, self.plan, self.group_collate is not None)
        ]
        self.objective = self.objectives[0]

        # transformers' own rule for which parameters get weight decay (not biases, not norms);
        # only the trainable ones reach the optimizer (with LoRA: the adapters and saved modules).
        decay = set(Trainer.get_decay_parameter_names(None, self.model))
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in named if n in decay], "weight_decay": train.weight_decay},
            {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(
            groups,
            lr=train.learning_rate,
            betas=(train.adam_beta1, train.adam_beta2),
            eps=train.adam_epsilon,
            # The fused kernel, on CPU too (torch >= 2.4): on all-MiniLM-L6-v2 (22.7M parameters,
            # 2 CPU threads) a step takes 18 ms against 113 ms for torch's CPU default (for-loop)
            # and 96 ms for foreach (benchmarks/optimizer_step.py, benchmarks/RESULTS.md).
            # transformers' Trainer defaults to the same kernel on torch >= 2.8.
            fused=self.device.type in ("cuda", "cpu"),
        )
        self.scheduler = get_scheduler(
            train.lr_scheduler,
            self.optimizer,
            num_warmup_steps=self.plan.warmup_steps,
            num_training_steps=self.plan.total_steps,
        )
        use_scaler = self.autocast_dtype == torch.float16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        seed_everything(train.seed * 1000 + self.rank + self.state.global_step)
        if restored_dir:
            self._restore(restored_dir, point.name)
            shutil.rmtree(restored_dir, ignore_errors=True)  # everything is loaded in memory now

    def _restore(self, folder: str, name: str) -> None:
        saved = checkpointing.load_state(folder, name)
        if self.prepared.sharded:
            strategy.restore_sharded(self.prepared, folder, self.optimizer)  # on this world size
        else:
            self.optimizer.load_state_dict(saved.optimizer)
        self.scheduler.load_state_dict(saved.scheduler)
        self.scaler.load_state_dict(saved.scaler)
        self.state = saved.loop
        # In this world size's batches (a checkpoint from another number of workers counted its own):
        # every step of the epoch so far took `accumulation` full batches on every rank.
        steps_in_epoch = self.state.global_step - self.state.epoch * self.plan.steps_per_epoch
        self.state.batches_done_in_epoch = steps_in_epoch * self.layout.accumulation
        if self.plan.mixture:  # each set's steps so far, from the epoch's schedule
            order = mixture.schedule(self.plan, self.config.train.seed, self.state.epoch)
            done = mixture.batches_done(self.plan, order, steps_in_epoch, self.layout.accumulation)
            self.state.batches_done_in_epoch = sum(done)
        if self.rank < len(saved.rng):
            checkpointing.set_rng_state(saved.rng[self.rank])  # dropout continues where this rank left it
        position = saved.position
        if position.epoch == self.state.epoch and self.state.batches_done_in_epoch:
            self.restored_ranges = position.trained
            # The tally is global: one rank carries it, the epoch's all-reduce adds the rest.
            if self.rank == 0:
                saved_skips = np.asarray(self.state.skipped_in_epoch, dtype=np.int64)
                # A checkpoint written before reasons were appended to REASONS has fewer counts.
                self.restored_skips[: len(saved_skips)] = saved_skips
            remaining = self.plan.train_rows - position.trained_rows
            batches_left = partial_epoch_batches(
                remaining, self.world_size, self.layout.batch_size, self.plan.rows_multiple
            )
            if self.plan.mixture:
                mixture.check_restored(self.plan, self.layout, position.trained, done, self.state.global_step)
            elif batches_left != self.layout.batches_per_epoch - self.state.batches_done_in_epoch:
                raise RuntimeError(
                    f"the checkpoint at step {self.state.global_step} records {position.trained_rows} trained "
                    f"pairs in epoch {self.state.epoch + 1}, which leaves {batches_left} batches per worker, but "
                    f"{self.layout.batches_per_epoch - self.state.batches_done_in_epoch} were left: the checkpoint "
                    "and the data do not match"
                )
        self.restored_from = self.state.global_step
        if self.rank == 0:
            console.say(
                f"[rerank-ray] resumed from step {self.state.global_step} (epoch {self.state.epoch + 1}, "
                f"{position.trained_rows} pairs of it already trained)"
            )

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        self.tracker.open()
        try:
            self._run()
        finally:
            self.tracker.close()

    def _run(self) -> None:
        plan, config = self.plan, self.config
        self.progress = ProgressLine(
            plan.total_steps,
            self.state.global_step,
            enabled=self.rank == 0,
            pairs_before=self.state.pairs_seen,
            seconds_before=self.state.train_seconds,
            unit=plan.unit,
        )
        self.audit.write({"kind": "session", "session": self.session, "restored_from": self.restored_from})
        if self.state.global_step == 0 and self.evaluator is not None and config.eval.before_training:
            metrics = self.evaluate()
            self._record({"step": 0, "epoch": 0.0, **metrics})
            self._report(metrics, checkpoint=False)
        last_report_step = self.state.global_step if self.state.global_step else -1
        every = config.run.checkpoint_steps
        for epoch in range(self.state.epoch, config.train.epochs):
            if self.state.stopped_early or self.preempted:
                break
            self.state.epoch = epoch
            if self._stream is None and self.mixture is None:  # a restored run: from the restored position on
                self._stream = self._open_stream(epoch, resuming=self.state.batches_done_in_epoch > 0)
            for micro_batches in self._steps_of(epoch):
                with faults.explain_oom(
                    "train",
                    self.layout.batch_size,
                    self.layout.accumulation,
                    self.world_size,
                    plan.max_length,
                ):
                    self.train_step(micro_batches)
                step = self.state.global_step
                faults.fire("step", step)
                if self.state.batches_done_in_epoch == self.layout.batches_per_epoch:
                    self._finish_epoch()
                if step % config.train.logging_steps == 0 or step == plan.total_steps:
                    self._log_progress()
                    if step != plan.total_steps and self._stop_requested():
                        self._checkpoint(evaluate=False, wait=True)
                        last_report_step = step
                        if not self.preempted:  # a worker's SIGTERM: Ray Train restarts from that checkpoint
                            raise preemption.worker_preempted(
                                self.signalled_ranks, checkpointing.dir_name(step), self.config.run.max_failures
                            )
                        break
                evaluate = step % plan.eval_every == 0
                if step != plan.total_steps and (evaluate or (every and step % every == 0)):
                    self._checkpoint(evaluate=evaluate)
                    last_report_step = step
                if self.state.stopped_early:  # every rank decides alike: the metrics were broadcast
                    break
        if last_report_step != self.state.global_step:
            self._checkpoint(evaluate=True, wait=True)

    def _open_stream(self, first_epoch: int, resuming: bool) -> Iterator[Any]:
        """This worker's padded batches from ``first_epoch`` to the last, each epoch followed by
        :data:`EPOCH_END`, prepared ahead by one background thread (:func:`prefetch`).

        The thread opens the next epoch's stream as soon as it has drained the last one, so Ray
        Data reads and tokenizes it while the epoch's last steps, its evaluation and its
        checkpoint run, instead of after them. After a restore in the middle of an epoch that
        epoch's batches come from ``train_rest``: the pairs it had not trained (see
        :mod:`rerank_ray.data.position`)."""
        import ray.train

        # The shards are taken here, on the loop's thread (Ray Train's context), not in the producer.
        rest = ray.train.get_dataset_shard("train_rest") if resuming else None
        step = self.state.global_step

        def epochs() -> Iterator[Any]:
            for epoch in range(first_epoch, self.config.train.epochs):
                first = resuming and epoch == first_epoch
                yield from self._epoch_batches(epoch, rest if first else self.train_shard, step if first else None)
                yield EPOCH_END

        return prefetch(
            epochs(),
            self.config.data.prefetch_batches,
            self.config.run.stall_timeout_s,
            functools.partial(stall_message, "train", "train_rest" if resuming else "train"),
        )

    def _epoch_batches(self, epoch: int, shard: Any, resumed_at: int | None) -> Iterator[Batch | GroupBatch]:
        """One epoch's batches of ``shard``; ``resumed_at``: the step a mid-epoch restore resumed at."""
        seed = [self.config.train.seed, epoch, self.rank] + ([resumed_at] if resumed_at is not None else [])
        collate = self.group_collate if self.group_collate is not None else self.train_collate
        return setup.epoch_batches(self.config, self.layout, shard, collate, seed)

    def _steps_of(self, epoch: int) -> Iterator[list[Batch | GroupBatch]]:
        """The micro-batches of each optimizer step of ``epoch`` on this worker; in a mixture,
        with ``self.objective`` set to the loss of the training set each step is of."""
        if self.mixture is None:
            assert self._stream is not None
            yield from self._epoch_steps(epoch, self._stream)
            return
        steps_done = self.state.global_step - epoch * self.plan.steps_per_epoch
        for index, micro_batches in self.mixture.epoch(epoch, steps_done, resumed=steps_done > 0):
            self.objective, self.mix_index = self.objectives[index], index
            yield micro_batches

    def _epoch_steps(self, epoch: int, batches: Iterator[Batch | GroupBatch]) -> Iterator[list[Batch | GroupBatch]]:
        """Lists of micro-batches, one list per optimizer step, for one epoch on this worker
        (checked against the plan as they come: :func:`~rerank_ray.training.batching.optimizer_steps`)."""
        where = (
            f"rank {self.rank}, epoch {epoch + 1} ({self.layout.rows_per_worker} rows per worker per epoch, "
            f"{self.state.batches_done_in_epoch} batches done before)"
        )
        yield from optimizer_steps(
            self._timed(batches),
            self.layout.batches_per_epoch - self.state.batches_done_in_epoch,
            self.layout.accumulation,
            where,
        )

    def _timed(self, batches: Iterator[Any]) -> Iterator[Batch | GroupBatch]:
        """``batches`` up to the end of the epoch, adding the time the step thread waits for each
        to ``data_wait_seconds`` and to the epoch's wait."""
        while True:
            waiting = time.perf_counter()
            batch = next(batches, None)
            waited = time.perf_counter() - waiting
            self.data_wait_seconds += waited
            self.epoch_data_wait += waited
            if batch is None or batch is EPOCH_END:
                return
            yield batch

    def _finish_epoch(self) -> None:
        """Count the epoch's skipped rows over all ranks, log them, record how long the step
        threads waited for data in the epoch (the mean over ranks), and start the next epoch."""
        import torch

        # One all-reduce for both: the skip counts, then the epoch's data wait.
        mine = np.append((self.epoch_skips + self.restored_skips).astype(np.float64), self.epoch_data_wait)
        summed = self.collectives.sum(mine, dtype=torch.float64)
        counts, waited = summed[:-1], float(summed[-1]) / self.world_size
        self._record({"step": self.state.global_step, "epoch": float(self.state.epoch + 1), "data_wait_s": waited})
        self.epoch_data_wait = 0.0
        skipped = tally_dict(counts.long().tolist())
        self.state.skipped_train = skipped
        if skipped:
            total = sum(skipped.values())
            if self.rank == 0:
                console.say(
                    f"[rerank-ray] epoch {self.state.epoch + 1}: skipped {total} bad training row(s) of "
                    f"{self.plan.train_rows} (data.on_bad_row=skip): {describe_tally(skipped)}"
                )
            self._record({"step": self.state.global_step, "skipped_train_rows": skipped})
        self.state.epoch += 1
        self.state.batches_done_in_epoch = 0
        self.trained.clear()
        self.restored_ranges = np.zeros((0, 2), dtype=np.int64)
        self.epoch_skips[:] = 0
        self.restored_skips[:] = 0

    def train_step(self, micro_batches: list[Batch | GroupBatch]) -> None:
        """One optimizer step over this worker's micro-batches, gradients averaged over all pairs."""
        import torch

        self.ddp_model.train()
        local_pairs = sum(b.num_pairs for b in micro_batches)
        # The loss is the mean over every real pair of the global step, whatever worker holds it
        # and however uneven the last batches are: sum(weight * loss) / sum(weight), all workers.
        global_pairs = self._global_pairs(local_pairs)
        if torch.is_tensor(global_pairs):
            scale = self.world_size / global_pairs.clamp(min=1.0)  # DDP averages gradients over ranks
        else:
            scale = 1.0 / max(global_pairs, 1.0)
        loss_sum = torch.zeros((), device=self.device)
        for i, batch in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last else self.prepared.no_sync(self.world_size)
            cached = isinstance(self.objective, GroupLoss) and self.objective.cached
            features = self.inputs.features(
                batch, self.device, keep_mask=self.config.train.torch_compile, packable=not cached
            )
            if cached:
                total = self._cached_micro_batch(features, batch, scale, sync_last=last)
            else:
                with sync:
                    with self._autocast():
                        logits = self.ddp_model(features)["scores"]
                    # The loss summed over the batch's real rows (pairs, or queries): scaled to the mean over the step's.
                    total = self.objective(logits, batch, self.device)
                    self.scaler.scale(total * scale).backward()
                total = total.detach()
            loss_sum += total
            self.audit.pair_ids(batch, "pairs", self.session, self.state.epoch, self.state.global_step + 1)
            self._note_position(batch)
        if self.config.train.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.global_step += 1
        self.state.batches_done_in_epoch += len(micro_batches)
        self.progress.add(loss_sum, local_pairs, global_pairs)
        if self.mixture is not None:
            self.mixture.add_loss(self.mix_index, loss_sum, local_pairs)
        if self.first_step_unix is None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # once: the step has really ended
            self.first_step_unix = time.time()

    def _cached_micro_batch(self, features, batch, scale, sync_last: bool):
        """One micro-batch of CachedMultipleNegativesRankingLoss, through its gradient cache."""
        assert isinstance(self.objective, GroupLoss)

        def forward(chunk: dict, grad: bool):
            with self._autocast():
                return (self.ddp_model if grad else self.model)(chunk)["scores"]

        no_sync = functools.partial(self.prepared.no_sync, self.world_size)
        return cached_backward(
            forward,
            features,
            batch,
            self.objective,
            self.device,
            self.objective.cached,
            lambda total: self.scaler.scale(total * scale),
            no_sync,
            sync_last,
        )

    def _global_pairs(self, local_pairs: float) -> float | torch.Tensor:
        """Real pairs in this optimizer step over all ranks, without a host sync: a plain float
        on one worker; else a tensor all-reduced on the device, copied there from pinned memory
        (``torch.tensor(x, device="cuda")`` copies from pageable memory, which makes the host
        wait for every kernel queued so far, once per step)."""
        import torch

        if not self.collectives.active:
            return float(local_pairs)
        return self.collectives.sum(local_pairs, dtype=torch.float32)

    def _note_position(self, batch: Batch | GroupBatch) -> None:
        """Remember which rows this step trained (the data position) and count skipped ones."""
        if batch.row_keys is not None:
            self.trained.add(batch.row_keys)
        if batch.skip is not None:
            self.epoch_skips += tally(batch.skip)

    def _autocast(self):
        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """Every rank scores its eval shard; rank 0 computes the metrics and shares them
        (:mod:`rerank_ray.training.evaluate`)."""
        assert self.evaluator is not None
        self.ddp_model.eval()
        self.progress.pause()
        where = {"session": self.session, "epoch": self.state.epoch, "step": self.state.global_step}
        metrics, self.state.skipped_eval = self.evaluator.evaluate(
            self.model, self._autocast, self.state.skipped_eval, where
        )
        self.prepared.after_evaluation()
        self.progress.resume()
        return metrics

    # ------------------------------------------------------------------ reporting
    def _record(self, entry: dict[str, Any]) -> None:
        """An entry of the run's history (checkpointed, plotted, in metrics.json), logged live too."""
        entry = {k: (float(v) if isinstance(v, (np.floating, np.integer)) else v) for k, v in entry.items()}
        self.state.history.append(entry)
        self.tracker.log(entry, step=entry["step"])

    def _stop_requested(self) -> bool:
        """Whether the driver asked the run to stop or a worker got SIGTERM, the same on every rank
        (:func:`rerank_ray.training.preemption.agree_to_stop`)."""
        run_folder = storage.join(self.config.run.storage_path, self.config.run.name or "")
        stop, self.signalled_ranks = preemption.agree_to_stop(
            self.collectives, self.rank, self.world_size, run_folder, self.state.global_step
        )
        self.preempted = self.preempted or stop
        return stop or bool(self.signalled_ranks)

    def _log_progress(self) -> None:
        losses = self.mixture.flush(self.collectives.sum) if self.mixture is not None else None
        summary = self.progress.flush(
            self.collectives.sum, self.scheduler.get_last_lr()[0], self._epoch_float(), losses
        )
        if summary is not None:
            self._record({"step": self.state.global_step, **summary})

    def _checkpoint(self, evaluate: bool, wait: bool = False) -> None:
        """Check the replicas, evaluate (when asked and there is an eval set), write a checkpoint.
        ``wait``: the run ends after it (its upload is awaited however ``run.checkpoint_upload`` is set)."""
        self.check_replicas()
        metrics: dict[str, Any] = {}
        if evaluate and self.evaluator is not None:
            metrics = self.evaluate()
            skipped = {"skipped_eval_rows": self.state.skipped_eval} if self.state.skipped_eval else {}
            self._record({"step": self.state.global_step, "epoch": self._epoch_float(), **metrics, **skipped})
            early_stopping.watch_run(self.state, metrics, self.config.eval, self.plan, self.rank == 0)
        self._report(metrics, checkpoint=True, wait=wait or self.state.stopped_early)

    def _epoch_float(self) -> float:
        done = self.state.batches_done_in_epoch
        if done == 0 and self.state.global_step:  # at an epoch boundary, the epoch just finished
            return float(self.state.epoch)
        return self.state.epoch + done / self.layout.batches_per_epoch

    def _report(self, metrics: dict[str, Any], checkpoint: bool, wait: bool = True) -> None:
        """Report to Ray Train; with ``checkpoint``, a checkpoint too. Its upload runs in the
        background (``run.checkpoint_upload: async``) unless ``wait``: the step thread is held only
        while the checkpoint is written locally, which ``checkpoint_wait_seconds`` measures."""
        import ray.train

        report = {
            **metrics,
            "step": self.state.global_step,
            "epoch": self._epoch_float(),
            "pairs_seen": self.progress.pairs_total,
            "train_seconds": self.progress.train_seconds,
            "skipped_train_rows": sum(self.state.skipped_train.values()),
            "skipped_eval_rows": sum(self.state.skipped_eval.values()),
            "stopped_early": self.state.stopped_early,
            "preempted": self.preempted,
            "padding_free": self.inputs.packed,
            "checkpoint_wait_seconds": self.checkpoint_wait_seconds,
            **self._resource_metrics(),
        }
        if not checkpoint:
            ray.train.report(report)
            return
        started = time.perf_counter()
        shared = self._gather_for_checkpoint()  # collectives: every rank takes part
        if self.prepared.sharded:
            with tempfile.TemporaryDirectory(prefix="rerank-ckpt-") as folder:
                self._report_sharded(folder, shared, report)
        else:
            background = self.config.run.checkpoint_upload == "async" and not wait
            # Not a `with` block: an upload in the background outlives this call; Ray Train deletes
            # the folder once it is uploaded (delete_local_checkpoint_after_upload).
            folder = tempfile.mkdtemp(prefix="rerank-ckpt-")
            ray_checkpoint = None
            if self.rank == 0:
                self._save_checkpoint(folder, shared, report)
                ray_checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(
                report,
                checkpoint=ray_checkpoint,
                checkpoint_dir_name=checkpointing.dir_name(self.state.global_step),
                # Our upload writes the completion marker last (see rerank_ray.training.checkpointing).
                checkpoint_upload_fn=functools.partial(
                    checkpointing.upload,
                    retry_s=self.config.run.storage_retry_s,
                    storage_uri=storage.join(self.config.run.storage_path, self.config.run.name or ""),
                ),
                checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC
                if background
                else ray.train.CheckpointUploadMode.SYNC,
                delete_local_checkpoint_after_upload=True,
            )
            if self.rank != 0:
                shutil.rmtree(folder, ignore_errors=True)
            elif background:
                self.uploading.append(checkpointing.dir_name(self.state.global_step))
        held = time.perf_counter() - started
        self.checkpoint_wait_seconds += held
        # In the history (and so in the next checkpoint and metrics.json): benchmarks/checkpoint_upload.py.
        self._record({"step": self.state.global_step, "checkpoint_wait_s": held})
        if self.rank == 0:
            # An upload still in the background is not a dead attempt's leftovers: leave it (Ray
            # Train uploads one at a time: the last few reported are all that can be in flight).
            self.uploading = self.uploading[-8:]
            checkpointing.prune(
                self.config.run.storage_path,
                self.config.run.name or "",
                self.config.run.num_checkpoints_to_keep,
                self.plan.headline_metric if self.plan.eval_rows else None,
                in_flight=self.uploading,
            )

    def _resource_metrics(self) -> dict[str, float]:
        return resource_metrics(
            self.collectives, self.rank, self.world_size, self.data_wait_seconds, self.first_step_unix
        )

    def _gather_for_checkpoint(self) -> dict[str, Any]:
        """What only all ranks together know: the pairs trained this epoch, the skipped-row
        tally, and every rank's RNG states."""
        import torch

        gathered = self.collectives.gather_objects((self.trained.ranges(), checkpointing.rng_state()))
        skips = self.collectives.sum(self.epoch_skips + self.restored_skips, dtype=torch.float64)
        return {
            "trained": merge_ranges(self.restored_ranges, *[g[0] for g in gathered]),
            "rng": [g[1] for g in gathered],
            "skipped_in_epoch": [int(x) for x in skips.long().tolist()],
        }

    def _report_sharded(self, folder: str, shared: dict[str, Any], report: dict[str, Any]) -> None:
        """FSDP: every rank writes its model and optimizer shards, rank 0 the rest; every rank
        uploads its own files, the marker goes last (:func:`checkpointing.upload_sharded`), and the
        checkpoint is registered with Ray Train as already in storage."""
        import ray.train

        sharding.save_shards(folder, self.model, self.optimizer)  # a collective
        if self.rank == 0:
            self._save_checkpoint(folder, shared, report, sharded=True)
        name = checkpointing.dir_name(self.state.global_step)
        registered = checkpointing.upload_sharded(
            folder,
            name,
            self.collectives,
            self.rank,
            report,
            self.state.global_step,
            retry_s=self.config.run.storage_retry_s,
            storage_uri=storage.join(self.config.run.storage_path, self.config.run.name or ""),
        )
        ray.train.report(
            report,
            checkpoint=registered,
            checkpoint_dir_name=name,
            checkpoint_upload_mode=ray.train.CheckpointUploadMode.NO_UPLOAD,
        )

    def _save_checkpoint(
        self, folder: str, shared: dict[str, Any], report: dict[str, Any], sharded: bool = False
    ) -> None:
        loop = replace(
            self.state,
            pairs_seen=self.progress.pairs_total,
            train_seconds=self.progress.train_seconds,
            skipped_in_epoch=shared["skipped_in_epoch"],
        )
        position = DataPosition(
            epoch=self.state.epoch,
            trained=shared["trained"] if self.state.batches_done_in_epoch else np.zeros((0, 2), dtype=np.int64),
            files_digest=self.plan.train_files_digest,
            train_rows=self.plan.train_rows,
        )
        checkpointing.save(
            folder,
            None if sharded else self.model,
            None if sharded else self.optimizer,
            self.scheduler,
            self.scaler,
            loop,
            shared["rng"],
            position,
            report,
            write_complete_marker=not sharded,
        )

    def check_replicas(self) -> None:
        """Fail loudly if the ranks' parameters differ (:func:`rerank_ray.training.audit.check_replicas`)."""
        check_replicas(self.model, self.collectives, self.audit, self.state.global_step)


#: What the batch stream yields between two epochs (:meth:`Worker._open_stream`).
EPOCH_END = object()
