"""What a run prints: its own lines by default (a test counts them), everything with --verbose,
a live progress bar on a terminal."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import graded_pairs, write_jsonl

from rerank_ray.console import View

ROOT = Path(__file__).resolve().parents[1]

#: The issue's bound for the quickstart's whole output: one screen.
SCREEN_LINES = 25


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _progress(step: int, total: int = 20) -> dict:
    return {
        "text": f"[rerank-ray] step {step}/{total} | ...",
        "step": step,
        "total": total,
        "epoch": step / 10,
        "loss": 0.5,
        "learning_rate": 1e-5,
        "pairs_per_second": 123.4,
    }


def test_on_a_terminal_the_progress_is_a_bar_and_other_lines_print_above_it():
    screen = _Terminal()
    view = View(screen)
    view.show({"text": "[rerank-ray] step 0: dev_spearman = 0.1000"})
    for step in (5, 10, 20):
        view.show(_progress(step))
    view.show({"text": "[rerank-ray] step 20: dev_spearman = 0.5000"})
    view.close()
    out = screen.getvalue()
    assert "20/20" in out and "123.4 pairs/s" in out and "loss 0.5000" in out
    assert "[rerank-ray] step 0: dev_spearman = 0.1000\n" in out
    assert "[rerank-ray] step 20: dev_spearman = 0.5000\n" in out
    assert "[rerank-ray] step 5/20 | ..." not in out  # the bar replaces the progress line


def test_elsewhere_the_progress_line_is_printed_as_it_is():
    log = io.StringIO()
    view = View(log)
    for step in (5, 10):
        view.show(_progress(step))
    view.close()
    assert log.getvalue() == "[rerank-ray] step 5/20 | ...\n[rerank-ray] step 10/20 | ...\n"


@pytest.mark.ray
def test_a_run_prints_its_own_lines_and_nothing_else(tiny_bert, tmp_path):
    train = write_jsonl(graded_pairs(64), tmp_path / "train.jsonl")
    dev = write_jsonl(graded_pairs(24, seed=1), tmp_path / "dev.jsonl")
    config = tmp_path / "c.yaml"
    config.write_text(
        f"model: {{name_or_path: {tiny_bert}}}\ndata: {{train: {train}, eval: {dev}}}\n"
        "train: {epochs: 1, per_device_batch_size: 8, logging_steps: 2, loss: MSELoss}\n"
        "eval: {kind: correlation, name: dev}\nscaling: {num_workers: 2}\n"
        f"run: {{storage_path: {tmp_path / 'runs'}, name: quiet}}\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RERANK_RAY_VERBOSE")}
    result = subprocess.run(
        [sys.executable, "-m", "rerank_ray.cli", "train", "--config", str(config)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) <= SCREEN_LINES, "\n".join(lines)
    assert [line for line in lines if not line.startswith("[rerank-ray] ")] == [], "\n".join(lines)
    assert any(line.startswith("[rerank-ray] step 4/4 | epoch 1.00 | loss") for line in lines), lines  # relayed
    assert any(line.startswith("[rerank-ray] step 0: dev_spearman = ") for line in lines), lines
    assert any("--verbose" in line and "logs" in line for line in lines), lines  # says where the rest went
    assert lines[-1].startswith("[rerank-ray] model exported to ")
