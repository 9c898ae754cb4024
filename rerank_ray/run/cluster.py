"""The Ray this process runs on: join a cluster or start a local one, and what a Ray job implies.

A run joins the cluster named by ``run.ray_address`` or ``RAY_ADDRESS`` (a Ray job's supervisor sets
it), else starts an embedded local Ray sized for the workers plus Ray Data's tasks. Inside a Ray
job, the job's runtime env decides what the run may set and where its files may go.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
from collections.abc import Iterator
from typing import Any

from rerank_ray import console, storage
from rerank_ray.config import Config
from rerank_ray.errors import ConfigError

#: Logical CPUs an embedded local Ray keeps free for Ray Data's read and tokenize tasks.
DATA_CPUS = 2


def ensure_ray(config: Config, num_cpus: int | None = None, forward_logs: bool = True) -> str | None:
    """Join the cluster named by ``run.ray_address`` or ``RAY_ADDRESS``; else start a local Ray.

    A local Ray gets at least enough logical CPUs for the workers plus Ray Data's tasks: on a
    2-core laptop two 1-CPU workers would otherwise leave the data pipeline no CPU to run on.
    ``num_cpus`` raises that floor (a search runs several trials at once). ``forward_logs``: print
    what Ray's processes write here (always when verbose); a run that relays its workers' own
    lines (:class:`rerank_ray.console.Relay`) leaves the rest in Ray's session logs.
    Returns what it did, for the run's first line (None when Ray was running in this process).
    """
    import ray

    # Ray Train's print patch sends each print of a worker to the log and to stdout: every
    # progress line would show twice.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if ray.is_initialized():
        return None
    address = config.run.ray_address or os.environ.get("RAY_ADDRESS")
    env_vars = {"TOKENIZERS_PARALLELISM": "false"}
    if console.verbose():
        env_vars[console.VERBOSE_ENV] = "1"
    forward_logs = forward_logs or console.verbose()
    console.quiet_ray_logs()
    if address:
        check_cluster_address(address)
        # Inside a Ray job the job's runtime env (jobs/runtime_env.yaml) is merged with this one,
        # and Ray refuses a variable set in both: set only what the job leaves unset.
        env_vars = {k: v for k, v in env_vars.items() if k not in job_runtime_env().get("env_vars", {})}
        ray.init(address=address, runtime_env={"env_vars": env_vars} if env_vars else None, log_to_driver=forward_logs)
        return f"joined the Ray cluster at {address}"
    scaling = config.scaling
    needed = max(num_cpus or 0, math.ceil(scaling.num_workers * scaling.cpus_per_worker) + DATA_CPUS)
    dashboard_port, api_env = pinned_state_api()
    logical_cpus = max(os.cpu_count() or 1, needed)
    with own_agent_port(free_port()):
        context = _init_local(ray, logical_cpus, dashboard_port, {**env_vars, **api_env}, forward_logs)
    dashboard = f" (dashboard http://{context.dashboard_url})" if context.dashboard_url else ""
    return f"started an embedded local Ray of {logical_cpus} logical CPUs{dashboard}"


def _init_local(ray: Any, logical_cpus: int, dashboard_port: int, env_vars: dict[str, str], forward_logs: bool) -> Any:
    return ray.init(
        # "local": a Ray of our own even where another runs on this machine or left its address
        # file behind (ray.init would otherwise join that one, and refuse num_cpus when it does).
        # Joining a cluster is said with run.ray_address or RAY_ADDRESS.
        address="local",
        num_cpus=logical_cpus,
        # Ray lets min(cores, num_cpus) worker processes start at once and warns ("N PYTHON worker
        # processes have been started ... 4x the maximum expected startup concurrency") at 4x that:
        # on a 2-core laptop a run's own processes (controller, 2 workers, data coordinators, the
        # console relay, read tasks) reach 8. The logical CPUs given above are the concurrency meant.
        _system_config={"worker_maximum_startup_concurrency": logical_cpus},
        # The dashboard also serves the state API that Ray Train polls; without it every
        # worker logs "Failed to query Ray Train Controller actor state" in a loop.
        include_dashboard=True,
        dashboard_port=dashboard_port,
        runtime_env={"env_vars": env_vars},
        log_to_driver=forward_logs,
    )


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def own_agent_port(port: int) -> Iterator[None]:
    """Start the embedded Ray's dashboard agent on ``port`` instead of Ray's fixed default (52365).

    Every other listener of a local Ray takes a free port already (GCS, raylet, object manager,
    runtime-env agent, metrics; the dashboard through :func:`pinned_state_api`), but the agent's
    HTTP port is fixed and ``ray.init`` has no argument for it (only ``ray start
    --dashboard-agent-listen-port``). Holding 52365 breaks a neighbour: a ``ray start --head``
    on the same machine comes up, but its agent cannot bind, and its job server answers every
    ``ray job submit`` with "No available agent to submit job". So, while ``ray.init`` builds its
    parameters, Ray's own ``RayParams`` gets the port as its default (Ray 2.60:
    ``ray._private.worker.init`` constructs ``ray._private.parameter.RayParams`` without the
    argument; tests/test_cluster.py checks that a neighbour's job still runs)."""
    import ray._private.parameter as parameter

    original = parameter.RayParams

    class RayParams(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any):
            kwargs.setdefault("dashboard_agent_listen_port", port)
            super().__init__(*args, **kwargs)

    parameter.RayParams = RayParams  # type: ignore[misc]
    try:
        yield
    finally:
        parameter.RayParams = original  # type: ignore[misc]


def check_cluster_cpus(config: Config) -> None:
    """The cluster must keep a CPU for Ray Data beside the CPUs the training workers reserve:
    without one, reading and tokenizing never start ("Cluster resources are not enough to run any
    task ... may hang forever") and the run hangs. An embedded Ray passes by construction
    (:func:`ensure_ray` adds :data:`DATA_CPUS`); a joined cluster is checked here, before the
    trainer starts."""
    import ray

    scaling = config.scaling
    if not scaling.check_cluster_cpus:
        return
    total = float(ray.cluster_resources().get("CPU", 0.0))
    # An elastic run starts on what fits: its least number of workers must leave Ray Data a CPU.
    workers = scaling.min_workers if scaling.min_workers is not None else scaling.num_workers
    reserved = workers * scaling.cpus_per_worker
    if total - reserved >= 1:
        return
    fits = max(0.0, (total - 1) / workers)
    raise ConfigError(
        f"the Ray cluster has {total:g} CPUs and the {workers} training workers reserve {reserved:g} "
        f"(scaling.num_workers x scaling.cpus_per_worker {scaling.cpus_per_worker:g}), which leaves "
        f"{max(total - reserved, 0):g} for Ray Data's read and tokenize tasks: they need at least 1, or the run "
        f"hangs. Fix: scaling.cpus_per_worker={fits:g} or less, fewer workers, a node more, or more CPUs for "
        "Ray (ray start --num-cpus); on a cluster that autoscales, scaling.check_cluster_cpus=false"
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
    port = free_port()
    return port, {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}


def worker_resources(config: Config) -> dict[str, float]:
    """Ray resources of one Train worker."""
    scaling = config.scaling
    resources = {"CPU": scaling.cpus_per_worker, **scaling.resources_per_worker}
    if scaling.use_gpu:
        resources.setdefault("GPU", 1)
    return resources


def quiet_ray_data() -> None:
    """Our progress line replaces Ray Data's per-operator progress bars in the logs."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def logs_dir() -> str | None:
    """Where this Ray writes its processes' logs (this node's session folder), if known."""
    try:
        import ray._private.worker as ray_worker

        node = ray_worker._global_node
        return node.get_logs_dir_path() if node is not None else None
    except (ImportError, AttributeError):
        return None
