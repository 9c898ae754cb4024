"""``rerank-ray``: the command line.

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
import json
import sys
import traceback
from typing import Any

import yaml

from rerank_ray import console
from rerank_ray.commands import EvalRequest, parse_columns, rank_documents, read_documents, run_eval
from rerank_ray.config import HEADLINE, MineConfig, field_docs, load_config, load_mine_config
from rerank_ray.errors import Preempted, clear_error, clear_message
from rerank_ray.redaction import redact
from rerank_ray.run.driver import train
from rerank_ray.run.mine import describe, mine
from rerank_ray.run.score import ScoreRequest, score, summary_path
from rerank_ray.training import preemption
from rerank_ray.training.progress import quiet_libraries
from rerank_ray.tune.search import run_search

EXIT_USAGE = 2


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="overrides, applied in order")
    _add_verbose(parser)


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help=f"print everything Ray and the libraries write too (as {console.VERBOSE_ENV}=1)",
    )


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
    _add_eval_parser(commands)
    _add_rank_parser(commands)
    _add_score_parser(commands)
    _add_mine_parser(commands)
    return parser


def _add_mine_parser(commands: Any) -> None:
    """One flag per ``MineConfig`` key (``range_min`` -> ``--range-min``), named after
    ``mine_hard_negatives``' parameters; a flag given wins over the ``mine:`` section of --config."""
    import typing

    mine_parser = commands.add_parser(
        "mine", help="hard negatives for (query, positive) pairs, mined with Ray Data (as mine_hard_negatives)"
    )
    mine_parser.add_argument("--config", "-c", help="a YAML file with a mine: section")
    docs = {key.removeprefix("mine."): doc for key, _, doc in field_docs(MineConfig, "mine.")}
    hints = typing.get_type_hints(MineConfig)
    for name, hint in hints.items():
        flags = [f"--{name.replace('_', '-')}"] + (["--format"] if name == "output_format" else [])
        options: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": docs.get(name, "")}
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if hint is bool:
            options["action"] = "store_true"
        elif typing.get_origin(hint) is list or typing.get_origin(hint) is dict:
            options["nargs"] = "+"
            options["metavar"] = "CANONICAL=COLUMN" if typing.get_origin(hint) is dict else "PATH"
        elif typing.get_origin(hint) is typing.Literal:
            options["choices"] = list(typing.get_args(hint))
        elif args and args[0] in (int, float):
            options["type"] = args[0]
        elif hint in (int, float):
            options["type"] = hint
        mine_parser.add_argument(*flags, **options)
    _add_verbose(mine_parser)


def _add_score_parser(commands: Any) -> None:
    score = commands.add_parser(
        "score",
        help="a teacher cross-encoder scores every row of pair, tuple or list files (Ray Data), for distillation",
    )
    score.add_argument("--model", required=True, help="the teacher: a hub id or a saved CrossEncoder folder")
    score.add_argument("--data", nargs="+", required=True, help="files, folders or globs (parquet, jsonl, csv, tsv)")
    score.add_argument("--output", required=True, help="a folder (local or URI) for the scored rows, as Parquet parts")
    score.add_argument(
        "--columns", nargs="*", metavar="CANONICAL=COLUMN", help="as data.columns, e.g. query=question positive=answer"
    )
    score.add_argument("--batch-size", type=int, default=64, help="pairs per forward pass of the teacher")
    score.add_argument("--concurrency", type=int, help="actors scoring at once (default: one per GPU, else one)")
    score.add_argument("--cpus-per-actor", type=float, default=1.0)
    score.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"], help="fp16/bf16: GPU actors")
    score.add_argument(
        "--activation",
        default="model",
        choices=["model", "identity"],
        help="model: the teacher's own activation, as CrossEncoder.predict applies it; identity: raw logits",
    )
    score.add_argument("--max-length", type=int, help="longest pair in tokens (default: the teacher's)")
    score.add_argument("--trust-remote-code", action="store_true", help="run modelling code shipped with the model")
    _add_verbose(score)


def _add_eval_parser(commands: Any) -> None:
    evaluate = commands.add_parser(
        "eval", help="metrics of a saved model on pair files or a BEIR folder (in this process, no Ray)"
    )
    evaluate.add_argument("--model", required=True, help="a saved CrossEncoder folder (e.g. runs/<run>/model)")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", nargs="+", help="pair files, folders or globs (parquet, jsonl, csv, tsv)")
    source.add_argument("--beir", help="reranking: a BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    evaluate.add_argument("--beir-split", default="test", help="qrels/<split>.tsv of --beir (default: test)")
    evaluate.add_argument("--kind", required=True, choices=list(HEADLINE), help="evaluator kind, as eval.kind")
    evaluate.add_argument(
        "--columns", nargs="*", metavar="CANONICAL=COLUMN", help="as data.columns, e.g. sentence_0=query label=score"
    )
    evaluate.add_argument("--query-id-column", help="reranking: the column naming each pair's query")
    evaluate.add_argument("--label-scale", type=float, default=1.0, help="as data.label_scale")
    evaluate.add_argument("--at-k", type=int, default=10, help="reranking: k of MRR@k and nDCG@k")
    evaluate.add_argument("--name", default="eval", help="metric prefix (default: eval)")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--output", help="where to write the metrics JSON (default: <model>/eval-<name>.json)")
    evaluate.add_argument("--trust-remote-code", action="store_true", help="run modelling code shipped with the model")
    first_stage = evaluate.add_mutually_exclusive_group()
    first_stage.add_argument(
        "--retriever", help="with --beir: rerank this bi-encoder's top-k of the corpus (as eval.retriever; starts Ray)"
    )
    first_stage.add_argument("--run-file", help="with --beir: rerank a TREC run file's top-k (as eval.run_file)")
    evaluate.add_argument("--top-k", type=int, default=100, help="candidates per query of --retriever / --run-file")
    evaluate.add_argument(
        "--always-rerank-positives",
        action="store_true",
        help="also rerank the judged positives the retriever missed (as eval.always_rerank_positives)",
    )


def _add_rank_parser(commands: Any) -> None:
    rank = commands.add_parser("rank", help="rank documents for a query with a saved model")
    rank.add_argument("--model", required=True, help="a saved CrossEncoder folder")
    rank.add_argument("--query", required=True)
    rank.add_argument("--docs", required=True, help="a text file (one document per line) or JSONL with 'text'")
    rank.add_argument("--top-k", type=int, help="show only the best K")
    rank.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rank.add_argument("--trust-remote-code", action="store_true", help="run modelling code shipped with the model")


def cmd_train(args: argparse.Namespace) -> int:
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
    overrides = list(args.overrides) + (["run.resume=true"] if args.resume else [])
    outcome = run_search(load_config(args.config, overrides))
    if outcome.interrupted:
        return 130
    return 0 if outcome.best is not None else 1


def cmd_config(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    print(redact(yaml.safe_dump(json.loads(json.dumps(config.to_dict())), sort_keys=False)), end="")
    return 0


def field_reference() -> list[tuple[str, str, str]]:
    """(dotted key, type, docstring) of every config key: a run's sections, then ``mine:``. What
    ``rerank-ray fields`` prints and the docs site's configuration reference is built from."""
    return field_docs() + field_docs(MineConfig, "mine.")


def cmd_fields(_: argparse.Namespace) -> int:
    for key, type_name, doc in field_reference():
        print(f"{key} ({type_name})\n    {doc}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    quiet_libraries()
    request = EvalRequest(
        model=args.model,
        kind=args.kind,
        data=args.data or [],
        beir=args.beir,
        beir_split=args.beir_split,
        columns=parse_columns(args.columns),
        query_id_column=args.query_id_column,
        label_scale=args.label_scale,
        at_k=args.at_k,
        name=args.name,
        batch_size=args.batch_size,
        output=args.output,
        trust_remote_code=args.trust_remote_code,
        retriever=args.retriever,
        run_file=args.run_file,
        top_k=args.top_k,
        always_rerank_positives=args.always_rerank_positives,
    )
    result, output = run_eval(request)
    headline = result["headline_metric"]
    print(f"[rerank-ray] {result['pairs']} pairs, eval.kind {result['kind']}")
    for key, value in result["metrics"].items():
        print(f"{'*' if key == headline else ' '} {key}: {value:.4f}")
    print(f"[rerank-ray] metrics written to {output}")
    return 0


def cmd_rank(args: argparse.Namespace) -> int:
    quiet_libraries()
    ranked = rank_documents(
        args.model, args.query, read_documents(args.docs), top_k=args.top_k, trust_remote_code=args.trust_remote_code
    )
    if args.json:
        print(json.dumps(ranked, indent=2, ensure_ascii=False))
        return 0
    for row in ranked:
        text = row["text"] if len(row["text"]) <= 100 else row["text"][:97] + "..."
        print(f"{row['rank']:>4}  {row['score']:.4f}  {text}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    quiet_libraries()
    request = ScoreRequest(
        model=args.model,
        data=args.data,
        output=args.output,
        columns=parse_columns(args.columns),
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        cpus_per_actor=args.cpus_per_actor,
        precision=args.precision,
        activation=args.activation,
        max_length=args.max_length,
        trust_remote_code=args.trust_remote_code,
    )
    summary = score(request)
    stats = summary["score"] or {}
    print(
        f"[rerank-ray] scored {summary['rows']} rows ({summary['pairs']} pairs) in {summary['seconds']:.0f} s; "
        f"scores {stats.get('min', 0):.4f} .. {stats.get('max', 0):.4f}, mean {stats.get('mean', 0):.4f}"
    )
    print(f"[rerank-ray] written to {redact(summary['output'])} (summary: {redact(summary_path(summary['output']))})")
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    quiet_libraries()
    values = {k: v for k, v in vars(args).items() if k not in ("command", "config", "verbose")}
    if "columns" in values:
        values["columns"] = parse_columns(values["columns"])
    summary = mine(load_mine_config(args.config, values))
    for line in describe(summary):
        print(f"[rerank-ray] {line}")
    print(f"[rerank-ray] written to {redact(summary['output'])} (summary: {redact(summary_path(summary['output']))})")
    return 0


COMMANDS = {
    "train": cmd_train,
    "tune": cmd_tune,
    "config": cmd_config,
    "fields": cmd_fields,
    "eval": cmd_eval,
    "rank": cmd_rank,
    "score": cmd_score,
    "mine": cmd_mine,
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
