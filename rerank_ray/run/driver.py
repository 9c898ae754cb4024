"""The driver of one run: check the inputs, start Ray, build the datasets and the TorchTrainer,
train, export.

The driver owns scaling, run and storage settings and the datasets; the model and the loop live
in the workers (:mod:`rerank_ray.training.worker`). Where the run lives is :mod:`rerank_ray.run.paths`,
the Ray it runs on :mod:`rerank_ray.run.cluster`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from rerank_ray import console, storage
from rerank_ray.config import Config
from rerank_ray.console import Relay
from rerank_ray.data.beir import BeirFiles, Retrieval, inspect_beir, open_beir
from rerank_ray.data.checks import describe_tally
from rerank_ray.data.files import SplitFiles, inspect_split
from rerank_ray.data.nanobeir import materialize
from rerank_ray.data.position import file_keys, files_digest
from rerank_ray.data.queries import count_queries, describe, read_queries
from rerank_ray.data.stream import (
    EncoderHandle,
    PairSource,
    PairStream,
    default_max_length,
    filler_rows,
    group_filler_rows,
    open_pairs,
    with_group_ids,
    without_queries,
)
from rerank_ray.errors import DataError, Preempted, WorkerPreempted, WorkersUnavailable, clear_error, find_error
from rerank_ray.evaluation.candidates import apply_candidates, read_run_file, retriever_metrics
from rerank_ray.evaluation.ranking import QUERY_ID
from rerank_ray.evaluation.retrieval import retrieve
from rerank_ray.losses import integer_labels
from rerank_ray.redaction import redact
from rerank_ray.run.cluster import (
    check_cluster_cpus,
    check_storage_outlives_job,
    ensure_ray,
    logs_dir,
    quiet_ray_data,
    worker_resources,
)
from rerank_ray.run.export import TrainOutcome, export_run
from rerank_ray.run.lock import RunLock
from rerank_ray.run.paths import check_run_name, run_dir, run_name, storage_root
from rerank_ray.training import checkpointing, faults, preemption, tracking
from rerank_ray.training.checkpointing import RestOfEpoch
from rerank_ray.training.losses import loss_arguments
from rerank_ray.training.models import check_base_model, load_encoder, load_tokenizer
from rerank_ray.training.packing import check_padding_free
from rerank_ray.training.plan import EvalPlan, MixPlan, TrainPlan, rows_multiple
from rerank_ray.training.progress import quiet_libraries
from rerank_ray.training.tracking import TrackingRun
from rerank_ray.training.worker import train_loop_per_worker


def inspect_data(config: Config) -> dict[str, SplitFiles | BeirFiles]:
    """Check the splits' files and columns; needs no Ray, so bad input fails in seconds. The eval
    splits are keyed by their Ray dataset's name (``eval``, ``eval_1``, ...: ``eval.sets``)."""
    splits: dict[str, SplitFiles | BeirFiles] = {}
    for train_set in config.train_sets():  # a mixture: each training set read with its own view
        view = config.for_train_set(train_set)
        splits[train_set.dataset] = inspect_split(view.data.train, view, "train")
        splits[train_set.dataset].what = f"{train_set.key} ({train_set.name})"
    if not splits:
        splits["train"] = inspect_split(config.data.train, config, "train")
    for eval_set in config.eval_sets():
        if eval_set.nanobeir is not None:
            materialize(*eval_set.nanobeir)  # once, into a local cache: then a BEIR folder and its BM25 run
        splits[eval_set.dataset] = inspect_eval_split(config.for_eval_set(eval_set), eval_set.key)
    for split in splits.values():
        if isinstance(split, SplitFiles) and split.sample_skipped:
            print(
                f"[rerank-ray] {split.what}: the first rows of its files hold bad rows that will be skipped "
                f"(data.on_bad_row=skip): {describe_tally(split.sample_skipped)}",
                flush=True,
            )
    return splits


def inspect_eval_split(config: Config, key: str) -> SplitFiles | BeirFiles:
    """One evaluation's split (``config`` its view, :meth:`Config.for_eval_set`), checked; with a
    run file, its candidates applied; a reranking split's queries counted."""
    split: SplitFiles | BeirFiles
    if config.eval.beir is not None:
        retrieved = config.eval.retriever is not None or config.eval.run_file is not None
        split = inspect_beir(config.eval.beir, config.eval.beir_split, retrieved=retrieved)
    else:
        split = inspect_split(config.data.eval, config, "eval")
    if key != "eval":
        split.what = f"{key} ({config.eval.name}): {split.what}"
    if isinstance(split, BeirFiles) and config.eval.run_file is not None:
        with_candidates(config, split, run_file_candidates(config, split))
    elif config.eval.kind == "reranking" and config.eval.retriever is None:
        check_eval_queries(config, split)  # with eval.retriever: once it has retrieved (needs Ray)
    return split


def run_file_candidates(config: Config, split: BeirFiles) -> pa.Table:
    """``eval.run_file``'s top ``eval.top_k`` of the split's judged queries (read before Ray)."""
    assert config.eval.run_file is not None
    queries = set(split.query_texts().column("query_id").to_pylist())
    return read_run_file(config.eval.run_file, config.eval.top_k, queries)


def with_candidates(config: Config, split: BeirFiles, candidates: pa.Table) -> None:
    """Rerank a retriever's ``candidates`` (:mod:`rerank_ray.evaluation.candidates`): they become the eval
    pairs, the queries are counted, and the retriever's own ranking is scored once."""
    evaluation = config.eval
    source = f"run file {evaluation.run_file}" if evaluation.run_file else f"retriever {evaluation.retriever}"
    apply_candidates(split, candidates, Retrieval(source, evaluation.top_k, evaluation.always_rerank_positives))
    check_eval_queries(config, split)
    assert split.eval_queries is not None
    base = retriever_metrics(split, evaluation.name, evaluation.at_k, split.eval_queries.dropped_hashes)
    headline = f"{evaluation.name}_base_ndcg@{evaluation.at_k}"
    print(
        f"[rerank-ray] {split.what}: reranking the top {evaluation.top_k} of {source}"
        + (
            f" (plus {split.retrieval.added_positives} judged positives it missed)"
            if evaluation.always_rerank_positives
            else ""
        )
        + f": {split.judgements.num_rows} pairs; the retriever alone: {headline} = {base[headline]:.4f}",
        flush=True,
    )


def check_eval_queries(config: Config, split: SplitFiles | BeirFiles) -> None:
    """Count a reranking eval set's queries before Ray starts (:mod:`rerank_ray.data.queries`):
    refuse single-candidate queries, or note the queries ``eval.drop_unrankable`` leaves out."""
    drop = config.eval.drop_unrankable
    if isinstance(split, BeirFiles):
        judged = split.judgements
        labels = judged.column("label").to_numpy()
        keys = [str(k) for k in judged.column("query_id").to_pylist()]
        split.eval_queries = count_queries(keys, labels, np.ones(len(keys), dtype=bool), drop)
    else:
        key = QUERY_ID if config.eval.query_id_column is not None else "sentence_0"
        split.eval_queries = read_queries(split.files, split.format, split.checker, key, drop)
    queries = split.eval_queries
    if queries.single_candidate and not drop:
        raise DataError(
            f"{split.what}: {len(queries.single_candidate)} of {queries.total} eval queries have a single "
            f"candidate ({describe(queries.single_candidate)}): reranking needs at least 2 per query (nDCG is "
            "undefined for one). Fix: give them more candidates, check eval.query_id_column, or set "
            "eval.drop_unrankable=true to evaluate without such queries (and those without a positive)"
        )
    dropped = queries.dropped()
    if dropped:
        kept = queries.total - sum(dropped.values())
        if kept == 0:
            raise DataError(f"{split.what}: no eval query has 2 candidates and a positive: nothing to rerank")
        print(
            f"[rerank-ray] {split.what}: eval.drop_unrankable leaves out {sum(dropped.values())} of {queries.total} "
            f"queries ({dropped['single_candidate']} with a single candidate, {dropped['without_positive']} "
            f"without a positive; {queries.dropped_rows} pairs): {kept} queries evaluated",
            flush=True,
        )


def open_eval_pairs(config: Config, split: SplitFiles | BeirFiles) -> PairSource:
    """The eval split as a PairSource; for reranking, each pair carries the id of its query."""
    source = open_beir(split) if isinstance(split, BeirFiles) else open_pairs(split, config.data, seed=None)
    if config.eval.kind != "reranking":
        return source
    named = isinstance(split, BeirFiles) or config.eval.query_id_column is not None
    source = with_group_ids(source, key=QUERY_ID if named else "sentence_0")
    return without_queries(source, split.eval_queries) if split.eval_queries else source


def prepare_datasets(
    config: Config, tokenizer: Any, splits: dict[str, SplitFiles | BeirFiles]
) -> tuple[dict[str, Any], TrainPlan, dict[str, PairSource | None]]:
    """Read, check, tokenize and pad the splits with Ray Data; settle the step arithmetic.

    ``train_rest`` is the rest of an interrupted epoch, built by Ray Train from the checkpoint it
    restores (:class:`rerank_ray.training.checkpointing.RestOfEpoch`)."""
    eval_sets = [(eval_set, config.for_eval_set(eval_set)) for eval_set in config.eval_sets()]
    for eval_set, view in eval_sets:
        split = splits[eval_set.dataset]
        if isinstance(split, BeirFiles) and view.eval.retriever is not None and split.retrieval is None:
            with_candidates(view, split, retrieve(view, split))  # Ray Data: needs Ray, so here
    # Padded so that every worker count the run may train on splits the rows evenly.
    world = rows_multiple(config)
    max_length = default_max_length(tokenizer, config.model.max_length)
    seed = config.train.seed if config.data.shuffle else None
    # The library's preprocessing of this model, carried to the tokenize tasks (rerank_ray.data.encoding).
    encoder = load_encoder(config.model, max_length)
    # One encoder per process and model settings (a search's trials may differ in them, and one
    # Ray Data worker process serves several).
    key = json.dumps([dataclasses.asdict(config.model), max_length], sort_keys=True)
    handle = EncoderHandle(functools.partial(load_encoder, config.model, max_length), key=key)
    class_ids = integer_labels(config.train.loss)
    has_ids = bool(config.data.id_column)
    mixture: list[MixPlan] = []
    if config.train_sets():
        datasets, sources, mixture, digest = mixture_datasets(config, splits, handle, encoder, world, seed)
        train_rows = sum(m.rows for m in mixture)
        train_padded = sum(m.rows_padded for m in mixture)
        shape_name = "mixture"
    else:
        train_split = splits["train"]
        assert isinstance(train_split, SplitFiles)  # BEIR folders are eval sets only
        train_stream = train_set_stream(config, train_split, handle, encoder, world, seed)
        train_ds, train_padded = train_stream.build()
        datasets = {
            "train": train_ds,
            "train_rest": RestOfEpoch(train_stream, storage_root(config), run_name(config)),
        }
        sources = {"train": train_stream.source}
        train_rows, digest = train_stream.num_rows, train_stream.files_digest
        shape_name = train_split.checker.shape.name
    eval_plans = []
    for eval_set, view in eval_sets:
        split = splits[eval_set.dataset]
        eval_src = open_eval_pairs(view, split)
        eval_filler = filler_rows(
            encoder,
            world - 1,
            has_ids and view.eval.beir is None,  # BEIR pairs carry no id column
            class_ids=class_ids,
            group_ids=view.eval.kind == "reranking",
        )
        stream = PairStream(eval_src, handle, config.data, world, eval_filler, class_ids)
        datasets[eval_set.dataset], padded = stream.build()
        sources[eval_set.dataset] = eval_src
        retrieval = split.retrieval.to_dict() if isinstance(split, BeirFiles) and split.retrieval else None
        eval_plans.append(EvalPlan(eval_set.dataset, eval_set.name, eval_src.num_rows, padded, retrieval))
    audit_dir = storage.join(run_dir(config, run_name(config)), "audit") if config.run.audit else None
    plan = TrainPlan.build(
        config,
        train_rows,
        train_padded,
        eval_plans,
        max_length,
        audit_dir,
        train_files_digest=digest,
        train_shape=shape_name,
        mixture=mixture,
    )
    return datasets, plan, sources


def train_set_stream(
    config: Config,
    split: SplitFiles,
    handle: EncoderHandle,
    encoder: Any,
    world: int,
    seed: int | None,
    first_file: int = 0,
) -> PairStream:
    """The stream of one training set (``config`` the run's, or a mixture set's view), with the
    filler rows of its shape; ``first_file``: its files' first index in the row keys."""
    shape = split.checker.shape
    has_ids = bool(config.data.id_column)
    class_ids = integer_labels(config.train.loss)
    if shape.grouped:
        filler = group_filler_rows(world - 1, has_ids)
    else:
        filler = filler_rows(encoder, world - 1, has_ids, class_ids=class_ids)
    source = open_pairs(split, config.data, seed=seed, first_file=first_file)
    return PairStream(source, handle, config.data, world, filler, class_ids, grouped=shape.grouped)


def mixture_datasets(
    config: Config,
    splits: dict[str, SplitFiles | BeirFiles],
    handle: EncoderHandle,
    encoder: Any,
    world: int,
    seed: int | None,
) -> tuple[dict[str, Any], dict[str, PairSource | None], list[MixPlan], str]:
    """A mixture's training sets (:mod:`rerank_ray.config.trainsets`): one Ray dataset each, and
    each its rest after a restore; and the digest of all their files. Their files are numbered one
    after the other in the row keys, so the data position (one set of trained keys) covers the
    whole mixture."""
    datasets: dict[str, Any] = {}
    sources: dict[str, PairSource | None] = {}
    parts: list[tuple[PairStream, MixPlan]] = []
    first_file = 0
    for train_set in config.train_sets():
        split = splits[train_set.dataset]
        assert isinstance(split, SplitFiles)
        stream = train_set_stream(config.for_train_set(train_set), split, handle, encoder, world, seed, first_file)
        datasets[train_set.dataset], padded = stream.build()
        sources[train_set.dataset] = stream.source
        part = MixPlan(
            train_set.dataset,
            train_set.name,
            stream.num_rows,
            padded,
            split.checker.shape.name,
            first_file,
            len(stream.files),
        )
        parts.append((stream, part))
        first_file += len(stream.files)
    digest = files_digest([f for stream, _ in parts for f in stream.files])
    total = sum(part.rows for _, part in parts)
    for stream, part in parts:
        datasets[f"{part.dataset}_rest"] = RestOfEpoch(
            stream,
            storage_root(config),
            run_name(config),
            files_digest=digest,
            train_rows=total,
            keys=file_keys(part.first_file, part.files),
        )
    return datasets, sources, [part for _, part in parts], digest


def build_trainer(
    config: Config,
    plan: TrainPlan,
    datasets: dict[str, Any],
    name: str,
    callbacks: list | None = None,
    console_queue: Any = None,
    tracking: TrackingRun | None = None,
) -> Any:
    """The TorchTrainer of one run. ``callbacks``: Ray Train user callbacks (a Tune trial passes
    the one that forwards its reports to Tune); ``console_queue``: where the workers send their
    lines (a :class:`rerank_ray.console.Relay`'s queue; None: they print them); ``tracking``: the
    trackers' runs rank 0 logs into."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    scaling = config.scaling
    resources = worker_resources(config)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config.to_dict(),
            "plan": plan.to_dict(),
            "faults": faults.from_environment(),
            "console": console_queue,
            "tracking": tracking.to_dict() if tracking else None,
        },
        scaling_config=ScalingConfig(
            # Elastic: Ray Train starts with what fits of the range and grows back as capacity returns.
            num_workers=(scaling.min_workers, scaling.num_workers)
            if scaling.min_workers is not None
            else scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker=resources,
            placement_strategy=scaling.placement_strategy,
            elastic_resize_monitor_interval_s=scaling.resize_check_s,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_root(config),
            # Ray keeps every checkpoint it registered; rerank_ray.training.checkpointing.prune keeps the
            # last run.num_checkpoints_to_keep plus the best (Ray's own policy is "K best + latest").
            checkpoint_config=CheckpointConfig(num_to_keep=None),
            # A dead worker restarts the worker group from the newest complete checkpoint; bad
            # input, config errors and out-of-memory end the run at once (no retry cures them).
            failure_config=failure_config(config),
            callbacks=[faults.stop_retrying_callback(), *(callbacks or [])],
        ),
        datasets=datasets,
    )


#: Ray Train's limit on one attempt to start the worker group (its placement group scheduled),
#: read from the driver's environment when the trainer starts (Ray 2.60, train/v2/_internal/constants.py).
GROUP_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


def failure_config(config: Config) -> Any:
    """Ray Train's FailureConfig: ``run.max_failures`` retries of a failed worker group; with
    ``run.wait_for_workers_s``, one attempt of that long to place the workers, not retried (Ray
    Train retries a group that did not start every 60 s, for ever, by default)."""
    from ray.train import FailureConfig

    if config.run.wait_for_workers_s is None:
        return FailureConfig(max_failures=config.run.max_failures)
    return FailureConfig(max_failures=config.run.max_failures, controller_failure_limit=0)


@contextlib.contextmanager
def group_start_timeout(config: Config) -> Iterator[None]:
    """While a trainer's ``fit`` starts its controller: ``run.wait_for_workers_s`` as Ray Train's
    limit on placing the workers (an environment variable the trainer hands its controller)."""
    if config.run.wait_for_workers_s is None:
        yield
        return
    before = os.environ.get(GROUP_START_TIMEOUT_ENV)
    os.environ[GROUP_START_TIMEOUT_ENV] = f"{config.run.wait_for_workers_s:g}"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(GROUP_START_TIMEOUT_ENV, None)
        else:
            os.environ[GROUP_START_TIMEOUT_ENV] = before


def workers_unavailable(config: Config, err: BaseException) -> WorkersUnavailable | None:
    """The clear error for a worker group Ray Train could not place within ``run.wait_for_workers_s``."""
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    if config.run.wait_for_workers_s is None or find_error(err, WorkerGroupStartupTimeoutError) is None:
        return None
    import ray

    scaling = config.scaling
    free = {k: v for k, v in ray.available_resources().items() if not k.startswith(("node:", "memory", "object_"))}
    return WorkersUnavailable(
        f"waited {config.run.wait_for_workers_s:g} s (run.wait_for_workers_s) for {scaling.num_workers} worker(s) "
        f"of {worker_resources(config)} each (scaling.num_workers, scaling.cpus_per_worker, scaling.use_gpu, "
        f"scaling.resources_per_worker), and the Ray cluster never held them: it has {free} free. Fix: add the "
        "capacity (or wait for the lost node to come back and run the same command with --resume), ask for "
        "fewer or smaller workers, or raise run.wait_for_workers_s"
    )


def train(config: Config) -> TrainOutcome:
    """Fine-tune, then export the chosen checkpoint with its model card and metrics."""
    quiet_libraries()
    name = run_name(config)
    config.run.name = name
    # Everything that can be checked without Ray is checked first: bad input fails in seconds.
    # (The job check reads the paths as the user wrote them, so it runs before they are resolved.)
    check_storage_outlives_job(config)
    # Workers and Ray Train's controller find checkpoints here: no path relative to our cwd.
    config.run.storage_path = storage_root(config)
    # One driver per run: a second one started at the same time stops here (exit 2).
    with RunLock(run_dir(config, name), name, config.run.lock_timeout_s):
        return _train_locked(config, name)


def _train_locked(config: Config, name: str) -> TrainOutcome:
    check_run_name(config, name)
    splits = inspect_data(config)
    tracking.check_installed(config)
    check_base_model(config.model)
    check_padding_free(config.model, config.data.padding_free)
    loss_arguments(config.train.loss_kwargs)  # a module named in train.loss_kwargs that is none: exit 2 here
    tokenizer = load_tokenizer(config.model)
    # The library's preprocessing of this model, checked on a pair before Ray starts (a chat
    # template without query and document roles fails here, with the library's fix).
    load_encoder(config.model, default_max_length(tokenizer, config.model.max_length))
    started = ensure_ray(config, forward_logs=False)
    check_cluster_cpus(config)
    quiet_ray_data()
    if started:
        print(f"[rerank-ray] {redact(started)}", flush=True)
    if not console.verbose():
        where = logs_dir()
        print(
            "[rerank-ray] the output of Ray's processes goes to Ray's logs"
            + (f" ({where}, on the driver's node)" if where else "")
            + f"; --verbose or {console.VERBOSE_ENV}=1 prints it here",
            flush=True,
        )
    datasets, plan, sources = prepare_datasets(config, tokenizer, splits)
    shape = splits["train"].checker.shape if isinstance(splits["train"], SplitFiles) else None
    unit = "training pairs" if shape is None or not shape.grouped else f"training queries ({shape.describe()})"
    if plan.mixture:
        unit = (
            f"training rows in a mixture ({config.data.sampling}): "
            + ", ".join(
                f"{m.name} {m.rows} {m.shape} ({m.used_steps} of its {m.steps} steps per epoch)" for m in plan.mixture
            )
            + ";"
        )
    print(
        f"[rerank-ray] {plan.train_rows} {unit} on {config.scaling.num_workers} worker(s): "
        f"{plan.steps_per_epoch} steps per epoch, {plan.total_steps} steps in all"
        + (f"; {plan.eval_rows} eval pairs, headline {plan.headline_metric}" if plan.eval_rows else ""),
        flush=True,
    )
    tracked = tracking.start(config, run_dir(config, name))
    folder = run_dir(config, name)
    preemption.clear(folder)  # a resumed run that was stopped by SIGTERM goes on
    with Relay() as relay, preemption.stop_on_sigterm(folder):
        trainer = build_trainer(config, plan, datasets, name, console_queue=relay.queue, tracking=tracked)
        try:
            with group_start_timeout(config):
                result = trainer.fit()  # raises ray.train.TrainingFailedError when the run failed
        except Exception as err:
            tracking.finish(tracked, "", {}, ok=False)
            unavailable = workers_unavailable(config, err)
            if unavailable is not None:
                raise unavailable from err
            cause = clear_error(err)
            if cause is not None:
                raise cause from err  # bad input / config / out of memory: the message names the fix
            preempted = find_error(err, WorkerPreempted)
            if preempted is not None:  # a worker's SIGTERM with no retry left: its checkpoint is complete
                raise Preempted(f"{preempted}; no retry left: continue with the same command and --resume") from err
            raise
    if (result.metrics or {}).get("preempted"):
        tracking.finish(tracked, "", {}, ok=False)
        preemption.clear(folder)
        step = result.metrics["step"]
        raise Preempted(
            f"stopped by SIGTERM at step {step} of {plan.total_steps}; its checkpoint is complete "
            f"({checkpointing.dir_name(step)}): continue with the same command and --resume"
        )
    checkpointing.prune(
        storage_root(config), name, config.run.num_checkpoints_to_keep, plan.headline_metric if plan.eval_rows else None
    )
    return export_run(config, plan, result, sources, tracking=tracked)
