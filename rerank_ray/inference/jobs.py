"""What the batch-inference jobs share (``rerank-ray score``, ``rerank-ray mine`` and
evaluation's first stage): the pool of Ray Data actors, a new output folder, and the summary
written beside it."""

from __future__ import annotations

import json
from typing import Any

from rerank_ray import storage
from rerank_ray.errors import ConfigError


def actor_pool(size: int, gpus: int, cpus_per_actor: float) -> dict[str, Any]:
    """``map_batches``' arguments for a pool of ``size`` actors: a GPU each when the cluster has
    GPUs, else ``cpus_per_actor`` CPUs."""
    import ray.data

    return {
        "compute": ray.data.ActorPoolStrategy(size=size),
        "num_gpus": 1 if gpus else 0,
        "num_cpus": cpus_per_actor if not gpus else None,
    }


def check_output_is_new(output: str, what: str) -> None:
    """The output folder must not hold files yet: new parts beside old ones would mix two runs."""
    import pyarrow.fs as pafs

    fs, path = storage.filesystem(output)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise ConfigError(f"{what} {output} is a file: give a folder")
    if info.type == pafs.FileType.Directory and fs.get_file_info(pafs.FileSelector(path)):
        raise ConfigError(f"{what} {output} holds files already: give a new folder, or remove it")


def summary_path(output: str) -> str:
    """Beside the output folder, not in it: a JSON file among the Parquet parts would make a mixed
    folder that a training run refuses."""
    return output.rstrip("/") + ".summary.json"


def write_summary(output: str, summary: dict[str, Any]) -> None:
    fs, path = storage.filesystem(summary_path(output))
    with fs.open_output_stream(path) as handle:
        handle.write(json.dumps(summary, indent=2).encode())
