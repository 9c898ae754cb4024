"""``rerank-ray``: the command line.

    rerank-ray train --config jobs/configs/quickstart.yaml [section.key=value ...]
    rerank-ray tune --config jobs/configs/stsb.yaml [tune.num_samples=16 ...] [--resume]
    rerank-ray config --config X.yaml [overrides]     # print the resolved config and exit
    rerank-ray fields                                 # every config key with its docstring

Exit codes: 0 success, 2 a config or data error (the message names the key, file, row or column),
1 anything else.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

from rerank_ray.config import ConfigError, field_docs, load_config

EXIT_USAGE = 2


def _input_error(err: BaseException) -> BaseException | None:
    """The ConfigError/DataError behind ``err``, however deep Ray wrapped it."""
    from rerank_ray.data import DataError

    seen = set()
    stack = [err]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, (ConfigError, DataError)):
            return current
        stack.extend([current.__cause__, current.__context__])
        # Ray Train keeps per-worker errors in a dict; Ray tasks keep the original as .cause.
        for attr in ("cause", "worker_failures", "_worker_failures"):
            inner = getattr(current, attr, None)
            if isinstance(inner, dict):
                stack.extend(v for v in inner.values() if isinstance(v, BaseException))
            elif isinstance(inner, BaseException):
                stack.append(inner)
    return None


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
    print(f"[rerank-ray] model exported to {outcome.output_dir}")
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
    print(yaml.safe_dump(json.loads(json.dumps(config.to_dict())), sort_keys=False), end="")
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
            print(f"error: {cause}", file=sys.stderr)
            return EXIT_USAGE
        traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
