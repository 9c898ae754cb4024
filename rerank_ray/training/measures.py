"""The figures a run measures about itself, for ``metrics.json`` (benchmarks read them there
rather than guess): every rank's peak and resident memory, on a GPU its peak CUDA memory, when
the first step ended, and how long the step thread waited for data."""

from __future__ import annotations

from rerank_ray.resources import peak_rss_mib, process_start_unix, rss_parts_mib
from rerank_ray.training.collectives import Collectives


def cuda_peaks_mib(device) -> tuple[float, float] | None:
    """The peak CUDA memory this process has allocated (tensors) and reserved (the caching
    allocator's pool: what the GPU had to hold) on ``device``, in MiB; None off CUDA."""
    import torch

    if device.type != "cuda" or not torch.cuda.is_initialized():
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20, torch.cuda.max_memory_reserved(device) / 2**20


def resource_metrics(
    collectives: Collectives, rank: int, world_size: int, data_wait_seconds: float, first_step_unix: float | None
) -> dict[str, float]:
    """This rank's figures beside every other rank's. A collective: every rank reports at the same
    steps, and Ray Train keeps rank 0's metrics."""
    import torch

    started = process_start_unix()
    parts = rss_parts_mib()
    cuda = cuda_peaks_mib(collectives.device)
    mine = [
        peak_rss_mib(),
        data_wait_seconds,
        (first_step_unix or started) - started,
        parts.get("anon", 0.0),
        parts.get("shmem", 0.0),
        *(cuda or (0.0, 0.0)),
    ]
    values = torch.zeros(world_size, len(mine), dtype=torch.float64, device=collectives.device)
    values[rank] = torch.tensor(mine, dtype=torch.float64)
    rows = collectives.sum(values).tolist()
    metrics = {f"peak_rss_mib_rank{r}": row[0] for r, row in enumerate(rows)}
    metrics.update({f"rss_anon_mib_rank{r}": row[3] for r, row in enumerate(rows)})
    metrics.update({f"rss_shmem_mib_rank{r}": row[4] for r, row in enumerate(rows)})
    if cuda is not None:  # every rank holds the same kind of device
        metrics.update({f"peak_cuda_allocated_mib_rank{r}": row[5] for r, row in enumerate(rows)})
        metrics.update({f"peak_cuda_reserved_mib_rank{r}": row[6] for r, row in enumerate(rows)})
    metrics["data_wait_seconds"] = max(row[1] for row in rows)
    if first_step_unix is not None:
        metrics["first_step_unix"] = first_step_unix
        metrics["first_step_seconds_since_worker_start"] = max(row[2] for row in rows)
    return metrics
