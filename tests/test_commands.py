"""``rerank-ray eval`` and ``rerank-ray rank`` on a saved model, in-process: the metrics equal the
library evaluators', the JSON lands where asked, the ranking is sorted by the model's scores."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from tiny import class_pairs, reranking_pairs, synthetic_pairs, write_beir, write_jsonl, write_parquet

from rerank_ray.cli import main


def _run(capsys, *argv, stdout_only: bool = False) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out if stdout_only else captured.out + captured.err


def _samples(rows):
    samples = {}
    for r in rows:
        sample = samples.setdefault(r["query_id"], {"query": r["sentence_0"], "positive": [], "negative": []})
        sample["positive" if r["label"] else "negative"].append(r["sentence_1"])
    return list(samples.values())


def test_eval_binary_with_renamed_columns_writes_json_next_to_the_model(capsys, tiny_bert, tmp_path):
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderClassificationEvaluator

    model_dir = shutil.copytree(tiny_bert, tmp_path / "model")
    rows = synthetic_pairs(40, seed=3)
    data = write_jsonl(
        [{"q": r["sentence_0"], "doc": r["sentence_1"], "y": r["label"]} for r in rows], tmp_path / "dev.jsonl"
    )
    code, out = _run(
        capsys, "eval", "--model", model_dir, "--data", data, "--kind", "binary",
        "--columns", "sentence_0=q", "sentence_1=doc", "label=y", "--name", "dev",
    )  # fmt: skip
    assert code == 0, out
    written = json.loads((model_dir / "eval-dev.json").read_text())
    expected = CrossEncoderClassificationEvaluator(
        [[r["sentence_0"], r["sentence_1"]] for r in rows], [int(r["label"]) for r in rows], name="dev"
    )(CrossEncoder(str(model_dir)))
    assert written["metrics"] == pytest.approx(expected, abs=1e-6)
    assert written["headline_metric"] == "dev_average_precision" and written["pairs"] == 40
    assert f"* dev_average_precision: {expected['dev_average_precision']:.4f}" in out


def test_eval_reranking_from_pair_files_and_from_a_beir_folder(capsys, tiny_bert, tmp_path):
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    rows = reranking_pairs(15, candidates=6, seed=5)
    expected = CrossEncoderRerankingEvaluator(_samples(rows), at_k=5, name="eval")(CrossEncoder(str(tiny_bert)))
    pairs = write_parquet(rows, tmp_path / "pairs.parquet")
    code, out = _run(
        capsys, "eval", "--model", tiny_bert, "--data", pairs, "--kind", "reranking", "--at-k", 5,
        "--query-id-column", "query_id", "--output", tmp_path / "pairs.json",
    )  # fmt: skip
    assert code == 0, out
    assert json.loads((tmp_path / "pairs.json").read_text())["metrics"] == pytest.approx(expected, abs=1e-6)
    beir = write_beir(rows, tmp_path / "beir", split="dev")
    code, out = _run(
        capsys, "eval", "--model", tiny_bert, "--beir", beir, "--beir-split", "dev", "--kind", "reranking",
        "--at-k", 5, "--output", tmp_path / "beir.json",
    )  # fmt: skip
    assert code == 0, out
    result = json.loads((tmp_path / "beir.json").read_text())
    assert result["metrics"] == pytest.approx(expected, abs=1e-6) and result["pairs"] == len(rows)


def test_eval_classification_reports_macro_f1_and_accuracy(capsys, tiny_bert_3_labels, tmp_path):
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderClassificationEvaluator

    rows = class_pairs(30)
    data = write_parquet(rows, tmp_path / "dev.parquet")
    code, out = _run(
        capsys, "eval", "--model", tiny_bert_3_labels, "--data", data, "--kind", "classification",
        "--output", tmp_path / "m.json",
    )  # fmt: skip
    assert code == 0, out
    metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]
    model = CrossEncoder(str(tiny_bert_3_labels))
    pairs = [[r["sentence_0"], r["sentence_1"]] for r in rows]
    expected = CrossEncoderClassificationEvaluator(pairs, [r["label"] for r in rows], name="eval")(model)
    assert {k: v for k, v in metrics.items() if k != "eval_accuracy"} == pytest.approx(expected, abs=1e-6)
    labels = np.array([r["label"] for r in rows])
    assert metrics["eval_accuracy"] == pytest.approx(np.mean(model.predict(pairs).argmax(1) == labels))
    assert "* eval_f1_macro:" in out


def test_eval_errors_exit_2_naming_the_cause(capsys, tiny_bert, tmp_path):
    data = write_jsonl(synthetic_pairs(6), tmp_path / "dev.jsonl")
    code, out = _run(
        capsys, "eval", "--model", tiny_bert, "--data", data, "--kind", "binary", "--columns", "label=score"
    )
    assert code == 2 and "column 'score' (for label) is missing" in out and "--columns label=<your column>" in out
    code, out = _run(capsys, "eval", "--model", tmp_path / "nope", "--data", data, "--kind", "binary")
    assert code == 2 and "no such model folder" in out


def test_eval_checks_rows_as_training_does(capsys, tiny_bert, tmp_path):
    """Saved-model evaluation reads through the training reader: a bad row fails naming the
    file, the row, the column and the value, and a label the kind cannot take names the fix."""
    rows = synthetic_pairs(8, seed=1)
    rows[5]["sentence_1"] = None
    data = write_jsonl(rows, tmp_path / "dev.jsonl")
    code, out = _run(capsys, "eval", "--model", tiny_bert, "--data", data, "--kind", "binary")
    assert code == 2, out
    assert "dev.jsonl" in out and "row 6" in out and "sentence_1" in out, out

    graded = [dict(r, label=i * 0.5) for i, r in enumerate(synthetic_pairs(6, seed=2))]
    data = write_parquet(graded, tmp_path / "graded.parquet")
    code, out = _run(capsys, "eval", "--model", tiny_bert, "--data", data, "--kind", "binary")
    assert code == 2 and "graded.parquet" in out and "--kind correlation" in out, out
    code, out = _run(
        capsys, "eval", "--model", tiny_bert, "--data", data, "--kind", "correlation", "--label-scale", 0.2,
        "--output", tmp_path / "c.json",
    )  # fmt: skip
    assert code == 0, out
    assert json.loads((tmp_path / "c.json").read_text())["pairs"] == 6


def test_rank_prints_documents_sorted_by_score(capsys, tiny_bert, tmp_path):
    from sentence_transformers import CrossEncoder

    documents = ["red car boat", "snow rain", "green tree river stone", "milk bread"]
    text_file = tmp_path / "docs.txt"
    text_file.write_text("\n".join(documents) + "\n")
    code, out = _run(
        capsys, "rank", "--model", tiny_bert, "--query", "red boat", "--docs", text_file, "--json", stdout_only=True
    )
    assert code == 0, out
    ranked = json.loads(out)
    scores = CrossEncoder(str(tiny_bert)).predict([["red boat", d] for d in documents])
    assert [r["index"] for r in ranked] == list(np.argsort(-scores))
    assert [r["text"] for r in ranked] == [documents[i] for i in np.argsort(-scores)]
    assert [r["score"] for r in ranked] == pytest.approx(sorted(scores.tolist(), reverse=True), abs=1e-6)

    jsonl = write_jsonl([{"title": "red", "text": d} for d in documents], tmp_path / "docs.jsonl")
    code, out = _run(
        capsys, "rank", "--model", tiny_bert, "--query", "red boat", "--docs", jsonl, "--top-k", 2, stdout_only=True
    )
    assert code == 0, out
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0].split()[0] == "1" and "red " in lines[0]
    assert float(lines[0].split()[1]) >= float(lines[1].split()[1])
