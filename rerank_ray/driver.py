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

from rerank_ray.config import Config, ConfigError
from rerank_ray.models import load_tokenizer
from rerank_ray.plan import TrainPlan

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
    path = config.run.storage_path
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def run_has_checkpoints(config: Config, name: str) -> bool:
    """Whether Ray Train left a run snapshot (its list of checkpoints) under this run's folder."""
    import pyarrow.fs as pafs
    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

    root = storage_root(config)
    fs, base = pafs.FileSystem.from_uri(root if "://" in root else "file://" + root)
    info = fs.get_file_info(f"{base.rstrip('/')}/{name}/{CHECKPOINT_MANAGER_SNAPSHOT_FILENAME}")
    return info.type == pafs.FileType.File


def check_run_name(config: Config, name: str) -> None:
    """A finished or crashed run is continued only on request, never restarted by accident."""
    exists = run_has_checkpoints(config, name)
    if exists and not config.run.resume:
        raise ConfigError(
            f"run {name!r} already has checkpoints in {storage_root(config)}: pass --resume "
            "(run.resume=true) to continue it, or choose another run.name"
        )
    if config.run.resume and not exists:
        print(f"[rerank-ray] run {name!r} has no checkpoint yet: starting it from the beginning", flush=True)


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
        ray.init(address=address, runtime_env={"env_vars": env_vars}, log_to_driver=True)
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

    splits = {"train": data.inspect_split(config.data.train, config.data, "data.train")}
    if config.data.eval:
        splits["eval"] = data.inspect_split(config.data.eval, config.data, "data.eval")
    return splits


def prepare_datasets(
    config: Config, tokenizer: Any, splits: dict[str, Any]
) -> tuple[dict[str, Any], TrainPlan, dict[str, Any]]:
    """Read, tokenize and pad the splits with Ray Data; settle the step arithmetic."""
    from rerank_ray import data

    world = config.scaling.num_workers
    max_length = data.default_max_length(tokenizer, config.model.max_length)
    seed = config.train.seed if config.data.shuffle else None
    train_src = data.open_pairs(splits["train"], config.data, seed=seed)
    eval_src = data.open_pairs(splits["eval"], config.data, seed=None) if "eval" in splits else None
    handle = data.TokenizerHandle(tokenizer, key=f"{config.model.name_or_path}@{config.model.revision}")
    has_ids = bool(config.data.id_column)
    train_ds, train_padded = data.pad_to_multiple(
        data.tokenize(train_src, handle, max_length, config.data),
        train_src.num_rows,
        world,
        tokenizer,
        max_length,
        has_ids,
    )
    datasets = {"train": train_ds}
    eval_rows = eval_padded = 0
    if eval_src is not None:
        eval_ds, eval_padded = data.pad_to_multiple(
            data.tokenize(eval_src, handle, max_length, config.data),
            eval_src.num_rows,
            world,
            tokenizer,
            max_length,
            has_ids,
        )
        datasets["eval"] = eval_ds
        eval_rows = eval_src.num_rows
    audit_dir = os.path.join(storage_root(config), run_name(config), "audit") if config.run.audit else None
    plan = TrainPlan.build(config, train_src.num_rows, train_padded, eval_rows, eval_padded, max_length, audit_dir)
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

    from rerank_ray.worker import train_loop_per_worker

    scaling = config.scaling
    resources = worker_resources(config)
    evaluating = plan.eval_rows > 0
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config.to_dict(), "plan": plan.to_dict()},
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker=resources,
            placement_strategy=scaling.placement_strategy,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_root(config),
            checkpoint_config=CheckpointConfig(
                num_to_keep=config.run.num_checkpoints_to_keep,
                checkpoint_score_attribute=plan.headline_metric if evaluating else None,
                checkpoint_score_order="max",
            ),
            failure_config=FailureConfig(max_failures=0),
            callbacks=callbacks,
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
    check_run_name(config, name)
    splits = inspect_data(config)
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
    result = trainer.fit()
    if result.error:
        raise result.error
    return export_run(config, plan, result, sources)
