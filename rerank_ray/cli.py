"""``rerank-ray``: the command line.

    rerank-ray train --config jobs/configs/quickstart.yaml [section.key=value ...]
    rerank-ray tune --config jobs/configs/stsb.yaml [tune.num_samples=16 ...] [--resume]
    rerank-ray config --config X.yaml [overrides]     # print the resolved config and exit
    rerank-ray fields                                 # every config key with its docstring

Exit codes: 0 success, 2 a config or data error or an out-of-memory step (the message names the
key, file, row or column, or the batch size, and the fix), 1 anything else. What it prints passes
through :func:`rerank_ray.redaction.redact` (no credentials).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

from rerank_ray.config import field_docs, load_config
from rerank_ray.redaction import redact

EXIT_USAGE = 2


def _input_error(err: BaseException) -> BaseException | None:
    """The ConfigError / DataError / OutOfMemory behind ``err``, however deep Ray wrapped it."""
    from rerank_ray.faults import input_error

    return input_error(err)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="overrides, applied in order")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rerank-ray", description="Fine-tune cross-encoders on Ray.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="fine-tune a cross-encoder and export it")
    _add_config_args(train)
    train.add_argument("--resume", action="store_true", help="continue run.name from its last checkpoint")
    tune = commands.add_parser("tune", help="search hyperparameters with Ray Tune and export the best model")
    _add_config_args(tune)
    tune.add_argument("--resume", action="store_true", help="continue the search run.name where it stopped")
    show = commands.add_parser("config", help="print the resolved config (YAML + overrides) and exit")
    _add_config_args(show)
    commands.add_parser("fields", help="list every config key with its type and meaning")
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from rerank_ray.driver import train

    overrides = list(args.overrides) + (["run.resume=true"] if args.resume else [])
    config = load_config(args.config, overrides)
    outcome = train(config)
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


def cmd_tune(args: argparse.Namespace) -> int:
    from rerank_ray.tune import run_search

    overrides = list(args.overrides) + (["run.resume=true"] if args.resume else [])
    outcome = run_search(load_config(args.config, overrides))
    if outcome.interrupted:
        return 130
    return 0 if outcome.best is not None else 1


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    config = load_config(args.config, args.overrides)
    print(redact(yaml.safe_dump(json.loads(json.dumps(config.to_dict())), sort_keys=False)), end="")
    return 0


def cmd_fields(_: argparse.Namespace) -> int:
    for key, type_name, doc in field_docs():
        print(f"{key} ({type_name})\n    {doc}")
    return 0


COMMANDS = {"train": cmd_train, "tune": cmd_tune, "config": cmd_config, "fields": cmd_fields}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("[rerank-ray] interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the top level turns errors into exit codes
        cause = _input_error(err)
        if cause is not None:
            print(redact(f"error: {cause}"), file=sys.stderr)
            return EXIT_USAGE
        print(redact(traceback.format_exc()), file=sys.stderr, end="")
        print(redact(f"error: {err}"), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
