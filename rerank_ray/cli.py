"""``rerank-ray``: the command line. It parses; each command lives in :mod:`rerank_ray.commands`.

    rerank-ray train --config jobs/configs/quickstart.yaml [section.key=value ...]
    rerank-ray tune --config jobs/configs/stsb.yaml [tune.num_samples=16 ...] [--resume]
    rerank-ray config --config X.yaml [overrides]     # print the resolved config and exit
    rerank-ray fields                                 # every config key with its docstring
    rerank-ray eval --model DIR --data FILES --kind KIND [--columns sentence_0=q ...]
    rerank-ray rank --model DIR --query "..." --docs FILE [--top-k N]
    rerank-ray score --model TEACHER --data FILES --output DIR   # teacher scores, with Ray Data
    rerank-ray mine --pairs FILES --embedder MODEL --output DIR [--corpus FILES] [--config X.yaml]

Exit codes: 0 success, 2 a config or data error or an out-of-memory step (the message names the
key, file, row or column, or the batch size, and the fix), 143 a run stopped by SIGTERM after its
checkpoint (continue with --resume), 1 anything else. What it prints passes
through :func:`rerank_ray.redaction.redact` (no credentials).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable

from rerank_ray import console
from rerank_ray.commands import evaluate, mine, rank, score
from rerank_ray.commands import train as run_commands
from rerank_ray.commands.train import field_reference
from rerank_ray.errors import Preempted, clear_error, clear_message
from rerank_ray.redaction import redact
from rerank_ray.training import preemption

EXIT_USAGE = 2

__all__ = ["COMMANDS", "build_parser", "field_reference", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rerank-ray", description="Fine-tune cross-encoders on Ray.")
    commands = parser.add_subparsers(dest="command", required=True)
    run_commands.add_parsers(commands)
    for command in (evaluate, rank, score, mine):
        command.add_parser(commands)
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": run_commands.run_train,
    "tune": run_commands.run_tune,
    "config": run_commands.run_config,
    "fields": run_commands.run_fields,
    "eval": evaluate.run,
    "rank": rank.run,
    "score": score.run,
    "mine": mine.run,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console.set_verbose(getattr(args, "verbose", False))
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("[rerank-ray] interrupted", file=sys.stderr)
        return 130
    except Preempted as stopped:
        print(redact(f"[rerank-ray] {stopped}"), file=sys.stderr)
        return preemption.EXIT_CODE
    except Exception as err:  # noqa: BLE001 - the top level turns errors into exit codes
        cause = clear_error(err)
        if cause is not None:
            print(redact(f"error: {clear_message(cause)}"), file=sys.stderr)
            return EXIT_USAGE
        print(redact(traceback.format_exc()), file=sys.stderr, end="")
        print(redact(f"error: {err}"), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
