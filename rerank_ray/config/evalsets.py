"""The evaluations of a run: the entries of ``eval.sets``, or the single evaluation the ``eval``
section describes, each resolved into the ``eval`` section and eval sources it runs with.

An entry is a plain mapping in the config (so a worker rebuilds it from the dict it gets) and is
built here into a full :class:`EvalConfig` with the loader's type checks: the per-evaluation keys
it leaves out take the ``eval`` section's values, the run-wide ones (when to evaluate, early
stopping, the batch size) are the section's alone. Each evaluation is then checked with the same
rules as a single one, its messages prefixed with the entry's key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from typing import Any

from rerank_ray.config.loading import build, coerce_value
from rerank_ray.config.sections import DataConfig, DataSource, EvalConfig, headline_metric_key
from rerank_ray.errors import ConfigError

#: Keys of ``eval`` an entry of ``eval.sets`` may set for itself and otherwise takes from the section.
INHERITED_KEYS = (
    "kind",
    "at_k",
    "query_id_column",
    "beir_split",
    "top_k",
    "always_rerank_positives",
    "retriever_batch_size",
    "drop_unrankable",
)
#: Keys only an entry gives: its name and where its data is.
OWN_KEYS = ("name", "data", "beir", "retriever", "run_file", "nanobeir", "dataset_id", "cache_dir")
#: Keys of ``eval`` that are the run's, whatever the evaluations: an entry may not set them.
#: NanoBEIR's dataset names and their split names (``Nano<readable>``), as sentence-transformers'
#: CrossEncoderNanoBEIREvaluator names them (tests/test_nanobeir.py checks that the two agree;
#: the library is not imported here: the command line reads the config without it).
NANOBEIR_NAMES = {
    "climatefever": "ClimateFEVER",
    "dbpedia": "DBPedia",
    "fever": "FEVER",
    "fiqa2018": "FiQA2018",
    "hotpotqa": "HotpotQA",
    "msmarco": "MSMARCO",
    "nfcorpus": "NFCorpus",
    "nq": "NQ",
    "quoraretrieval": "QuoraRetrieval",
    "scidocs": "SCIDOCS",
    "arguana": "ArguAna",
    "scifact": "SciFact",
    "touche2020": "Touche2020",
}
#: The library's default collection: every dataset but the two argument-retrieval ones.
NANOBEIR_DEFAULT = tuple(name for name in NANOBEIR_NAMES if name not in ("arguana", "touche2020"))
NANOBEIR_DATASET_ID = "sentence-transformers/NanoBEIR-en"
#: Where NanoBEIR datasets are written once (default ``~/.cache/rerank-ray``).
CACHE_ENV = "RERANK_RAY_CACHE"
RUN_WIDE_KEYS = (
    "steps",
    "before_training",
    "batch_size",
    "early_stopping_patience",
    "early_stopping_min_delta",
    "sets",
    "metric_for_best",
)


@dataclass(frozen=True)
class EvalSet:
    """One evaluation of a run."""

    key: str
    """Where the config describes it (``eval`` or ``eval.sets[1]``), for messages."""
    dataset: str
    """The name of its Ray dataset (``eval``, ``eval_1``, ...)."""
    evaluation: EvalConfig
    """Its ``eval`` section: its own keys, the run-wide ones of the run's section."""
    sources: list[DataSource]
    """Its pair sources (``data.eval`` or the entry's ``data``); empty for a BEIR folder."""

    nanobeir: tuple[str, str, str] | None = None
    """A NanoBEIR dataset: (dataset id, dataset name, the folder it is written to before the run)."""
    mean_of: str | None = None
    """The prefix of the means this set's metrics enter (``NanoBEIR_R100_mean``), as the library's
    NanoBEIR evaluator reports them; None: none."""

    @property
    def name(self) -> str:
        return self.evaluation.name

    @property
    def headline(self) -> str:
        return headline_metric_key(self.evaluation.kind, self.evaluation.name, self.evaluation.at_k)

    @property
    def group_headline(self) -> str:
        """The headline of the evaluation as the user named it: a NanoBEIR entry's is the mean's."""
        if self.mean_of:
            return headline_metric_key(self.evaluation.kind, self.mean_of, self.evaluation.at_k)
        return self.headline


def nanobeir_split(name: str) -> str:
    """The split that holds NanoBEIR dataset ``name`` in every subset: ``msmarco`` -> ``NanoMSMARCO``."""
    readable = NANOBEIR_NAMES.get(name.lower())
    if readable is None:
        raise ConfigError(f"{name!r} is not a NanoBEIR dataset: choose from {', '.join(NANOBEIR_NAMES)}")
    return f"Nano{readable}"


def nanobeir_cache() -> str:
    """This process's cache root: ``RERANK_RAY_CACHE``, else ``~/.cache/rerank-ray``."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "rerank-ray")


def nanobeir_folder(dataset_id: str, name: str, cache_dir: str | None = None) -> str:
    """Where dataset ``name`` of ``dataset_id`` is written as a BEIR folder: a function of the two
    (and the cache root), so the driver, a resumed run and a search's trials find the same one."""
    key = hashlib.sha256(dataset_id.encode()).hexdigest()[:12]
    return os.path.join(cache_dir or nanobeir_cache(), "nanobeir", key, nanobeir_split(name))


def nanobeir_run_file(folder: str) -> str:
    """The BM25 ranking of a written NanoBEIR dataset, as a TREC run."""
    return os.path.join(folder, "bm25.trec")


def dataset_name(index: int) -> str:
    """The Ray dataset of the ``index``-th evaluation (the first keeps the name ``eval``)."""
    return "eval" if index == 0 else f"eval_{index}"


def eval_sets(evaluation: EvalConfig, data: DataConfig) -> list[EvalSet]:
    """The run's evaluations, in the config's order; none without eval data."""
    if not evaluation.sets:
        if not (data.eval or evaluation.beir):
            return []
        return [EvalSet("eval", dataset_name(0), evaluation, list(data.eval))]
    for key in ("beir", "retriever", "run_file"):
        if getattr(evaluation, key) is not None:
            raise ConfigError(
                f"eval.{key} describes the single evaluation of a run without eval.sets: with eval.sets, give "
                f"each set its own {key}"
            )
    sets: list[EvalSet] = []
    for index, entry in enumerate(evaluation.sets):
        for eval_set in _entry(index, entry, evaluation, data):
            sets.append(dataclasses.replace(eval_set, dataset=dataset_name(len(sets))))
    if data.eval and not any(s.sources == list(data.eval) and s.evaluation.beir is None for s in sets):
        raise ConfigError(
            "data.eval is read by no entry of eval.sets (each gives its own data, beir or nanobeir): add an "
            "entry without data to evaluate it ({name: dev}), or remove data.eval"
        )
    return sets


def _entry(index: int, entry: Any, evaluation: EvalConfig, data: DataConfig) -> list[EvalSet]:
    key = f"eval.sets[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{key} must be a mapping ({{name: dev, kind: binary, data: dev.tsv}}), got {entry!r}")
    run_wide = sorted(set(entry) & set(RUN_WIDE_KEYS))
    if run_wide:
        raise ConfigError(
            f"{key}.{run_wide[0]} is the run's, not a set's: set eval.{run_wide[0]} once (every set is evaluated "
            "at the same steps)"
        )
    unknown = sorted(set(entry) - set(INHERITED_KEYS) - set(OWN_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown key {key}.{unknown[0]}: a set takes {', '.join(OWN_KEYS)} and any of {', '.join(INHERITED_KEYS)}"
        )
    if "nanobeir" in entry:
        return _nanobeir(key, entry, evaluation)
    for nano_key in ("dataset_id", "cache_dir"):
        if nano_key in entry:
            raise ConfigError(f"{key}.{nano_key} is where NanoBEIR is read from or written to: it goes with nanobeir")
    if not isinstance(entry.get("name"), str) or not entry["name"]:
        raise ConfigError(f"{key} needs a name (the prefix of its metrics: {{name: dev, ...}})")
    own = _own_section(key, evaluation, {k: v for k, v in entry.items() if k != "data"})
    sources: list[DataSource] = coerce_value(entry["data"], list[DataSource], f"{key}.data") if "data" in entry else []
    if own.beir is not None and sources:
        raise ConfigError(f"{key}: give it either data (pair files) or beir (a BEIR folder), not both")
    if own.beir is None and not sources:
        if not data.eval:
            raise ConfigError(
                f"{key} ({own.name}) has no data: give it data (pair files), beir (a BEIR folder), or set data.eval"
            )
        sources = list(data.eval)
    return [EvalSet(key, "", own, sources)]


def _own_section(key: str, evaluation: EvalConfig, given: dict[str, Any]) -> EvalConfig:
    """An entry's ``eval`` section: the keys it gives (type-checked as the loader checks them), the
    section's per-evaluation keys for the rest, the section's run-wide keys."""
    fields = {name: getattr(evaluation, name) for name in INHERITED_KEYS} | given
    own = build(EvalConfig, fields, prefix=f"{key}.")
    run_wide = {name: getattr(evaluation, name) for name in RUN_WIDE_KEYS if name not in ("sets", "metric_for_best")}
    return dataclasses.replace(own, **run_wide)


def _nanobeir(key: str, entry: dict[str, Any], evaluation: EvalConfig) -> list[EvalSet]:
    """A NanoBEIR entry: one reranking evaluation per dataset, on its BM25 top ``top_k`` with the
    judged positives added (``always_rerank_positives``, on unless the entry sets it), named and
    averaged as the library's CrossEncoderNanoBEIREvaluator names them."""
    for other in ("data", "beir", "retriever", "run_file", "query_id_column", "beir_split"):
        if other in entry:
            raise ConfigError(f"{key}.{other} does not go with nanobeir: NanoBEIR brings its data and BM25 candidates")
    if entry.get("kind", "reranking") != "reranking":
        raise ConfigError(f"{key}: NanoBEIR is a reranking evaluation (kind reranking), got kind {entry['kind']!r}")
    names = entry["nanobeir"]
    if names == "all":
        names = list(NANOBEIR_DEFAULT)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(
            f"{key}.nanobeir must be a list of NanoBEIR datasets ([msmarco, nfcorpus, ...]) or all "
            f"({', '.join(NANOBEIR_DEFAULT)}), got {names!r}"
        )
    given = {"kind": "reranking", "always_rerank_positives": True} | {
        k: v for k, v in entry.items() if k in INHERITED_KEYS
    }
    own = _own_section(key, evaluation, given)
    prefix = entry.get("name", "NanoBEIR")
    dataset_id = coerce_value(entry.get("dataset_id", NANOBEIR_DATASET_ID), str, f"{key}.dataset_id")
    cache_dir = coerce_value(entry.get("cache_dir"), str | None, f"{key}.cache_dir")
    sets = []
    for name in dict.fromkeys(n.lower() for n in names):
        folder = nanobeir_folder(dataset_id, name, cache_dir)
        member = dataclasses.replace(
            own,
            name=f"{nanobeir_split(name)}_R{own.top_k}",
            beir=folder,
            beir_split="test",
            run_file=nanobeir_run_file(folder),
        )
        sets.append(EvalSet(key, "", member, [], (dataset_id, name, folder), f"{prefix}_R{own.top_k}_mean"))
    return sets


def check_eval_sets(sets: list[EvalSet], evaluation: EvalConfig) -> None:
    """Names that tell the sets' metrics apart, and a ``metric_for_best`` one of them reports."""
    names = [s.name for s in sets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"eval.sets: the name {repeated[0]!r} is given twice: each set needs its own (its metrics' prefix)"
        )
    best = evaluation.metric_for_best
    if best is None:
        return
    if not sets:
        raise ConfigError(f"eval.metric_for_best ({best}) needs an evaluation: set data.eval, eval.beir or eval.sets")
    prefixes = [*names, *{s.mean_of for s in sets if s.mean_of}]
    if not any(best.startswith(f"{prefix}_") for prefix in prefixes):
        raise ConfigError(
            f"eval.metric_for_best {best!r} is not a metric of the evaluations ({', '.join(prefixes)}): give the "
            f"full name with its set's prefix, e.g. {sets[0].headline!r}"
        )


def best_metric(sets: list[EvalSet], evaluation: EvalConfig) -> str:
    """The metric that selects the best checkpoint: ``eval.metric_for_best``, else the first
    evaluation's headline (the section's own headline when there is none)."""
    if evaluation.metric_for_best:
        return evaluation.metric_for_best
    if sets:
        return sets[0].group_headline
    return headline_metric_key(evaluation.kind, evaluation.name, evaluation.at_k)
