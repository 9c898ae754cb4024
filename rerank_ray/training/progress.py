"""The progress line: step/total, loss, learning rate, pairs/s and ETA, once per logging interval.

Losses and pair counts stay on the device between lines, so a step never waits for the host;
the line costs one small all-reduce and one sync per logging interval. Evaluation time is
excluded from pairs/s and from the ETA's step time.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from rerank_ray import console

if TYPE_CHECKING:
    import torch


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))


class ProgressLine:
    def __init__(
        self,
        total_steps: int,
        start_step: int,
        *,
        enabled: bool,
        pairs_before: float = 0.0,
        seconds_before: float = 0.0,
        unit: str = "pairs",
    ):
        self.total_steps = total_steps
        self.step = start_step
        self.enabled = enabled
        self.pairs_before = pairs_before
        self.seconds_before = seconds_before
        self.unit = unit
        """What the throughput counts: pairs, or queries for the grouped shapes (the rows a batch holds)."""
        self._session_start_step = start_step
        self._loss_sum: torch.Tensor | float = 0.0
        self._local_pairs = 0.0
        self._global_pairs: torch.Tensor | float = 0.0
        self._pairs_done = 0.0  # global pairs flushed so far in this process
        self._interval_start = time.perf_counter()
        self._interval_steps = 0
        self._train_seconds = 0.0  # flushed intervals in this process
        self._paused_at: float | None = None

    def add(self, loss_sum: torch.Tensor, local_pairs: float, global_pairs: torch.Tensor) -> None:
        self._loss_sum = self._loss_sum + loss_sum
        self._local_pairs += local_pairs
        self._global_pairs = self._global_pairs + global_pairs
        self._interval_steps += 1
        self.step += 1

    def pause(self) -> None:
        self._paused_at = time.perf_counter()

    def resume(self) -> None:
        if self._paused_at is not None:
            self._interval_start += time.perf_counter() - self._paused_at
            self._paused_at = None

    @property
    def train_seconds(self) -> float:
        pending = time.perf_counter() - self._interval_start if self._interval_steps else 0.0
        return self.seconds_before + self._train_seconds + pending

    @property
    def pairs_total(self) -> float:
        pending = float(self._global_pairs) if self._interval_steps else 0.0
        return self.pairs_before + self._pairs_done + pending

    def flush(
        self,
        all_reduce: Callable[[torch.Tensor], torch.Tensor],
        lr: float,
        epoch: float,
        losses: dict[str, float] | None = None,
    ) -> dict | None:
        """Print the line for the steps since the last one; return its figures (all ranks).
        ``losses``: a mixture's loss of each training set (``loss_<name>``), shown after the loss."""
        import torch

        if self._interval_steps == 0:
            return None
        device = self._loss_sum.device if isinstance(self._loss_sum, torch.Tensor) else torch.device("cpu")
        totals = all_reduce(
            torch.stack(
                [torch.as_tensor(self._loss_sum, device=device).float(), torch.tensor(self._local_pairs, device=device)]
            )
        )
        loss_sum, pairs = totals.tolist()
        elapsed = time.perf_counter() - self._interval_start
        self._train_seconds += elapsed
        self._pairs_done += pairs
        steps_this_session = self.step - self._session_start_step
        seconds_per_step = (self._train_seconds / steps_this_session) if steps_this_session else 0.0
        summary = {
            "epoch": round(epoch, 4),
            "loss": loss_sum / max(pairs, 1.0),
            "learning_rate": lr,
            "pairs_per_second": pairs / elapsed if elapsed > 0 else 0.0,
            **(losses or {}),
        }
        each = "".join(f" ({key.removeprefix('loss_')} {value:.4f})" for key, value in (losses or {}).items())
        if self.enabled:
            eta = seconds_per_step * (self.total_steps - self.step)
            console.progress(
                f"[rerank-ray] step {self.step}/{self.total_steps} | epoch {epoch:.2f} | "
                f"loss {summary['loss']:.4f}{each} | lr {lr:.2e} | {summary['pairs_per_second']:.1f} {self.unit}/s | "
                f"elapsed {_clock(self.seconds_before + self._train_seconds)} | ETA {_clock(eta)}",
                self.step,
                self.total_steps,
                {**summary, "unit": self.unit},
            )
        self._loss_sum, self._local_pairs, self._global_pairs = 0.0, 0.0, 0.0
        self._interval_steps = 0
        self._interval_start = time.perf_counter()
        return summary


def quiet_libraries() -> None:
    """Keep the logs to what a user acts on: our progress line and real warnings.

    The evaluators log every metric at INFO, transformers draws a progress bar for every load and
    save, and Ray Train logs the whole metrics dict of every report; the progress line and the
    evaluation line already say what matters.
    """
    import logging

    from transformers.utils import logging as hf_logging

    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    try:  # Ray Train names this logger by its file path
        from ray.train.v2._internal.execution import context as train_context

        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    except ImportError:
        pass
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_warning()
    if os.environ.get("WANDB_MODE") == "offline" and not console.verbose():
        # transformers' integrations module prints "[INFO] Running in WANDB offline mode" when it
        # is first imported (the model card imports it); imported here with that print discarded.
        with contextlib.redirect_stdout(io.StringIO()):
            import transformers.integrations.integration_utils  # noqa: F401
