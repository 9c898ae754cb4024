"""The steps of benchmarks/gpu.sh (and of benchmarks/gpu_prepare.sh) that are Python: each prints
what it measured as JSON lines on stdout (gpu.sh collects every such line into results.jsonl),
and its progress on stderr.

    python benchmarks/gpu_steps.py setup --wheels .gpu/wheels       # GPU machine: install the carried wheels
    python benchmarks/gpu_steps.py env [--dry-run]                  # versions imported, the GPU, the pins
    python benchmarks/gpu_steps.py qwen3-shape --out .gpu/qwen3-0.6b # here: config + tokenizer of the 0.6B shape
    python benchmarks/gpu_steps.py dry-inputs --out DIR             # tiny models and pairs for the dry run
    python benchmarks/gpu_steps.py pytest [--collect-only] -- ARGS  # pytest, its tally as a JSON line
    python benchmarks/gpu_steps.py large --model DIR --train FILE   # rerank-ray train: LoRA + checkpointing, DDP and FSDP
    python benchmarks/gpu_steps.py summary RESULTS.jsonl            # the final summary; exit 1 if a stage failed
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Qwen/Qwen3-Reranker-0.6B's config.json (the hub's, as benchmarks/memory_fit.py has it), with the
#: real vocabulary size: the carried tokenizer (tests/tiny_causal.py's word-level one, with the chat
#: template and the "yes"/"no" tokens) uses only its first rows, but the embedding (tied with the
#: LM head, 155.6M of the 596M parameters) has the real model's size and memory.
QWEN3_0_6B = {
    "vocab_size": 151936,
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rope_theta": 1000000,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}
#: Packages whose versions the env step reports (import name, distribution name).
PACKAGES = [
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("sentence_transformers", "sentence-transformers"),
    ("huggingface_hub", "huggingface-hub"),
    ("tokenizers", "tokenizers"),
    ("safetensors", "safetensors"),
    ("peft", "peft"),
    ("ray", "ray"),
    ("datasets", "datasets"),
    ("pyarrow", "pyarrow"),
]
#: The distributions whose requirements the setup step checks once the wheels are in.
CHECKED = ["transformers", "sentence-transformers", "huggingface-hub", "peft", "datasets", "ray"]


def emit(**figures) -> None:
    print(json.dumps(figures), flush=True)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# setup (the GPU machine): the carried wheels


def _installed(name: str):
    from importlib import metadata

    from packaging.version import Version

    try:
        return Version(metadata.version(name))
    except metadata.PackageNotFoundError:
        return None


def _top_level_dirs(name: str) -> list[str]:
    """The folders a distribution installed (for compileall)."""
    from importlib import metadata

    dist = metadata.distribution(name)
    tops = {f.parts[0] for f in dist.files or [] if len(f.parts) > 1 and not f.parts[0].endswith(".dist-info")}
    return [str(dist.locate_file(top)) for top in sorted(tops) if top != ".." and Path(dist.locate_file(top)).is_dir()]


def unmet_requirements(names: list[str]) -> list[str]:
    """The requirements (no extras; markers evaluated) of ``names`` that the installed versions miss."""
    from importlib import metadata

    from packaging.requirements import Requirement

    unmet = []
    for name in names:
        if _installed(name) is None:
            continue
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            have = _installed(requirement.name)
            if have is None or not requirement.specifier.contains(have, prereleases=True):
                unmet.append(f"{name} needs {requirement}: {'missing' if have is None else have}")
    return unmet


def setup(args: argparse.Namespace) -> int:
    """Install each carried wheel whose distribution is missing here or older (pip, no index, no
    dependencies: the folder holds what the pins need beyond the image), compile it, and check
    the requirements of what the project imports."""
    from packaging.utils import parse_wheel_filename

    chosen, kept = [], []
    for wheel in sorted(Path(args.wheels).glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        have = _installed(name)
        if have is None or have < version:
            chosen.append((str(name), str(have) if have else None, str(version), wheel))
        else:
            kept.append(f"{name} {have} (carried {version})")
    if chosen:
        command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        subprocess.run([*command, "--no-cache-dir", "--upgrade", *[str(c[3]) for c in chosen]], check=True)
        folders = [folder for c in chosen for folder in _top_level_dirs(c[0])]
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", *folders], stdout=subprocess.DEVNULL)
    installed = [f"{name} {old or '-'} -> {new}" for name, old, new, _ in chosen]
    for line in installed:
        log(f"installed {line}")
    unmet = unmet_requirements(CHECKED)
    for line in unmet:
        log(f"UNMET: {line}")
    emit(figure="setup", installed=installed, kept=kept, unmet=unmet)
    return 0


# ---------------------------------------------------------------------------------------------
# env: what is imported, and the project's pins


def project_pins() -> list[str]:
    """The project's requirements (pyproject.toml's dependencies and the lora extra)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["lora"]]


def env(args: argparse.Namespace) -> int:
    import importlib
    import platform

    from packaging.requirements import Requirement
    from packaging.version import Version

    versions, files = {}, {}
    for module_name, _ in PACKAGES:
        try:
            module = importlib.import_module(module_name)
        except Exception as error:  # noqa: BLE001 - a broken install is what this reports
            versions[module_name] = f"not importable: {type(error).__name__}: {str(error)[:200]}"
            continue
        versions[module_name] = getattr(module, "__version__", "?")
        files[module_name] = str(Path(module.__file__).parent)
    import torch

    cuda = torch.cuda.is_available()
    below = []
    by_module = {dist: versions.get(module) for module, dist in PACKAGES}
    for line in project_pins():
        requirement = Requirement(line)
        have = by_module.get(requirement.name)
        if have is None:
            continue
        try:
            ok = requirement.specifier.contains(Version(have.split("+")[0]), prereleases=True)
        except Exception:  # noqa: BLE001 - "not importable: ..." is not a version
            ok = False
        if not ok:
            below.append(f"{requirement.name} {have} (pinned {requirement.specifier})")
    for line in below:
        log(f"BELOW THE PINS: {line}")
    emit(
        figure="env",
        dry_run=args.dry_run,
        gpu=torch.cuda.get_device_name(0) if cuda else None,
        capability=list(torch.cuda.get_device_capability(0)) if cuda else None,
        gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
        cuda=torch.version.cuda,
        python=platform.python_version(),
        cpus=os.cpu_count(),
        versions=versions,
        imported_from=files,
        pins_ok=not below,
        below_pins=below,
    )
    if not cuda and not args.dry_run:
        log("no CUDA GPU: the GPU stages will fail")
        return 3
    return 0


# ---------------------------------------------------------------------------------------------
# inputs: the 0.6B shape (prepared here, built there) and the dry run's tiny models


def qwen3_shape(args: argparse.Namespace) -> int:
    """Write config.json (Qwen3ForCausalLM of Qwen3-Reranker-0.6B's shape, saved in bf16 as the real
    checkpoint is) and the tokenizer; benchmarks/random_model.py builds random weights from them."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_causal import build_tokenizer
    from transformers import Qwen3Config

    tokenizer = build_tokenizer()
    tokenizer.model_max_length = 8192
    config = Qwen3Config(
        **QWEN3_0_6B,
        architectures=["Qwen3ForCausalLM"],
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        dtype="bfloat16",
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    log(f"{out}: Qwen3-0.6B shape (vocabulary {config.vocab_size}; the tokenizer has {len(tokenizer)} tokens)")
    return 0


def dry_inputs(args: argparse.Namespace) -> int:
    """The dry run's inputs: synthetic pairs with STS's columns, and random-weight models built by
    benchmarks/random_model.py (in this process) like the tests' tiny BERT and tiny causal
    reranker, the latter in bf16 as the 0.6B shape is."""
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from random_model import build
    from tiny import build_tiny_bert, synthetic_pairs, write_parquet
    from tiny_causal import build_tiny_causal_reranker

    out = Path(args.out)
    rows = [{k: r[k] for k in ("sentence_0", "sentence_1", "label")} for r in synthetic_pairs(args.pairs, seed=1)]
    write_parquet(rows, out / "pairs.parquet")
    build_tiny_bert(out / "tiny-bert")
    causal = build_tiny_causal_reranker(out / "tiny-causal")
    config = json.loads((causal / "config.json").read_text())
    (causal / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16"}))
    models = Path(args.models)
    log(build(out / "tiny-bert", models / "minilm-l6"))
    log(build(causal, models / "qwen3-0.6b"))
    return 0


# ---------------------------------------------------------------------------------------------
# pytest, tallied

TALLY = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed|warnings?)")


def pytest(args: argparse.Namespace) -> int:
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *args.pytest_args]
    if args.collect_only:
        command.append("--collect-only")
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sys.stderr.write(done.stdout)
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    tally = {kind.rstrip("s") if kind.startswith("error") else kind: int(n) for n, kind in TALLY.findall(last)}
    collected = re.search(r"(\d+)(?:/\d+)? tests? collected", last)
    if collected:
        tally["collected"] = int(collected.group(1))
    emit(figure="pytest", tests=" ".join(args.pytest_args), collect_only=args.collect_only, exit=done.returncode,
         **tally, summary=last)  # fmt: skip
    if args.collect_only:  # the selection must not be empty: it is what the GPU run will execute
        return done.returncode if tally.get("collected") else 5
    return done.returncode


# ---------------------------------------------------------------------------------------------
# the large reranker: LoRA + activation checkpointing, DDP and FSDP, through rerank-ray train


def large_config(args: argparse.Namespace, train_file: Path, storage: str, name: str, strategy: str) -> dict:
    cuda = args.device == "cuda"
    return {
        "model": {"name_or_path": str(args.model), "max_length": args.max_length, "lora": {"r": args.lora_r}},
        "data": {"train": [str(train_file)]},
        "train": {
            "loss": "BinaryCrossEntropyLoss",
            "epochs": 1,
            "per_device_batch_size": args.batch_size,
            "learning_rate": 1e-4,
            "warmup_ratio": 0.1,
            "precision": "bf16",
            "gradient_checkpointing": True,
            "logging_steps": 10,
        },
        "eval": {"before_training": False},
        "scaling": {
            "num_workers": 1,
            "use_gpu": cuda,
            "cpus_per_worker": max(1, (os.cpu_count() or 2) // 2) if cuda else 1,
            "strategy": strategy,
        },
        "run": {"storage_path": storage, "name": name},
    }


def large(args: argparse.Namespace) -> int:
    """Each strategy's run through ``rerank-ray train``'s entry point, one after the other in this
    process (one Ray for both); one JSON line each: pairs/s over the training steps, seconds, and
    the worker's peak CUDA memory (``torch.cuda.max_memory_allocated`` / ``_reserved``)."""
    import pyarrow.parquet as pq
    import yaml

    from rerank_ray.cli import main as rerank_ray

    failed = 0
    with tempfile.TemporaryDirectory(prefix="gpu-large-", dir=args.scratch) as scratch:
        train_file = Path(scratch, "train.parquet")
        table = pq.read_table(args.train, columns=["sentence_0", "sentence_1", "label"])
        pq.write_table(table.slice(0, args.pairs), train_file)
        for strategy in args.strategies.split(","):
            name = f"{Path(args.model).name}-lora{args.lora_r}-ckpt-{strategy}"
            config = large_config(args, train_file, scratch, name, strategy)
            path = Path(scratch, f"{name}.yaml")
            path.write_text(yaml.safe_dump(config))
            log(f"== rerank-ray train --config {path}\n{yaml.safe_dump(config)}")
            started = time.time()
            try:
                code = rerank_ray(["train", "--config", str(path)])
            except SystemExit as exit_:  # noqa: PERF203 - one run each
                code = exit_.code if isinstance(exit_.code, int) else 1
            wall = time.time() - started
            metrics_file = Path(scratch, name, "model", "metrics.json")
            if code != 0 or not metrics_file.is_file():
                failed += 1
                emit(figure="large", run=name, strategy=strategy, exit=code, wall_seconds=wall, ok=False)
                continue
            metrics = json.loads(metrics_file.read_text())
            resources = metrics["resources"]
            emit(
                figure="large",
                run=name,
                strategy=strategy,
                device=args.device,
                ok=True,
                pairs=metrics["train"]["pairs"],
                steps=metrics["train"]["steps"],
                batch_size=args.batch_size,
                max_length=args.max_length,
                train_seconds=metrics["train"]["train_seconds"],
                pairs_per_second=metrics["train"]["pairs_per_second"],
                wall_seconds=wall,
                worker_peak_cuda_allocated_mib=resources.get("worker_peak_cuda_allocated_mib", [None])[0],
                worker_peak_cuda_reserved_mib=resources.get("worker_peak_cuda_reserved_mib", [None])[0],
                worker_peak_rss_mib=resources["worker_peak_rss_mib"][0],
                # The first run also pays Ray Data's cold start: its pairs/s counts the wait for data.
                data_wait_seconds=resources.get("data_wait_seconds"),
                first_step_seconds_since_worker_start=resources.get("first_step_seconds_since_worker_start"),
            )
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------
# the summary


def summary(args: argparse.Namespace) -> int:
    lines = [json.loads(line) for line in Path(args.results).read_text().splitlines() if line.strip()]
    stages = [line for line in lines if line.get("kind") == "stage"]
    figures = [line for line in lines if line.get("kind") != "stage"]
    print("stage                   status     seconds  limit")
    for s in stages:
        print(f"{s['stage']:<23} {s['status']:<10} {s.get('seconds', 0):>7}  {s.get('limit', '')!s:>5}  "
              f"{s.get('note', '')}")  # fmt: skip
    print("\nfigures:")
    for f in figures:
        print(json.dumps(f))
    env = next((f for f in figures if f.get("figure") == "env"), None)
    if env is not None and not env.get("pins_ok"):
        print(f"\nBELOW THE PROJECT'S PINS: {'; '.join(env['below_pins'])}")
    failed = [s["stage"] for s in stages if s["status"] in ("failed", "timeout")]
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
    left = [s["stage"] for s in stages if s["status"] == "skipped" and s.get("note", "").startswith("not enough time")]
    again = [name for name in failed + left if name not in ("setup", "env", "models")]
    if again:
        print(
            f'\nto run again (setup, env and their models run too): GPU_STAGES="{" ".join(again)}" bash benchmarks/gpu.sh'
        )
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("setup")
    p.add_argument("--wheels", default=str(ROOT / ".gpu" / "wheels"))
    p = commands.add_parser("env")
    p.add_argument("--dry-run", action="store_true")
    p = commands.add_parser("qwen3-shape")
    p.add_argument("--out", required=True)
    p = commands.add_parser("dry-inputs")
    p.add_argument("--out", required=True)
    p.add_argument("--models", required=True, help="where the random-weight models go")
    p.add_argument("--pairs", type=int, default=512)
    p = commands.add_parser("pytest")
    p.add_argument("--collect-only", action="store_true")
    p.add_argument("pytest_args", nargs="*")
    p = commands.add_parser("large")
    p.add_argument("--model", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--pairs", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--strategies", default="ddp,fsdp")
    p.add_argument("--scratch", default=None)
    p = commands.add_parser("summary")
    p.add_argument("results")
    args = parser.parse_args()
    handler = {
        "setup": setup,
        "env": env,
        "qwen3-shape": qwen3_shape,
        "dry-inputs": dry_inputs,
        "pytest": pytest,
        "large": large,
        "summary": summary,
    }[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
