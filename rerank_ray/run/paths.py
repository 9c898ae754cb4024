"""Where a run lives: its name, its folder in storage, and whether it may start or continue there.

One join for every storage path (:func:`rerank_ray.storage.join`), so a URI with pyarrow options in
its query (``s3://bucket/runs?endpoint_override=...``) keeps them after the path.
"""

from __future__ import annotations

import time

import pyarrow.fs as pafs

from rerank_ray import storage
from rerank_ray.config import Config
from rerank_ray.errors import ConfigError
from rerank_ray.redaction import redact
from rerank_ray.training import checkpointing


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
    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

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
