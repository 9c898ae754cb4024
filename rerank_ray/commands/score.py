"""``rerank-ray score``: a teacher cross-encoder scores every row of pair, tuple or list files
(the job is :mod:`rerank_ray.inference.score`)."""

from __future__ import annotations

import argparse
from typing import Any

from rerank_ray.commands.options import add_flags, add_verbose, given
from rerank_ray.inference.jobs import summary_path
from rerank_ray.inference.score import ScoreRequest, score
from rerank_ray.redaction import redact
from rerank_ray.training.progress import quiet_libraries


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "score",
        help="a teacher cross-encoder scores every row of pair, tuple or list files (Ray Data), for distillation",
    )
    add_flags(parser, ScoreRequest)
    add_verbose(parser)


def run(args: argparse.Namespace) -> int:
    quiet_libraries()
    summary = score(ScoreRequest(**given(args, ScoreRequest)))
    stats = summary["score"] or {}
    print(
        f"[rerank-ray] scored {summary['rows']} rows ({summary['pairs']} pairs) in {summary['seconds']:.0f} s; "
        f"scores {stats.get('min', 0):.4f} .. {stats.get('max', 0):.4f}, mean {stats.get('mean', 0):.4f}"
    )
    print(f"[rerank-ray] written to {redact(summary['output'])} (summary: {redact(summary_path(summary['output']))})")
    return 0
