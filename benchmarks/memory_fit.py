"""What fits where: per-rank memory of the model states of real reranker shapes under DDP, FSDP,
LoRA and LoRA + FSDP, and the measured activation memory of a training step with and without
activation checkpointing.

1. The table (no weights, no download): each model's shape is built on the meta device from its
   config (MiniLM-L6, bge-reranker-v2-m3, Qwen3-Reranker 0.6B / 4B / 8B; the config values are
   those of the models' config.json files on the hub), its parameters counted exactly, LoRA's
   trainable parameters counted by letting peft inject the adapters into the meta model. Bytes per
   rank of parameters + gradients + AdamW moments (fp32: 16 B a trained parameter; a frozen base
   4 B, or 2 in bf16), FSDP adding the largest unit gathered whole (its weights and gradients).
   Activations, CUDA context and allocator fragmentation are not in it.
2. The measurement: one training step (forward and backward of 16 pairs of 512 tokens) of a
   BERT-shaped and a Qwen3-shaped model of hidden size 256 and 4 blocks, built through
   rerank-ray's own model path (load_cross_encoder, LoRA, activation checkpointing), in a fresh
   process each: the peak resident memory above what the process held before the step on CPU,
   ``torch.cuda.max_memory_allocated`` on a GPU.

    python benchmarks/memory_fit.py                    # both; --table-only / --measure-only
    python benchmarks/memory_fit.py --ranks 8 --lora-r 16 --base-dtype bf16
    python benchmarks/memory_fit.py --measure-only --quick   # the Qwen3 shape with LoRA, 4 pairs x 128 tokens

Each measured row is also printed as one JSON line (benchmarks/gpu.sh collects them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

GIB = 2**30
#: Shapes from the models' config.json (hub): ms-marco-MiniLM-L6-v2 (BERT), bge-reranker-v2-m3
#: (XLM-RoBERTa large), Qwen3-Reranker-0.6B / 4B / 8B (the Qwen3 configs; 8B unties its embeddings).
SHAPES = {
    "MiniLM-L6 (ms-marco cross-encoder)": ("bert", {"vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6,
                                                    "num_attention_heads": 12, "intermediate_size": 1536}),
    "bge-reranker-v2-m3 (XLM-R large)": ("xlm-roberta", {"vocab_size": 250002, "hidden_size": 1024,
                                                         "num_hidden_layers": 24, "num_attention_heads": 16,
                                                         "intermediate_size": 4096, "max_position_embeddings": 8194,
                                                         "type_vocab_size": 1}),
    "Qwen3-Reranker-0.6B": ("qwen3", {"vocab_size": 151936, "hidden_size": 1024, "num_hidden_layers": 28,
                                      "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
                                      "intermediate_size": 3072, "tie_word_embeddings": True}),
    "Qwen3-Reranker-4B": ("qwen3", {"vocab_size": 151936, "hidden_size": 2560, "num_hidden_layers": 36,
                                    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                                    "intermediate_size": 9728, "tie_word_embeddings": True}),
    "Qwen3-Reranker-8B": ("qwen3", {"vocab_size": 151936, "hidden_size": 4096, "num_hidden_layers": 36,
                                    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                                    "intermediate_size": 12288, "tie_word_embeddings": False}),
}  # fmt: skip


def meta_model(family: str, settings: dict):
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        Qwen3Config,
        Qwen3ForCausalLM,
        XLMRobertaConfig,
        XLMRobertaForSequenceClassification,
    )

    with torch.device("meta"):
        if family == "bert":
            return BertForSequenceClassification(BertConfig(num_labels=1, **settings))
        if family == "xlm-roberta":
            return XLMRobertaForSequenceClassification(XLMRobertaConfig(num_labels=1, **settings))
        return Qwen3ForCausalLM(Qwen3Config(**settings))


def table_row(name: str, family: str, settings: dict, ranks: int, lora_r: int, base_bytes: int) -> dict:
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers.modeling_layers import GradientCheckpointingLayer

    model = meta_model(family, settings)
    params = sum(p.numel() for p in model.parameters())  # a tied lm_head counted once
    blocks = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    block = sum(p.numel() for p in blocks[0].parameters())
    largest_unit = max(block, params - block * len(blocks))  # FSDP: a block, or the root (embeddings, head)
    task = TaskType.CAUSAL_LM if family == "qwen3" else TaskType.SEQ_CLS
    # rerank-ray's default targets: every linear layer but the head (peft's all-linear); the
    # encoders' new head trains in full beside the adapters.
    adapted = get_peft_model(
        model, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules="all-linear", task_type=task)
    )
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    return {
        "model": name,
        "parameters": params,
        "largest_fsdp_unit": largest_unit,
        "lora_trainable": trainable,
        "ddp_gib": 16 * params / GIB,
        "fsdp_gib": (16 * params / ranks + 8 * largest_unit) / GIB,
        "lora_gib": (base_bytes * params + 16 * trainable) / GIB,
        "lora_fsdp_gib": ((base_bytes * params + 16 * trainable) / ranks + 2 * base_bytes * largest_unit) / GIB,
    }


def print_table(rows: list[dict], ranks: int, lora_r: int, base_dtype: str) -> None:
    print(f"per-rank model states (parameters, gradients, AdamW moments) in GiB, {ranks} ranks for FSDP, "
          f"LoRA r={lora_r} on every linear layer, frozen base in {base_dtype}; activations not included")  # fmt: skip
    print(f"| model | parameters | LoRA trainable | DDP | FSDP x{ranks} | LoRA | LoRA + FSDP x{ranks} |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['parameters'] / 1e6:,.1f}M | {r['lora_trainable'] / 1e6:,.1f}M | {r['ddp_gib']:.1f} | "
              f"{r['fsdp_gib']:.1f} | {r['lora_gib']:.1f} | {r['lora_fsdp_gib']:.1f} |")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The measured step (one configuration per process: a clean peak)

STEP = """
import ctypes, gc, json, sys, torch
sys.path.insert(0, {tests!r})
from rerank_ray.config import LoraConfig, ModelConfig
from rerank_ray.training import adapters
from rerank_ray.training.models import load_cross_encoder
folder, lora, checkpoint, pairs, tokens = {folder!r}, {lora}, {checkpoint}, {pairs}, {tokens}
cuda = torch.cuda.is_available()
device = torch.device("cuda" if cuda else "cpu")
config = ModelConfig(name_or_path=folder, lora=LoraConfig(r=16 if lora else 0, dropout=0.0))
model = load_cross_encoder(config, tokens)
if lora:
    adapters.add_lora(model, config.lora)
if checkpoint:
    model.activation_checkpointing_enable()
model.to(device).train()
words = "red blue green car boat house tree river stone bird fish cat dog".split()
document = " ".join(words[i % len(words)] for i in range(tokens + 88))
features = model.preprocess([("red car on the river", document)] * pairs)
features = {{k: v.to(device) for k, v in features.items() if torch.is_tensor(v)}}
assert features["input_ids"].shape[1] == tokens, features["input_ids"].shape
libc = ctypes.CDLL("libc.so.6")

def rss_mib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024

for _ in range(2):  # a warm-up step, then the measured one
    model.zero_grad(set_to_none=False)
    gc.collect(); libc.malloc_trim(0)
    if cuda:
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        open("/proc/self/clear_refs", "w").write("5")  # the peak resident memory starts again here
        before = rss_mib("VmRSS")
    model(dict(features))["scores"].float().sum().backward()
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss_mib("VmHWM")
print(json.dumps({{"device": device.type, "before_mib": before, "step_mib": peak - before}}))
"""


def build_shapes(folder: Path) -> dict[str, Path]:
    """The BERT- and Qwen3-shaped models of the measurement: the test fixtures' tokenizers, hidden
    256, 4 blocks, 512 positions."""
    import torch
    from tiny import _bert_parts
    from tiny_causal import build_tiny_causal_reranker
    from transformers import BertForSequenceClassification, Qwen3Config, Qwen3ForCausalLM

    tokenizer, config = _bert_parts(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=1)
    for key, value in {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
                       "intermediate_size": 1024, "max_position_embeddings": 512}.items():  # fmt: skip
        setattr(config, key, value)
    tokenizer.model_max_length = 512
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder / "bert")
    tokenizer.save_pretrained(folder / "bert")
    causal = build_tiny_causal_reranker(folder / "qwen3")
    settings = Qwen3Config.from_pretrained(causal).to_dict()
    settings.pop("layer_types", None)  # one per layer of the tiny model: rebuilt for the new depth
    settings.update(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                    intermediate_size=1024, max_position_embeddings=1024)  # fmt: skip
    Qwen3ForCausalLM(Qwen3Config(**settings)).save_pretrained(causal)
    return {"BERT-shaped": folder / "bert", "Qwen3-shaped": folder / "qwen3"}


def measure(folder: Path, lora: bool, checkpoint: bool, pairs: int = 16, tokens: int = 512) -> dict:
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    code = STEP.format(tests=tests, folder=str(folder), lora=lora, checkpoint=checkpoint, pairs=pairs, tokens=tokens)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--base-dtype", choices=["fp32", "bf16"], default="bf16", help="the frozen base under LoRA")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--measure-only", action="store_true")
    parser.add_argument(
        "--quick", action="store_true", help="measure one configuration (Qwen3-shaped, LoRA), 4 pairs of 128 tokens"
    )
    args = parser.parse_args()
    pairs, tokens = (4, 128) if args.quick else (16, 512)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    if not args.measure_only:
        base_bytes = 4 if args.base_dtype == "fp32" else 2
        rows = [table_row(n, f, s, args.ranks, args.lora_r, base_bytes) for n, (f, s) in SHAPES.items()]
        print_table(rows, args.ranks, args.lora_r, args.base_dtype)
        print(json.dumps({"table": rows}))
    if args.table_only:
        return
    print(
        f"\n| model ({pairs} pairs x {tokens} tokens) | training | step memory without checkpointing | with | ratio |"
    )
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="memory-fit-") as scratch:
        for name, folder in build_shapes(Path(scratch)).items():
            for lora in (False, True):
                if args.quick and (name != "Qwen3-shaped" or not lora):
                    continue
                plain = measure(folder, lora, False, pairs, tokens)
                checkpointed = measure(folder, lora, True, pairs, tokens)
                print(json.dumps({"figure": "memory_fit", "model": name, "lora_r": 16 if lora else 0, "pairs": pairs,
                                  "tokens": tokens, "device": plain["device"], "step_mib": plain["step_mib"],
                                  "step_mib_checkpointed": checkpointed["step_mib"]}))  # fmt: skip
                print(f"| {name} | {'LoRA r=16' if lora else 'full'} | {plain['step_mib']:.0f} MiB | "
                      f"{checkpointed['step_mib']:.0f} MiB | {checkpointed['step_mib'] / plain['step_mib']:.2f} |",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
