"""The step arithmetic of a run, settled on the driver from the row counts.

The number of optimizer steps follows from the data, as in sentence-transformers' trainer: each
worker gets ``rows / workers`` rows per epoch, cuts them into batches of
``per_device_batch_size`` and takes an optimizer step every ``gradient_accumulation_steps``
batches (the last step of an epoch may use fewer).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from rerank_ray.config import Config
from rerank_ray.config.checks import worker_counts


def rows_multiple(config: Config) -> int:
    """What the datasets are padded to a multiple of: every worker count the run may have divides
    it, so each splits the rows evenly (``scaling.num_workers`` when it is fixed)."""
    return math.lcm(*worker_counts(config.scaling))


@dataclass
class EvalPlan:
    """One evaluation of the run (:mod:`rerank_ray.config.evalsets`) as the workers score it."""

    dataset: str
    """Its Ray dataset (``get_dataset_shard(dataset)``)."""
    name: str
    """Its name: the prefix of its metrics."""
    rows: int
    """Real eval pairs."""
    rows_padded: int
    """Eval rows including weight-0 filler rows (a multiple of the number of workers)."""
    retrieval: dict | None = None
    """Retrieve-then-rerank: :class:`rerank_ray.data.beir.Retrieval` as a dict (the judged
    positives of the queries, the retriever's own metrics); None: judged candidates."""


@dataclass
class MixPlan:
    """One training set of a mixture (:mod:`rerank_ray.config.trainsets`) as the workers train it."""

    dataset: str
    """Its Ray dataset (``get_dataset_shard(dataset)``; its rest after a restore: ``<dataset>_rest``)."""
    name: str
    rows: int
    """Real rows (pairs, or queries of a grouped shape)."""
    rows_padded: int
    shape: str
    """Its shape (:mod:`rerank_ray.data.shapes`)."""
    first_file: int = 0
    """The index of its first file in the row keys (the mixture's files are numbered one after the other)."""
    files: int = 0
    batches: int = 0
    """Batches per worker per epoch."""
    steps: int = 0
    """Optimizer steps per epoch it has (``batches`` / accumulation, rounded up)."""
    used_steps: int = 0
    """The steps an epoch takes from it (all of them, or with ``round_robin`` the smallest set's)."""
    used_batches: int = 0
    """The batches those steps take."""


@dataclass
class TrainPlan:
    train_rows: int
    """Real training pairs."""
    train_rows_padded: int
    """Training rows including weight-0 filler rows (a multiple of the number of workers)."""
    rows_per_worker: int
    batches_per_epoch: int
    """Batches per worker per epoch."""
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    evals: list[EvalPlan]
    """The run's evaluations, in the config's order (none: no evaluation)."""
    max_length: int
    headline_metric: str
    eval_every: int
    """Optimizer steps between evaluations (and checkpoints)."""
    audit_dir: str | None = None
    """Folder for the per-rank audit files (``run.audit``)."""
    train_files_digest: str = ""
    """Identifies the training file list (row keys index into it; see :mod:`rerank_ray.data.position`)."""
    train_shape: str = "pairs"
    """The training set's shape (:mod:`rerank_ray.data.shapes`): its rows are pairs, or queries."""
    rows_multiple: int = 1
    """The row counts are padded to a multiple of this: every worker count the run may train on
    divides it (``scaling.num_workers``, or an elastic range's least common multiple)."""
    mixture: list[MixPlan] = field(default_factory=list)
    """A mixture's training sets (empty: a single training set, ``train``)."""
    sampling: str = "proportional"
    """A mixture's ``data.sampling``."""

    @classmethod
    def build(
        cls,
        config: Config,
        train_rows: int,
        train_rows_padded: int,
        evals: list[EvalPlan],
        max_length: int,
        audit_dir: str | None = None,
        train_files_digest: str = "",
        train_shape: str = "pairs",
        mixture: list[MixPlan] | None = None,
    ) -> TrainPlan:
        workers = config.scaling.num_workers
        rows_per_worker = train_rows_padded // workers
        batches = math.ceil(rows_per_worker / config.train.per_device_batch_size)
        steps_per_epoch = math.ceil(batches / config.train.gradient_accumulation_steps)
        if mixture:
            batches, steps_per_epoch = plan_mixture(mixture, config)
        total_steps = steps_per_epoch * config.train.epochs
        eval_every = config.eval.steps if config.eval.steps > 0 else steps_per_epoch
        return cls(
            train_rows=train_rows,
            train_rows_padded=train_rows_padded,
            rows_per_worker=rows_per_worker,
            batches_per_epoch=batches,
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            warmup_steps=math.ceil(config.train.warmup_ratio * total_steps),
            evals=evals,
            max_length=max_length,
            headline_metric=config.headline_metric,
            eval_every=eval_every,
            audit_dir=audit_dir,
            train_files_digest=train_files_digest,
            train_shape=train_shape,
            rows_multiple=rows_multiple(config),
            mixture=list(mixture or []),
            sampling=config.data.sampling,
        )

    @property
    def unit(self) -> str:
        """What a training row is, for the progress line and the card: pairs, queries (a grouped
        shape) or rows (a mixture's, of either)."""
        return {"pairs": "pairs", "mixture": "rows"}.get(self.train_shape, "queries")

    @property
    def eval_rows(self) -> int:
        """Real eval pairs of every evaluation (0: the run does not evaluate)."""
        return sum(e.rows for e in self.evals)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> TrainPlan:
        """The plan a worker gets as a plain dict (:meth:`to_dict`), rebuilt."""
        return cls(
            **{
                **raw,
                "evals": [EvalPlan(**e) for e in raw["evals"]],
                "mixture": [MixPlan(**m) for m in raw.get("mixture", [])],
            }
        )

    def layout(self, config: Config, world_size: int) -> WorkerLayout:
        """How ``world_size`` workers train this plan: each rank's micro-batch and accumulation, so
        that an optimizer step takes the planned global batch (``per_device_batch_size`` x
        ``gradient_accumulation_steps`` x ``scaling.num_workers``) and an epoch the planned steps.
        On fewer workers than planned (an elastic run) the accumulation grows when it can, else the
        micro-batch (:func:`rerank_ray.config.checks.check_elastic` made sure one of them can)."""
        batch, accumulation = config.train.per_device_batch_size, config.train.gradient_accumulation_steps
        planned = config.scaling.num_workers
        if self.mixture:  # a fixed number of workers (config.checks.check_mixture): the plan's own
            return WorkerLayout(
                world_size, batch, accumulation, self.batches_per_epoch, self.train_rows_padded // world_size
            )
        if world_size != planned:
            per_rank = batch * accumulation * planned // world_size  # rows a rank takes per step
            if (accumulation * planned) % world_size == 0:
                accumulation = accumulation * planned // world_size
            elif per_rank % accumulation == 0:
                batch = per_rank // accumulation
            else:
                batch, accumulation = per_rank, 1
        rows = self.train_rows_padded // world_size
        batches = math.ceil(rows / batch)
        if math.ceil(batches / accumulation) != self.steps_per_epoch or self.train_rows_padded % world_size:
            raise RuntimeError(
                f"{world_size} workers cannot train the plan of {self.steps_per_epoch} steps per epoch over "
                f"{self.train_rows_padded} rows: the rows are not padded for this many workers"
            )
        return WorkerLayout(world_size, batch, accumulation, batches, rows)


def plan_mixture(mixture: list[MixPlan], config: Config) -> tuple[int, int]:
    """Fill in each training set's batches and steps per epoch; (batches, steps) of an epoch.

    ``proportional`` takes every step of every set; ``round_robin`` takes as many steps of each set
    as the smallest has (sentence-transformers' RoundRobinBatchSampler stops when the smallest
    dataset runs out)."""
    workers = config.scaling.num_workers
    batch, accumulation = config.train.per_device_batch_size, config.train.gradient_accumulation_steps
    for part in mixture:
        part.batches = math.ceil(part.rows_padded // workers / batch)
        part.steps = math.ceil(part.batches / accumulation)
    fewest = min(part.steps for part in mixture)
    for part in mixture:
        part.used_steps = part.steps if config.data.sampling == "proportional" else fewest
        part.used_batches = min(part.batches, part.used_steps * accumulation)
    return sum(p.used_batches for p in mixture), sum(p.used_steps for p in mixture)


@dataclass(frozen=True)
class WorkerLayout:
    """What one worker does per epoch with the world size it found (:meth:`TrainPlan.layout`)."""

    world_size: int
    batch_size: int
    """Rows per micro-batch on this worker."""
    accumulation: int
    """Micro-batches per optimizer step."""
    batches_per_epoch: int
    rows_per_worker: int

    def describe(self, config: Config) -> str:
        planned = config.scaling.num_workers
        return (
            f"{self.world_size} worker(s) of {planned} planned: a batch of {self.batch_size} x {self.accumulation} "
            f"accumulated per worker (the global batch of {self.batch_size * self.accumulation * self.world_size} "
            "pairs as planned)"
        )
