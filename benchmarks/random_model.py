"""A randomly initialised cross-encoder of a given shape, for throughput where no weights can be had.

    python benchmarks/random_model.py --like <folder with config.json and the tokenizer> --out <folder>
        [--shape like|bert-base]

The GPU machine reaches no hub and takes at most 64 MiB with it, so benchmarks/gpu.sh builds its
models there: the shape of all-MiniLM-L6-v2 (``like``: the carried config, 6 layers, hidden
384) or of BERT-base (12 layers, hidden 768, 110M parameters), with all-MiniLM-L6-v2's tokenizer
(the vocabulary BERT-base has too) and one output. Speed and MFU depend on the shape, not on the
values of the weights; quality figures need real weights and are not taken from such a model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--like", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shape", choices=["like", "bert-base"], default="like")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(args.seed)
    config = AutoConfig.from_pretrained(args.like, num_labels=1)
    if args.shape == "bert-base":
        for key, value in BERT_BASE.items():
            setattr(config, key, value)
    model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(args.out)
    AutoTokenizer.from_pretrained(args.like).save_pretrained(args.out)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{args.out}: {args.shape} shape, {parameters / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main()
