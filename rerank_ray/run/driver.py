"""The driver: Ray, the datasets, the TorchTrainer, and the export when training ends.

The driver owns scaling, run and storage settings and the datasets; the model and the loop live
in the workers (:mod:`rerank_ray.worker`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any

from rerank_ray import storage
from rerank_ray.config import Config, ConfigError
from rerank_ray.models import check_base_model, load_tokenizer
from rerank_ray.plan import TrainPlan
from rerank_ray.redaction import redact

#: Logical CPUs an embedded local Ray keeps free for Ray Data's read and tokenize tasks.
DATA_CPUS = 2


@dataclass
class TrainOutcome:
    run_dir: str
    output_dir: str
    metrics: dict[str, Any]
    """What metrics.json holds."""


def run_name(config: Config) -> str:
    return config.run.name or time.strftime("rerank-%Y%m%d-%H%M%S")


def storage_root(config: Config) -> str:
    """``run.storage_path`` as Ray Train gets it: a URI as written, a local path made absolute."""
    return storage.resolve(config.run.storage_path)


def run_dir(config: Config, name: str) -> str:
    return storage.join(storage_root(config), name)


def run_has_checkpoints(config: Config, name: str) -> bool:
    """Whether Ray Train left a run snapshot (its list of checkpoints) under this run's folder, or
    a complete checkpoint of ours is there (one written before Ray could register it)."""
    import pyarrow.fs as pafs
    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

    from rerank_ray import checkpointing

    fs, run_path = checkpointing.run_filesystem(storage_root(config), name)
    info = fs.get_file_info(f"{run_path}/{CHECKPOINT_MANAGER_SNAPSHOT_FILENAME}")
    return info.type == pafs.FileType.File or checkpointing.latest_complete(storage_root(config), name) is not None


def check_resume(config: Config, exists: bool, existing: str, fresh: str) -> bool:
    """Whether to continue what is there (``exists``): only on request (``run.resume``), never
    by accident. ``existing`` says what is there, for the refusal; ``fresh`` is printed when a
    resume finds nothing to continue. Shared by runs and searches."""
    if exists and not config.run.resume:
        raise ConfigError(f"{existing}: pass --resume (run.resume=true) to continue it, or choose another run.name")
    if config.run.resume and not exists:
        print(f"[rerank-ray] {fresh}", flush=True)
    return exists and config.run.resume


def check_run_name(config: Config, name: str) -> None:
    """A finished or crashed run is continued only on request, never restarted by accident."""
    check_resume(
        config,
        run_has_checkpoints(config, name),
        f"run {name!r} already has checkpoints in {redact(storage_root(config))}",
        f"run {name!r} has no checkpoint yet: starting it from the beginning",
    )


def ensure_ray(config: Config, num_cpus: int | None = None) -> None:
    """Join the cluster named by ``run.ray_address`` or ``RAY_ADDRESS``; else start a local Ray.

    A local Ray gets at least enough logical CPUs for the workers plus Ray Data's tasks: on a
    2-core laptop two 1-CPU workers would otherwise leave the data pipeline no CPU to run on.
    ``num_cpus`` raises that floor (a search runs several trials at once).
    """
    import ray

    # Ray Train's print patch sends each print of a worker to the log and to stdout: every
    # progress line would show twice.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if ray.is_initialized():
        return
    address = config.run.ray_address or os.environ.get("RAY_ADDRESS")
    env_vars = {"TOKENIZERS_PARALLELISM": "false"}
    if address:
        check_cluster_address(address)
        # Inside a Ray job the job's runtime env (jobs/runtime_env.yaml) is merged with this one,
        # and Ray refuses a variable set in both: set only what the job leaves unset.
        env_vars = {k: v for k, v in env_vars.items() if k not in job_runtime_env().get("env_vars", {})}
        ray.init(address=address, runtime_env={"env_vars": env_vars} if env_vars else None, log_to_driver=True)
        return
    scaling = config.scaling
    needed = max(num_cpus or 0, math.ceil(scaling.num_workers * scaling.cpus_per_worker) + DATA_CPUS)
    dashboard_port, api_env = pinned_state_api()
    ray.init(
        num_cpus=max(os.cpu_count() or 1, needed),
        # The dashboard also serves the state API that Ray Train polls; without it every
        # worker logs "Failed to query Ray Train Controller actor state" in a loop.
        include_dashboard=True,
        dashboard_port=dashboard_port,
        runtime_env={"env_vars": {**env_vars, **api_env}},
        log_to_driver=True,
    )


def check_cluster_address(address: str) -> None:
    if address.startswith(("http://", "https://")):
        raise ConfigError(
            f"RAY_ADDRESS / run.ray_address {address!r} is the dashboard's job submission address: "
            "submit this as a job (ray job submit --address " + address + " --working-dir . -- python jobs/train.py "
            "...), or join the cluster by its GCS address (HEAD:6379)"
        )


def job_runtime_env() -> dict[str, Any]:
    """The runtime env of the Ray job this process is the entrypoint of; {} outside a job.

    Ray's job supervisor hands it to the entrypoint in RAY_JOB_CONFIG_JSON_ENV_VAR
    (ray/dashboard/modules/job/job_supervisor.py, Ray 2.60)."""
    import json

    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    return (json.loads(raw).get("runtime_env") or {}) if raw else {}


def check_storage_outlives_job(config: Config) -> None:
    """In a Ray job with a working dir, a relative path lands in the job's temporary copy of that
    dir on one node, deleted with the job: refuse it before training, naming the fix."""
    if not job_runtime_env().get("working_dir"):
        return
    for key, value in (("run.storage_path", config.run.storage_path), ("run.output_dir", config.run.output_dir)):
        if value and not storage.is_uri(value) and not os.path.isabs(os.path.expanduser(value.removeprefix("file://"))):
            raise ConfigError(
                f"{key} {value!r} is a relative path: in a Ray job it would land in the job's temporary "
                f"copy of the working dir on one node and vanish with it; set {key}=s3://bucket/prefix "
                "(or gs://..., or an absolute path every node mounts, e.g. NFS)"
            )


def pinned_state_api() -> tuple[int, dict[str, str]]:
    """A free port for a local Ray's dashboard, and the env var that points Ray processes at it.

    Ray Train's PlacementGroupCleaner (a detached actor that frees a Train run's worker placement
    group when its controller dies, as when Tune's scheduler stops a trial) finds the state API
    through ``RAY_API_SERVER_ADDRESS``, else by looking for *the* Ray on the host. With two local
    Rays on one host that lookup fails ("Found multiple active Ray instances"), the placement
    group stays, and its CPUs are lost to the rest of a search. Set for the whole job, the
    variable reaches every actor, the cleaner included.
    """
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return port, {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}


def inspect_data(config: Config) -> dict[str, Any]:
    """Check the splits' files and columns; needs no Ray, so bad input fails in seconds."""
    from rerank_ray import data
    from rerank_ray.beir import inspect_beir

    splits = {"train": data.inspect_split(config.data.train, config, "train")}
    if config.eval.beir is not None:
        splits["eval"] = inspect_beir(config.eval.beir, config.eval.beir_split)
    elif config.data.eval:
        splits["eval"] = data.inspect_split(config.data.eval, config, "eval")
    for split in splits.values():
        if getattr(split, "sample_skipped", None):
            from rerank_ray.validation import describe_tally

            print(
                f"[rerank-ray] {split.what}: the first rows of its files hold bad rows that will be skipped "
                f"(data.on_bad_row=skip): {describe_tally(split.sample_skipped)}",
                flush=True,
            )
    return splits


def open_eval_pairs(config: Config, split: Any) -> Any:
    """The eval split as a PairSource; for reranking, each pair carries the id of its query."""
    from rerank_ray import data, reranking
    from rerank_ray.beir import BeirFiles, open_beir

    source = open_beir(split) if isinstance(split, BeirFiles) else data.open_pairs(split, config.data, seed=None)
    if config.eval.kind != "reranking":
        return source
    named = isinstance(split, BeirFiles) or config.eval.query_id_column is not None
    return reranking.with_group_ids(source, key=reranking.QUERY_ID if named else "sentence_0")


def prepare_datasets(
    config: Config, tokenizer: Any, splits: dict[str, Any]
) -> tuple[dict[str, Any], TrainPlan, dict[str, Any]]:
    """Read, check, tokenize and pad the splits with Ray Data; settle the step arithmetic.

    ``train_rest`` is the rest of an interrupted epoch, built by Ray Train from the checkpoint it
    restores (:class:`rerank_ray.position.RestOfEpoch`)."""
    from rerank_ray import data
    from rerank_ray.losses import integer_labels
    from rerank_ray.position import RestOfEpoch

    world = config.scaling.num_workers
    max_length = data.default_max_length(tokenizer, config.model.max_length)
    seed = config.train.seed if config.data.shuffle else None
    handle = data.TokenizerHandle(tokenizer, key=f"{config.model.name_or_path}@{config.model.revision}")
    class_ids = integer_labels(config.train.loss)
    has_ids = bool(config.data.id_column)
    filler = data.filler_rows(tokenizer, world - 1, max_length, has_ids, class_ids=class_ids)
    train_src = data.open_pairs(splits["train"], config.data, seed=seed)
    eval_src = open_eval_pairs(config, splits["eval"]) if "eval" in splits else None
    train_stream = data.PairStream(train_src, handle, max_length, config.data, world, filler, class_ids)
    train_ds, train_padded = train_stream.build()
    datasets = {
        "train": train_ds,
        "train_rest": RestOfEpoch(train_stream, storage_root(config), run_name(config)),
    }
    eval_rows = eval_padded = 0
    if eval_src is not None:
        eval_filler = data.filler_rows(
            tokenizer,
            world - 1,
            max_length,
            has_ids and config.eval.beir is None,  # BEIR pairs carry no id column
            class_ids=class_ids,
            group_ids=config.eval.kind == "reranking",
        )
        datasets["eval"], eval_padded = data.PairStream(
            eval_src, handle, max_length, config.data, world, eval_filler, class_ids
        ).build()
        eval_rows = eval_src.num_rows
    audit_dir = storage.join(run_dir(config, run_name(config)), "audit") if config.run.audit else None
    plan = TrainPlan.build(
        config,
        train_src.num_rows,
        train_padded,
        eval_rows,
        eval_padded,
        max_length,
        audit_dir,
        train_files_digest=train_stream.files_digest,
    )
    sources = {"train": train_src, "eval": eval_src}
    return datasets, plan, sources


def worker_resources(config: Config) -> dict[str, float]:
    """Ray resources of one Train worker."""
    scaling = config.scaling
    resources = {"CPU": scaling.cpus_per_worker, **scaling.resources_per_worker}
    if scaling.use_gpu:
        resources.setdefault("GPU", 1)
    return resources


def build_trainer(
    config: Config, plan: TrainPlan, datasets: dict[str, Any], name: str, callbacks: list | None = None
) -> Any:
    """The TorchTrainer of one run. ``callbacks``: Ray Train user callbacks (a Tune trial passes
    the one that forwards its reports to Tune)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from rerank_ray import faults
    from rerank_ray.worker import train_loop_per_worker

    scaling = config.scaling
    resources = worker_resources(config)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config.to_dict(), "plan": plan.to_dict(), "faults": faults.from_environment()},
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker=resources,
            placement_strategy=scaling.placement_strategy,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_root(config),
            # Ray keeps every checkpoint it registered; rerank_ray.checkpointing.prune keeps the
            # last run.num_checkpoints_to_keep plus the best (Ray's own policy is "K best + latest").
            checkpoint_config=CheckpointConfig(num_to_keep=None),
            # A dead worker restarts the worker group from the newest complete checkpoint; bad
            # input, config errors and out-of-memory end the run at once (no retry cures them).
            failure_config=FailureConfig(max_failures=config.run.max_failures),
            callbacks=[faults.stop_retrying_callback(), *(callbacks or [])],
        ),
        datasets=datasets,
    )


def quiet_ray_data() -> None:
    """Our progress line replaces Ray Data's per-operator progress bars in the logs."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def train(config: Config) -> TrainOutcome:
    """Fine-tune, then export the chosen checkpoint with its model card and metrics."""
    from rerank_ray.export import export_run
    from rerank_ray.progress import quiet_libraries

    quiet_libraries()
    name = run_name(config)
    config.run.name = name
    # Everything that can be checked without Ray is checked first: bad input fails in seconds.
    # (The job check reads the paths as the user wrote them, so it runs before they are resolved.)
    check_storage_outlives_job(config)
    # Workers and Ray Train's controller find checkpoints here: no path relative to our cwd.
    config.run.storage_path = storage_root(config)
    check_run_name(config, name)
    splits = inspect_data(config)
    check_base_model(config.model)
    tokenizer = load_tokenizer(config.model)
    ensure_ray(config)
    quiet_ray_data()
    datasets, plan, sources = prepare_datasets(config, tokenizer, splits)
    print(
        f"[rerank-ray] {plan.train_rows} training pairs on {config.scaling.num_workers} worker(s): "
        f"{plan.steps_per_epoch} steps per epoch, {plan.total_steps} steps in all"
        + (f"; {plan.eval_rows} eval pairs, headline {plan.headline_metric}" if plan.eval_rows else ""),
        flush=True,
    )
    trainer = build_trainer(config, plan, datasets, name)
    try:
        result = trainer.fit()  # raises ray.train.TrainingFailedError when the run failed
    except Exception as err:
        from rerank_ray.faults import input_error

        cause = input_error(err)
        if cause is None:
            raise
        raise cause from err  # bad input / config / out of memory: the message names the fix
    from rerank_ray import checkpointing

    checkpointing.prune(
        storage_root(config), name, config.run.num_checkpoints_to_keep, plan.headline_metric if plan.eval_rows else None
    )
    return export_run(config, plan, result, sources)
