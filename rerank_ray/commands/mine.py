"""``rerank-ray mine``: hard negatives for (query, positive) pairs (the job is
:mod:`rerank_ray.mining.mine`). One flag per ``MineConfig`` key, named after
``mine_hard_negatives``' parameters; a flag given wins over the ``mine:`` section of --config."""

from __future__ import annotations

import argparse
from typing import Any

from rerank_ray.commands.options import add_flags, add_verbose, given
from rerank_ray.inference.jobs import summary_path
from rerank_ray.mining.config import MineConfig, load_mine_config
from rerank_ray.mining.mine import describe, mine
from rerank_ray.redaction import redact
from rerank_ray.training.progress import quiet_libraries


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "mine", help="hard negatives for (query, positive) pairs, mined with Ray Data (as mine_hard_negatives)"
    )
    parser.add_argument("--config", "-c", help="a YAML file with a mine: section")
    add_flags(parser, MineConfig, aliases={"output_format": ["--format"]}, all_optional=True)
    add_verbose(parser)


def run(args: argparse.Namespace) -> int:
    quiet_libraries()
    summary = mine(load_mine_config(args.config, given(args, MineConfig)))
    for line in describe(summary):
        print(f"[rerank-ray] {line}")
    print(f"[rerank-ray] written to {redact(summary['output'])} (summary: {redact(summary_path(summary['output']))})")
    return 0
