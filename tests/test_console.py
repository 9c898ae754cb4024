"""What a run prints: its own lines by default (a test counts them), everything with --verbose,
a live progress bar on a terminal."""

from __future__ import annotations

import io
from pathlib import Path

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


# The count of a real run's console lines: tests/test_tracking.py (one CLI run with the trackers
# on serves both) and the slow quickstart test.
