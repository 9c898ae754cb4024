"""Hyperparameter search: ``rerank-ray tune``, Ray Tune over the training of ``rerank-ray train``.

    rerank-ray tune --config jobs/configs/stsb.yaml tune.num_samples=16
    rerank-ray tune --config jobs/configs/stsb.yaml run.name=my-search --resume   # after an interruption

Each Tune trial is a function trainable (:func:`run_trial`) that builds the trial's config (the
base config with the trial's values), its datasets and step plan exactly as ``rerank-ray train``
does, and runs the same multi-worker TorchTrainer inside the trial. This is how Ray Train V2 and
Tune fit together at ray 2.60: the trainer is a Train run started from a Tune function, and its
workers' reports (headline metric, step and epoch at every evaluation) reach Tune through Ray
Train's ``TuneReportCallback``, so ASHA and the search algorithm see every evaluation. The metric
and its direction come from ``eval.kind`` (:attr:`Config.headline_metric`, maximised).

A search lives in ``<run.storage_path>/<run.name>/``::

    tune/           Tune's experiment state (what --resume restores), one folder per trial
    trials/<id>/    each trial's Ray Train run (checkpoints), as a rerank-ray train run
    trials.csv      one row per trial; search.png; search_summary.json
    model/          the best trial's model with the search summary in its card (or run.output_dir)
"""

from __future__ import annotations

import math
import time
from typing import Any

from rerank_ray import storage
from rerank_ray.config import Config
from rerank_ray.config.evalsets import nanobeir_cache
from rerank_ray.data.beir import inspect_beir
from rerank_ray.data.stream import default_max_length
from rerank_ray.errors import ConfigError
from rerank_ray.evaluation.candidates import write_run_file
from rerank_ray.evaluation.retrieval import retrieve
from rerank_ray.redaction import redact
from rerank_ray.run.cluster import DATA_CPUS, ensure_ray, quiet_ray_data, worker_resources
from rerank_ray.run.driver import build_trainer, group_start_timeout, inspect_data, prepare_datasets
from rerank_ray.run.paths import check_resume
from rerank_ray.training import tracking
from rerank_ray.training.models import load_encoder, load_tokenizer
from rerank_ray.training.progress import quiet_libraries
from rerank_ray.tune.report import TUNE_DIR, SearchOutcome, SearchPaths, collect_trials, report_search
from rerank_ray.tune.space import (
    Dimension,
    check_tune,
    check_values,
    flatten_params,
    grid_size,
    max_value,
    to_param_space,
    trial_config,
)

#: CPUs Tune reserves for each trial's own process, which builds the datasets and waits on the
#: TorchTrainer. The workers' CPUs are reserved by Ray Train's own placement group, not by Tune,
#: so this stays small (Tune refuses a trial that reserves nothing).
TRIAL_DRIVER_CPUS = 0.5


# --------------------------------------------------------------------------------------------
# The trial: runs in a Tune trial actor


def plan_report(total_steps: int) -> Any:
    """Ray Train's bridge to Tune (runs in the Train controller), adding the trial's planned steps
    to every report, so the table tells a trial the scheduler stopped from one that ran to its end.
    (Defined on call: Ray Tune's import costs the command line seconds at start-up.)"""
    from ray.tune.integration.ray_train import TuneReportCallback

    class PlanReport(TuneReportCallback):
        def __init__(self, total_steps: int):
            super().__init__()
            self.total_steps = total_steps

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            first = {**metrics[0], "total_steps": self.total_steps}
            super().after_report(run_context, [first, *metrics[1:]], checkpoint)

    return PlanReport(total_steps)


def run_trial(params: dict[str, Any], base: dict[str, Any], trials_dir: str) -> None:
    """Tune function trainable: one multi-worker training run with the trial's values.

    A trial restored by ``--resume`` finds its Train run's checkpoints under the same name and
    Ray Train continues from the latest one. Any exception fails the trial; Tune records it and
    the search goes on.
    """
    from ray import tune

    quiet_libraries()
    trial_id = tune.get_context().get_trial_id()
    config = trial_config(base, flatten_params(params), trial_id, trials_dir)
    splits = inspect_data(config)
    tokenizer = load_tokenizer(config.model)
    quiet_ray_data()
    datasets, plan, _ = prepare_datasets(config, tokenizer, splits)
    trainer = build_trainer(config, plan, datasets, trial_id, callbacks=[plan_report(plan.total_steps)])
    with group_start_timeout(config):
        trainer.fit()


def with_candidates_once(config: Config, paths: SearchPaths) -> Config:
    """``eval.retriever`` (of the run's evaluation, or of each of ``eval.sets``): its top-k of the
    BEIR corpus computed once for the whole search (Ray Data embeds the corpus), written as a TREC
    run file beside the trials, which every trial (and the export) reads as its ``eval.run_file``;
    a resumed search reuses the file."""
    raw = config.to_dict()
    changed = False
    for index, eval_set in enumerate(config.eval_sets()):
        own = eval_set.evaluation
        if own.retriever is None:
            continue
        suffix = "" if eval_set.key == "eval" else f"-{index}"
        run_file = storage.join(paths.root, f"retriever-candidates{suffix}.trec")
        if not storage.is_file(run_file):
            beir = inspect_beir(own.beir or "", own.beir_split, retrieved=True)
            write_run_file(retrieve(config.for_eval_set(eval_set), beir), run_file, tag="rerank-ray-retriever")
        print(
            f"[rerank-ray] {own.retriever}'s top {own.top_k} of the corpus"
            + (f" ({eval_set.name})" if eval_set.key != "eval" else "")
            + f", computed once for every trial: {redact(run_file)}",
            flush=True,
        )
        section = raw["eval"] if eval_set.key == "eval" else raw["eval"]["sets"][index]
        section.update(retriever=None, run_file=run_file)
        changed = True
    return Config.from_dict(raw) if changed else config


def with_nanobeir_cache(config: Config) -> Config:
    """NanoBEIR entries written to the driver's cache (:mod:`rerank_ray.data.nanobeir`): each trial
    process, whose environment and home may differ, reads them there."""
    if not any(s.nanobeir for s in config.eval_sets()):
        return config
    raw = config.to_dict()
    for entry in raw["eval"]["sets"]:
        if "nanobeir" in entry:
            entry.setdefault("cache_dir", nanobeir_cache())
    return Config.from_dict(raw)


def _trial_dirname(trial: Any) -> str:
    return trial.trial_id


# --------------------------------------------------------------------------------------------
# Resources


def trial_resources(config: Config) -> dict[str, float]:
    """What one trial holds while it trains: its workers (Ray Train's placement group) plus the
    trial's own process (Tune's)."""
    need = {key: value * config.scaling.num_workers for key, value in worker_resources(config).items()}
    need["CPU"] = need.get("CPU", 0.0) + TRIAL_DRIVER_CPUS
    return need


def trials_that_fit(config: Config, cluster: dict[str, float]) -> int:
    """Trials the cluster runs at once (at least 1), keeping :data:`DATA_CPUS` for Ray Data."""
    available = {**cluster, "CPU": cluster.get("CPU", 0.0) - DATA_CPUS}
    counts = [
        math.floor(available.get(key, 0.0) / value + 1e-9) for key, value in trial_resources(config).items() if value
    ]
    return max(1, min(counts, default=1))


def local_cpus_needed(config: Config) -> int:
    """Logical CPUs an embedded local Ray needs for ``max_concurrent_trials`` trials (or one)."""
    trials = config.tune.max_concurrent_trials or 1
    return math.ceil(trials * trial_resources(config)["CPU"]) + DATA_CPUS


# --------------------------------------------------------------------------------------------
# The Tuner


def build_searcher(config: Config, concurrency: int) -> tuple[Any, int | None, int]:
    """(search algorithm, max_concurrent_trials for TuneConfig, num_samples)."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    settings = config.tune
    if settings.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        # TPE is Optuna's default sampler; OptunaSearch seeds it with ``seed``.
        return OptunaSearch(seed=settings.seed), concurrency, settings.num_samples
    # Tune wraps only Searchers in a concurrency limiter; the variant generator takes the limit itself.
    generator = BasicVariantGenerator(max_concurrent=concurrency, random_state=settings.seed)
    return generator, None, 1 if settings.search == "grid" else settings.num_samples


def build_scheduler(config: Config, dims: list[Dimension]) -> Any:
    if config.tune.scheduler == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        # The worker reports the (fractional) epoch at every evaluation: rungs are in epochs, so
        # trials with different batch sizes (and so different step counts) are compared alike.
        time_attr="epoch",
        max_t=max_value(dims, "train.epochs", config.train.epochs),
        grace_period=config.tune.grace_period,
        reduction_factor=config.tune.reduction_factor,
        # A trial that reaches its last epoch finishes on its own: stopping it there could cut
        # the Train run short between its last report and its end.
        stop_last_trials=False,
    )


def build_trainable(config: Config, paths: SearchPaths) -> Any:
    from ray import tune

    trainable = tune.with_parameters(run_trial, base=config.to_dict(), trials_dir=paths.trials)
    return tune.with_resources(trainable, {"CPU": TRIAL_DRIVER_CPUS})


def build_tuner(config: Config, dims: list[Dimension], paths: SearchPaths, concurrency: int) -> Any:
    from ray import tune

    search_alg, max_concurrent, num_samples = build_searcher(config, concurrency)
    return tune.Tuner(
        build_trainable(config, paths),
        param_space=to_param_space(dims, config.tune.search),
        tune_config=tune.TuneConfig(
            metric=config.headline_metric,
            mode="max",  # every headline metric (AP, Spearman, F1, nDCG) is better higher
            search_alg=search_alg,
            scheduler=build_scheduler(config, dims),
            num_samples=num_samples,
            max_concurrent_trials=max_concurrent,
            # A reused actor would keep the stopped trial's Train run (owned by it) alive.
            reuse_actors=False,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=paths.root,
            # A failed trial is recorded with its error and not retried; the search goes on.
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=tracking.tune_callbacks(config),
        ),
    )


def search_exists(paths: SearchPaths) -> bool:
    from ray import tune

    return tune.Tuner.can_restore(paths.tune)


def check_search_name(config: Config, paths: SearchPaths) -> bool:
    """Whether to restore the search; a search is continued only on request, never by accident."""
    return check_resume(
        config,
        search_exists(paths),
        f"search {config.run.name!r} already exists in {paths.root}",
        f"search {config.run.name!r} has no saved state yet: starting it",
    )


def _announce(config: Config, dims: list[Dimension], concurrency: int, restoring: bool) -> None:
    settings = config.tune
    if restoring:
        print(
            f"[rerank-ray] resuming search {config.run.name!r}: finished and failed trials are kept, "
            "unfinished ones continue from their last checkpoint (space, algorithm and scheduler "
            "are those the search started with)",
            flush=True,
        )
        return
    trials = grid_size(dims) if settings.search == "grid" else settings.num_samples
    scheduler = (
        f"ASHA (grace {settings.grace_period:g} epoch(s), reduction factor {settings.reduction_factor:g})"
        if settings.scheduler == "asha"
        else "none"
    )
    print(
        f"[rerank-ray] search {config.run.name!r}: {trials} trial(s) by {settings.search} search, "
        f"{concurrency} at a time, each on {config.scaling.num_workers} worker(s); maximising "
        f"{config.headline_metric}; scheduler {scheduler}\n"
        + "\n".join(f"[rerank-ray]   {dim.describe()}" for dim in dims),
        flush=True,
    )


def run_search(config: Config) -> SearchOutcome:
    """Run (or resume) the search, then write its table and plot and export the best trial."""
    import ray
    from ray import tune as ray_tune

    quiet_libraries()
    config.run.name = config.run.name or time.strftime("tune-%Y%m%d-%H%M%S")
    # Everything that can be checked without Ray is checked first: bad input fails in seconds.
    if not config.eval_sets():
        raise ConfigError(
            f"rerank-ray tune compares trials on the headline metric of their evaluation ({config.headline_metric}): "
            "give the runs one: data.eval (pairs), eval.beir (a BEIR folder) or eval.sets (several)"
        )
    dims = check_tune(config)
    check_values(config, dims)
    paths = SearchPaths.of(config)
    restoring = check_search_name(config, paths)
    inspect_data(config)
    tracking.check_installed(config)
    load_encoder(config.model, default_max_length(load_tokenizer(config.model), config.model.max_length))
    ensure_ray(config, num_cpus=local_cpus_needed(config))
    quiet_ray_data()  # the export reads samples of the data for the model card
    config = with_nanobeir_cache(with_candidates_once(config, paths))
    concurrency = config.tune.max_concurrent_trials or trials_that_fit(config, ray.cluster_resources())
    _announce(config, dims, concurrency, restoring)
    if restoring:
        tuner = ray_tune.Tuner.restore(
            paths.tune, trainable=build_trainable(config, paths), resume_unfinished=True, resume_errored=False
        )
    else:
        tuner = build_tuner(config, dims, paths, concurrency)
    tuner.fit()
    rows = collect_trials(paths.tune, config, dims)
    return report_search(config, dims, paths, rows)
