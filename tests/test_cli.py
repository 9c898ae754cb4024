"""The command line: clear errors and non-zero exits, before any Ray worker starts."""

from __future__ import annotations

import pytest
from tiny import synthetic_pairs, write_jsonl

from rerank_ray.cli import main


@pytest.fixture
def config_file(tmp_path, tiny_bert):
    data = write_jsonl(synthetic_pairs(10), tmp_path / "train.jsonl")
    path = tmp_path / "c.yaml"
    path.write_text(
        f"model:\n  name_or_path: {tiny_bert}\ndata:\n  train: {data}\nrun:\n  storage_path: {tmp_path}/runs\n"
    )
    return path


def _run(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def test_unknown_key_exits_2(capsys, config_file):
    code, out = _run(capsys, "train", "--config", str(config_file), "train.learnig_rate=1e-4")
    assert code == 2
    assert "unknown config key train.learnig_rate (did you mean train.learning_rate?)" in out


def test_wrong_type_exits_2(capsys, config_file):
    code, out = _run(capsys, "train", "--config", str(config_file), "scaling.num_workers=two")
    assert code == 2 and "scaling.num_workers must be int, got str: 'two'" in out


def test_missing_data_file_exits_2(capsys, config_file, tmp_path):
    code, out = _run(capsys, "train", "--config", str(config_file), f"data.train={tmp_path}/missing.jsonl")
    assert code == 2 and f"data.train: data file not found: {tmp_path}/missing.jsonl" in out


def test_missing_column_names_file_and_fix(capsys, config_file, tmp_path):
    rows = [{"query": r["sentence_0"], "doc": r["sentence_1"], "label": r["label"]} for r in synthetic_pairs(5)]
    data = write_jsonl(rows, tmp_path / "renamed.jsonl")
    code, out = _run(
        capsys, "train", "--config", str(config_file), f"data.train={data}", "data.columns={sentence_0: query}"
    )
    assert code == 2
    assert f"column 'sentence_1' (for sentence_1) is missing in {data}" in out
    assert "data.columns.sentence_1=<your column>" in out


def test_config_command_prints_resolved_config(capsys, config_file):
    code, out = _run(capsys, "config", "--config", str(config_file), "train.epochs=5")
    assert code == 0 and "epochs: 5" in out


def test_missing_config_file_exits_2(capsys, tmp_path):
    code, out = _run(capsys, "train", "--config", str(tmp_path / "none.yaml"))
    assert code == 2 and "config file not found" in out
