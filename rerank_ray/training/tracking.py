"""Live experiment tracking (``run.report_to``): TensorBoard, MLflow and W&B while the run trains.

The driver opens the run with each tracker before Ray Train starts (:func:`start`: the resolved
config, redacted, as parameters), and closes it after the export (:func:`finish`: the model card
and metrics.json as artifacts, the final metrics). Rank 0 logs every progress line's figures and
every evaluation as they happen (:class:`Tracker`). What ties the three together is
``tracking.json`` in the run folder (this module owns it): the MLflow run id and the W&B run id, so
that a ``--resume``, or a worker group Ray Train restarted, logs into the same runs.

Why not transformers' integration callbacks (``report_to`` of the HF Trainer): they hang off the
Trainer's callback events, which this loop does not have (see :mod:`rerank_ray.training.worker`).
The libraries' own clients do the logging here: ``MlflowClient``, ``wandb.init``/``log``, torch's
``SummaryWriter``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from rerank_ray import console, storage
from rerank_ray.config import TRACKERS, Config
from rerank_ray.errors import ConfigError
from rerank_ray.redaction import redact_obj

TRACKING_FILE = "tracking.json"
TENSORBOARD_DIR = "tensorboard"

#: Figures of the progress line, logged under ``train/``; evaluation metrics keep their names
#: with the evaluator's prefix as a section (``dev_spearman`` -> ``dev/spearman``).
TRAIN_FIGURES = ("loss", "learning_rate", "pairs_per_second", "epoch")


def metric_tag(key: str) -> str:
    return f"train/{key}" if key in TRAIN_FIGURES else key.replace("_", "/", 1)


def check_installed(config: Config) -> None:
    """Before Ray starts: each tracker of ``run.report_to`` has its package, or the error names the extra."""
    for name in config.trackers():
        module, extra = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            how = f"pip install 'rerank-ray[{extra}]'" if extra else f"pip install {module}"
            raise ConfigError(
                f"run.report_to names {name}, whose package {module!r} is not installed: {how} "
                "(on a cluster, in the image or runtime env of every node), or drop it from run.report_to"
            )


@dataclass
class TrackingRun:
    """What the driver opened and the workers log into (a plain dict in the loop config)."""

    trackers: list[str]
    run_name: str
    project: str
    tensorboard_dir: str = ""
    """Local folder or URI of the event files; a URI is written locally and uploaded."""
    mlflow_tracking_uri: str = ""
    mlflow_run_id: str = ""
    wandb_id: str = ""
    wandb_mode: str = ""
    wandb_dir: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def flat_params(config: Config) -> dict[str, Any]:
    """The resolved config as ``section.key`` parameters, secrets redacted."""
    flat: dict[str, Any] = {}
    for section, values in redact_obj(config.to_dict()).items():
        if section == "tune" or not isinstance(values, dict):
            continue
        for key, value in values.items():
            flat[f"{section}.{key}"] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
    return flat


def start(config: Config, run_folder: str) -> TrackingRun | None:
    """On the driver: open (or, for a run that has a tracking.json, reopen) each tracker's run."""
    names = config.trackers()
    if not names:
        return None
    record_path = storage.join(run_folder, TRACKING_FILE)
    known = _read_record(record_path)
    run = TrackingRun(
        trackers=names,
        run_name=config.run.name or "",
        project=config.run.tracking_project,
        params=flat_params(config),
    )
    if "tensorboard" in names:
        run.tensorboard_dir = storage.join(run_folder, TENSORBOARD_DIR)
    if "mlflow" in names:
        run.mlflow_tracking_uri, run.mlflow_run_id = _open_mlflow(run, known.get("mlflow_run_id", ""))
    if "wandb" in names:
        run.wandb_id = known.get("wandb_id") or _new_wandb_id()
        run.wandb_mode = os.environ.get("WANDB_MODE", "")
        run.wandb_dir = os.path.abspath(os.environ.get("WANDB_DIR", "") or ".")
    _write_record(record_path, {"mlflow_run_id": run.mlflow_run_id, "wandb_id": run.wandb_id})
    return run


def _read_record(path: str) -> dict[str, str]:
    if not storage.is_file(path):
        return {}
    fs, where = storage.filesystem(path)
    with fs.open_input_stream(where) as stream:
        return json.loads(stream.read().decode())


def _write_record(path: str, record: dict[str, str]) -> None:
    fs, where = storage.filesystem(path)
    fs.create_dir(where.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(where) as stream:
        stream.write(json.dumps(record).encode())


def _mlflow_client(uri: str) -> Any:
    import mlflow  # noqa: F401  (configures its loggers on import: quieted after)
    from mlflow.tracking import MlflowClient

    if not console.verbose():  # "Creating initial MLflow database tables..." and the like
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    return MlflowClient(uri)


def _open_mlflow(run: TrackingRun, known_id: str) -> tuple[str, str]:
    import mlflow

    uri = mlflow.get_tracking_uri()
    client = _mlflow_client(uri)
    if known_id:
        client.update_run(known_id, status="RUNNING")
        return uri, known_id
    experiment = client.get_experiment_by_name(run.project)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(run.project)
    created = client.create_run(experiment_id, run_name=run.run_name, tags={"rerank_ray.run_name": run.run_name})
    run_id = created.info.run_id
    # MLflow caps a batch at 100 parameters and a value at 6,000 characters.
    items = [(key, str(value)[:6000]) for key, value in run.params.items()]
    for start_at in range(0, len(items), 100):
        client.log_batch(run_id, params=[_param(key, value) for key, value in items[start_at : start_at + 100]])
    return uri, run_id


def _param(key: str, value: str) -> Any:
    from mlflow.entities import Param

    return Param(key, value)


def _new_wandb_id() -> str:
    """Lower-case letters and digits, as W&B's own run ids."""
    return uuid.uuid4().hex[:16]


def finish(run: TrackingRun | None, local_out: str, final: dict[str, float], ok: bool = True) -> None:
    """On the driver, after the export was written to ``local_out``: the model card and
    metrics.json as artifacts, the final metrics, and each run closed."""
    if run is None:
        return
    named = [os.path.join(local_out, name) for name in ("README.md", "metrics.json")] if local_out else []
    artifacts = [path for path in named if os.path.isfile(path)]
    if run.mlflow_run_id:
        client = _mlflow_client(run.mlflow_tracking_uri)
        for path in artifacts:
            client.log_artifact(run.mlflow_run_id, path)
        client.set_terminated(run.mlflow_run_id, status="FINISHED" if ok else "FAILED")
    if run.wandb_id:
        wandb_run = _wandb_init(run)
        try:
            import wandb

            artifact = wandb.Artifact(f"{run.run_name}-model-card", type="model-card")
            for path in artifacts:
                artifact.add_file(path)
            wandb_run.log_artifact(artifact)
            numbers = {k: v for k, v in final.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            wandb_run.summary.update({metric_tag(k): v for k, v in numbers.items() if k != "step"})
        finally:
            wandb_run.finish(exit_code=0 if ok else 1)


def _wandb_init(run: TrackingRun) -> Any:
    import wandb

    # W&B prints a banner and a run summary, and wraps stdout, in every process it runs in: off
    # unless verbose (the progress line and the run's summary say it already).
    quiet = not console.verbose()
    return wandb.init(
        settings=wandb.Settings(silent=quiet, console="off" if quiet else "auto"),
        project=run.project,
        id=run.wandb_id,
        name=run.run_name,
        resume="allow",
        config=run.params,
        mode=run.wandb_mode or None,
        dir=run.wandb_dir or None,
        reinit="create_new",
    )


class Tracker:
    """Rank 0's end: logs figures per step to every tracker of the run (a no-op on other ranks)."""

    def __init__(self, run: TrackingRun | None, rank: int):
        self.run = run if rank == 0 else None
        self._writer: Any = None
        self._tb_local = ""
        self._mlflow: Any = None
        self._wandb: Any = None
        self._last_upload = 0.0

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None, rank: int) -> Tracker:
        return cls(TrackingRun(**raw) if raw else None, rank)

    def open(self) -> None:
        run = self.run
        if run is None:
            return
        if run.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            # Object storage takes no appends: a URI's events are written here and uploaded.
            remote = storage.is_uri(run.tensorboard_dir)
            self._tb_local = tempfile.mkdtemp(prefix="rerank-tb-") if remote else run.tensorboard_dir
            self._writer = SummaryWriter(log_dir=self._tb_local, flush_secs=10)
        if run.mlflow_run_id:
            self._mlflow = _mlflow_client(run.mlflow_tracking_uri)
        if run.wandb_id:
            self._wandb = _wandb_init(run)

    def log(self, figures: dict[str, Any], step: int) -> None:
        if self.run is None:
            return
        scalars = {k: float(v) for k, v in figures.items() if isinstance(v, (int, float)) and k != "step"}
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(metric_tag(key), value, step)
            self._writer.flush()  # readable while the run goes
            self._upload_events(every_s=60.0)
        if self._mlflow is not None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            metrics = [Metric(metric_tag(k), v, now, step) for k, v in scalars.items()]
            self._mlflow.log_batch(self.run.mlflow_run_id, metrics=metrics)
        if self._wandb is not None:
            self._wandb.log({metric_tag(k): v for k, v in scalars.items()}, step=step)

    def _upload_events(self, every_s: float) -> None:
        assert self.run is not None
        if self._tb_local == self.run.tensorboard_dir or time.monotonic() - self._last_upload < every_s:
            return
        storage.upload_files(self._tb_local, self.run.tensorboard_dir)
        self._last_upload = time.monotonic()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._upload_events(every_s=0.0)
            if self.run is not None and self._tb_local != self.run.tensorboard_dir:
                shutil.rmtree(self._tb_local, ignore_errors=True)
            self._writer = None
        if self._wandb is not None:
            # The driver closes the run with the artifacts; this process's part of it ends here.
            self._wandb.finish()
            self._wandb = None


def tune_callbacks(config: Config) -> list[Any]:
    """Ray Tune's logger callbacks for ``rerank-ray tune``: each trial a run of its own, with the
    trial's values as parameters and every report (evaluations, pairs seen) as metrics. (The
    trials' workers log nothing themselves: Tune's callbacks already see every report.)"""
    callbacks: list[Any] = []
    names = config.trackers()
    if "mlflow" in names:
        import mlflow
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        callbacks.append(
            MLflowLoggerCallback(
                tracking_uri=mlflow.get_tracking_uri(),
                experiment_name=config.run.tracking_project,
                tags={"rerank_ray.search": config.run.name or ""},
            )
        )
    if "wandb" in names:
        from ray.air.integrations.wandb import WandbLoggerCallback

        callbacks.append(
            WandbLoggerCallback(
                project=config.run.tracking_project,
                group=config.run.name,
                mode=os.environ.get("WANDB_MODE") or None,
                settings={"silent": not console.verbose(), "console": "off"},
            )
        )
    return callbacks
