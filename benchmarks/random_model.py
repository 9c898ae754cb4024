"""A randomly initialised cross-encoder of a given shape, for throughput where no weights can be had.

    python benchmarks/random_model.py --like <folder with config.json and the tokenizer> --out <folder>
        [--shape like|bert-base] [--device cuda]

The GPU machine reaches no hub and takes at most 64 MiB with it, so benchmarks/gpu.sh builds its
models there: the shape of all-MiniLM-L6-v2 (``like``: the carried config, 6 layers, hidden
384) or of BERT-base (12 layers, hidden 768, 110M parameters), with all-MiniLM-L6-v2's tokenizer
(the vocabulary BERT-base has too) and one output. Speed and MFU depend on the shape, not on the
values of the weights; quality figures need real weights and are not taken from such a model.

A folder whose config names a ``*ForCausalLM`` architecture (benchmarks/gpu_steps.py qwen3-shape
writes Qwen3-Reranker-0.6B's) gives a causal LM of that shape, saved in the config's dtype (bf16
for Qwen3, as the real checkpoint), which sentence-transformers loads as a causal-LM reranker.
"""

from __future__ import annotations

import argparse
from pathlib import Path

BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}


def build(like: Path, out: Path, shape: str = "like", seed: int = 0, device: str = "cpu") -> str:
    """Build and save the model; a line saying what was built."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(like)
    if any(name.endswith("ForCausalLM") for name in config.architectures or []):
        dtype = getattr(config, "dtype", None) or torch.float32
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        kind = f"{config.model_type} causal LM"
    else:
        config = AutoConfig.from_pretrained(like, num_labels=1)
        if shape == "bert-base":
            for key, value in BERT_BASE.items():
                setattr(config, key, value)
        with torch.device(device):
            model = AutoModelForSequenceClassification.from_config(config)
        kind = shape
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(like).save_pretrained(out)
    parameters = sum(p.numel() for p in model.parameters())
    return f"{out}: {kind} shape, {parameters / 1e6:.1f}M parameters, {next(model.parameters()).dtype}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--like", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shape", choices=["like", "bert-base"], default="like")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device", default="cpu", help="where to initialise the weights (cuda: faster for large shapes)"
    )
    args = parser.parse_args()
    print(build(args.like, args.out, args.shape, args.seed, args.device))


if __name__ == "__main__":
    main()
