"""``rerank-ray train``, ``tune``, ``config`` and ``fields``: the commands that take a run's config
(a YAML file plus ``section.key=value`` overrides)."""

from __future__ import annotations

import argparse
import json
from typing import Any

import yaml

from rerank_ray.commands.options import add_config_args
from rerank_ray.config import Config, field_docs, load_config
from rerank_ray.mining.config import MineConfig
from rerank_ray.redaction import redact
from rerank_ray.run.driver import train
from rerank_ray.tune.search import run_search


def add_parsers(commands: Any) -> None:
    parser = commands.add_parser("train", help="fine-tune a cross-encoder and export it")
    add_config_args(parser)
    parser.add_argument("--resume", action="store_true", help="continue run.name from its last checkpoint")
    parser = commands.add_parser("tune", help="search hyperparameters with Ray Tune and export the best model")
    add_config_args(parser)
    parser.add_argument("--resume", action="store_true", help="continue the search run.name where it stopped")
    add_config_args(commands.add_parser("config", help="print the resolved config (YAML + overrides) and exit"))
    commands.add_parser("fields", help="list every config key with its type and meaning")


def run_train(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + (["run.resume=true"] if args.resume else [])
    outcome = train(load_config(args.config, overrides))
    summary = outcome.metrics
    headline = summary["headline_metric"]
    if headline:
        before = (summary.get("before_training") or {}).get(headline)
        after = summary["final"].get(headline)
        before_text = f"{before:.4f} before training -> " if before is not None else ""
        print(
            f"[rerank-ray] {headline}: {before_text}{after:.4f} (step {summary['selected_step']}, {summary['selected_by']})"
        )
    print(f"[rerank-ray] model exported to {redact(outcome.output_dir)}")
    return 0


def run_tune(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + (["run.resume=true"] if args.resume else [])
    outcome = run_search(load_config(args.config, overrides))
    if outcome.interrupted:
        return 130
    return 0 if outcome.best is not None else 1


def run_config(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    print(redact(yaml.safe_dump(json.loads(json.dumps(config.to_dict())), sort_keys=False)), end="")
    return 0


def field_reference() -> list[tuple[str, str, str]]:
    """(dotted key, type, docstring) of every config key: a run's sections, then ``mine:``. What
    ``rerank-ray fields`` prints and the docs site's configuration reference is built from."""
    return field_docs(Config) + field_docs(MineConfig, "mine.")


def run_fields(_: argparse.Namespace) -> int:
    for key, type_name, doc in field_reference():
        print(f"{key} ({type_name})\n    {doc}")
    return 0
