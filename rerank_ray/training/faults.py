"""Failures: which ones a retry can cure, what an out-of-memory error should say, and (for tests
only) how to make a worker die for real at a chosen moment.

Ray Train retries every worker-group failure up to ``run.max_failures`` times, restoring the
newest complete checkpoint. A dead worker or a lost node is worth a retry; bad input, a config
error or an out-of-memory step is not, since it fails the same way again after minutes of
restarting (:data:`rerank_ray.errors.CLEAR_ERRORS`). :class:`StopRetryingInputErrors` (a ``ray.train.UserCallback``, called in Ray Train's
controller after a worker raised) ends the run at the first such error instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

from rerank_ray.errors import OutOfMemory, StopRetrying, clear_error

#: Test hook: JSON naming faults to inject (see :func:`fire`). Read by the driver only and passed
#: to the workers in the loop config, so it needs no cluster-wide environment.
FAULTS_ENV = "RERANK_RAY_TEST_FAULTS"
#: Test hook: the name of the node a process runs on, set in a test cluster's node environment.
NODE_ENV = "RERANK_RAY_TEST_NODE"


def _make_stop_callback():
    from ray.train import UserCallback

    class StopRetryingInputErrors(UserCallback):
        """Ends the run when a worker failed on bad input, a config error or out-of-memory."""

        def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
            for rank, error in sorted(worker_exceptions.items()):
                cause = clear_error(error)
                if cause is not None:
                    raise StopRetrying(f"rank {rank}: {cause} (not retried: it would fail the same way)", cause)

    return StopRetryingInputErrors()


def stop_retrying_callback() -> Any:
    return _make_stop_callback()


# ---------------------------------------------------------------------------------------------
# Out of memory


def oom_advice(
    phase: str, batch_size: int, accumulation: int, workers: int, max_length: int, err: BaseException
) -> str:
    if phase == "eval":
        return (
            f"out of accelerator memory while scoring the eval set with eval.batch_size={batch_size} "
            f"(max_length {max_length}): set eval.batch_size={max(1, batch_size // 2)} or lower. ({err})"
        )
    smaller = max(1, batch_size // 2)
    global_batch = batch_size * accumulation * workers
    return (
        f"out of accelerator memory in a training step with train.per_device_batch_size={batch_size} "
        f"(max_length {max_length}, {accumulation} accumulation step(s), global batch {global_batch}): "
        f"set train.per_device_batch_size={smaller} and train.gradient_accumulation_steps={accumulation * 2} "
        f"to keep the global batch of {global_batch} with half the memory per step, or shorten model.max_length, "
        f"or use train.precision=bf16. ({err})"
    )


@contextlib.contextmanager
def explain_oom(
    phase: str, batch_size: int, accumulation: int = 1, workers: int = 1, max_length: int = 0
) -> Iterator[None]:
    """Turn ``torch.OutOfMemoryError`` into :class:`OutOfMemory` with the batch size and the fix."""
    import torch

    try:
        yield
    except torch.OutOfMemoryError as err:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise OutOfMemory(oom_advice(phase, batch_size, accumulation, workers, max_length, err)) from err


# ---------------------------------------------------------------------------------------------
# Fault injection (tests only)

_INSTALLED: dict[str, Any] = {}


def from_environment() -> dict[str, Any] | None:
    text = os.environ.get(FAULTS_ENV)
    return json.loads(text) if text else None


def install(spec: dict[str, Any] | None, rank: int) -> None:
    """Arm the faults of ``spec`` for this worker process.

    ``spec``: ``{"dir": folder for once-only markers, "faults": [{"name": ..., "at": "step" |
    "checkpoint_upload", "rank": r, "step": k, "action": "kill" | "sigterm" | "pause", "seconds": s,
    "node": n}], "force_collectives": bool}``. With ``node`` a fault fires on whichever rank runs
    where the environment variable :data:`NODE_ENV` is ``n`` (a test cluster's node).
    Each fault fires once per run: the first process to reach it creates ``<dir>/<name>``.
    """
    _INSTALLED.clear()
    if spec:
        _INSTALLED.update(spec, rank=rank)


def force_collectives() -> bool:
    """Whether a test asked the collectives to run with one worker too (``"force_collectives":
    true`` in the spec): a GPU test's NCCL group of one then sees every tensor they are given."""
    return bool(_INSTALLED.get("force_collectives"))


def fire(at: str, step: int) -> None:
    """Called at the named points of the loop; does nothing unless a test armed a fault there."""
    if not _INSTALLED:
        return
    for fault in _INSTALLED.get("faults", []):
        if fault["at"] != at or fault["step"] != step:
            continue
        if "node" in fault:
            if os.environ.get(NODE_ENV) != fault["node"]:
                continue
        elif fault.get("rank", 0) != _INSTALLED["rank"]:
            continue
        marker = os.path.join(_INSTALLED["dir"], fault["name"])
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue  # fired before, in an earlier attempt
        os.write(fd, json.dumps({"pid": os.getpid(), "step": step, "time": time.time()}).encode())
        os.close(fd)
        action = fault.get("action", "kill")
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)  # a real, uncatchable death of this worker process
        elif action == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)  # a preemption notice, as a scheduler sends it
            # The handler runs on the actor's main thread at Ray's next signal check: let it run
            # before this step's progress check, so a test knows the step the run stops at.
            time.sleep(float(fault.get("seconds", 2)))
        else:
            time.sleep(float(fault.get("seconds", 600)))
