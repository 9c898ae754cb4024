"""benchmarks/gpu.sh's dry run (issue 30): ``GPU_DRY_RUN=1`` takes every stage's code path on CPU with
tiny models (the NCCL and sync-debug tests only collected: they need CUDA), so the GPU script
cannot rot between the rare calls on a lent GPU machine. Starts Ray twice (the 114k stage, the
large-reranker stage); about 1.5 to 3 minutes on 2 busy cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
STAGES = [
    "setup",
    "env",
    "models",
    "nccl",
    "114k",
    "ceiling-minilm",
    "ceiling-minilm-compile",
    "ceiling-base",
    "ceiling-base-compile",
    "syncs",
    "large",
    "memfit",
    "packing",
]
SKIPPED_IN_DRY_RUN = {"setup", "ceiling-base", "ceiling-base-compile"}


def test_the_gpu_script_runs_every_stage_in_its_dry_run(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "GPU_DRY_RUN": "1", "OUT": str(out), "PYTHON": sys.executable}
    for name in ("GPU_STAGES", "GPU_BUDGET_S", "GPU_SCRATCH"):
        env.pop(name, None)
    done = subprocess.run(
        ["bash", "benchmarks/gpu.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=800, check=False
    )
    log = (out / "stages.log").read_text() if (out / "stages.log").is_file() else ""
    assert done.returncode == 0, f"{done.stdout[-5000:]}\n{done.stderr[-3000:]}\n{log[-5000:]}"

    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    stages = {line["stage"]: line for line in lines if line.get("kind") == "stage"}
    assert list(stages) == STAGES
    for name, line in stages.items():
        assert line["status"] == ("skipped" if name in SKIPPED_IN_DRY_RUN else "ok"), line
    figures: dict[str, list[dict]] = {}
    for line in lines:
        if line.get("kind") != "stage":
            figures.setdefault(line["stage"], []).append(line)

    (env_figure,) = figures["env"]
    assert env_figure["dry_run"] and env_figure["pins_ok"], env_figure
    assert env_figure["versions"]["transformers"] and env_figure["versions"]["ray"]
    for name in ("nccl", "syncs"):  # the CUDA tests the GPU run will execute are there
        (tally,) = figures[name]
        assert tally["collect_only"] and tally["collected"] >= 1, tally
    (items,) = figures["114k"]
    assert items["whole_run"] and items["pairs"] == 256 and items["pairs_per_second"] > 0
    assert items["dev_metric"] == "eval_average_precision" and 0 <= items["dev_value"] <= 1
    eager, compiled = figures["ceiling-minilm"] + figures["ceiling-minilm-compile"]
    assert not eager["compiled"] and compiled["compiled"] and compiled["compile_backend"] == "aot_eager"
    assert eager["pairs_per_second"] > 0 and eager["model_tflops_per_second"] > 0
    large = figures["large"]
    assert [run["strategy"] for run in large] == ["ddp", "fsdp"] and all(run["ok"] for run in large), large
    assert all(run["pairs"] == 64 and run["pairs_per_second"] > 0 for run in large)
    assert all(run["worker_peak_cuda_allocated_mib"] is None for run in large)  # CPU workers
    (memory,) = figures["memfit"]
    assert memory["step_mib"] > 0 and memory["step_mib_checkpointed"] > 0
    packing = figures["packing"]
    assert [(f["attention"], f["batches"]) for f in packing] == [("sdpa", "random"), ("sdpa", "length-grouped")]
    assert all(f["padded_ms"] > 0 and f["packed_ms"] > 0 for f in packing), packing
    assert "FAILED" not in (out / "summary.txt").read_text()
