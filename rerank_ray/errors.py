"""The errors rerank-ray raises on purpose, and how to find one under Ray's wrappers.

At the bottom of the import graph: every layer raises these, none of them imports anything of
the package. A :class:`ConfigError` or a :class:`DataError` ends a command with exit code 2 and
its message alone (the key, or the file, row, column and value, and the fix); an
:class:`OutOfMemory` names the batch size to try. None of them is worth a retry.

Ray wraps what a task or a worker raised: a task's error comes back as ``RayTaskError(cause)``,
Ray Train keeps each worker's in ``worker_failures`` and a controller's in
``controller_failure``. :func:`inner_errors` is the one place that knows those attributes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator


def encodable(message: str) -> str:
    """``message`` with what UTF-8 cannot encode (lone surrogates: the bytes of a line in another
    encoding, decoded with ``surrogateescape``) written as escapes. Ray sends a task's error to
    its caller as UTF-8: a message it cannot encode killed the worker process as a system error,
    which Ray Data retries for ever (found by benchmarks/fuzz_inputs.py: a UTF-16 line in a JSONL
    file hung the run); printed, it would fail the same way."""
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


class ConfigError(ValueError):
    """A configuration problem, raised before any Ray worker starts. Its message names the key."""

    def __init__(self, message: str = "", *args: object):
        super().__init__(encodable(str(message)), *args)


class DataError(ValueError):
    """Bad input data. The message names the file, the column and, where known, the row."""

    def __init__(self, message: str = "", *args: object):
        super().__init__(encodable(str(message)), *args)


class OutOfMemory(RuntimeError):
    """A step ran out of accelerator memory; the message names the batch size and the fix."""


class CheckpointError(ValueError):
    """A checkpoint that must not be restored (a training-state file holding more than tensors and
    plain values). The message names the checkpoint and what to do."""


class StorageUnavailable(RuntimeError):
    """The run's storage stayed unreachable longer than ``run.storage_retry_s`` while a checkpoint
    was uploaded. The message names the storage (credentials masked) and the restore point."""


class DataStalled(RuntimeError):
    """A worker waited ``run.stall_timeout_s`` for a batch its data stream never delivered. The
    message names the stream, its stages and the cluster's free CPUs."""


class WorkersUnavailable(RuntimeError):
    """The cluster did not hold the workers' resources within ``run.wait_for_workers_s`` (at the
    start, or after a failure, waiting for lost capacity). The message names the resources."""


class Preempted(RuntimeError):
    """The run stopped on request (SIGTERM) after writing a checkpoint; the message says how to
    continue. The command exits with 143."""


class WorkerPreempted(RuntimeError):
    """A worker got SIGTERM (its node or pod is going away); every rank wrote the step's checkpoint
    and raised this. Retried: Ray Train restarts the workers from that checkpoint. With no retry
    left the command stops like a preempted driver (exit 143, continue with ``--resume``)."""


class StopRetrying(RuntimeError):
    """Raised in Ray Train's controller to end a run whose failure a retry cannot cure."""

    def __init__(self, message: str, cause: BaseException | None = None):
        super().__init__(message)
        self.cause = cause

    def __reduce__(self):  # keep .cause when Ray pickles the error to the driver
        return (type(self), (str(self), self.cause))


#: Errors whose message is the whole story: shown alone, never retried.
CLEAR_ERRORS = (
    ConfigError,
    DataError,
    OutOfMemory,
    CheckpointError,
    StorageUnavailable,
    DataStalled,
    WorkersUnavailable,
)


def inner_errors(error: BaseException, context: bool = True) -> Iterator[BaseException]:
    """The exceptions ``error`` wraps, most direct first: what Ray keeps (Ray Train's per-worker
    ``worker_failures``, a task's ``cause``, a controller's ``controller_failure``), then Python's
    own ``__cause__`` and (with ``context``) ``__context__``, the error being handled when this
    one was raised."""
    for attr in ("worker_failures", "_worker_failures", "cause", "controller_failure", "_base_exc"):
        inner = getattr(error, attr, None)
        if isinstance(inner, dict):
            yield from (value for value in inner.values() if isinstance(value, BaseException))
        elif isinstance(inner, BaseException):
            yield inner
    if error.__cause__ is not None:
        yield error.__cause__
    if context and error.__context__ is not None:
        yield error.__context__


def clear_error(error: BaseException | None) -> BaseException | None:
    """The error of :data:`CLEAR_ERRORS` behind ``error``, however deep Ray wrapped it.

    The innermost one wins: Ray re-raises a task's DataError as ``RayTaskError(DataError)``, an
    instance of both whose message is a remote traceback; the original holds the clean message."""
    return find_error(error, CLEAR_ERRORS)


def find_error(
    error: BaseException | None, types: type[BaseException] | tuple[type[BaseException], ...]
) -> BaseException | None:
    """The innermost error of ``types`` behind ``error`` (see :func:`clear_error`), or None."""
    found = None
    seen: set[int] = set()
    stack = [error]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, types):
            found = current
        stack.extend(reversed(list(inner_errors(current))))
    return found


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception along the chain of first causes (a Tune trial's error line)."""
    seen = set()
    current = error
    while id(current) not in seen:
        seen.add(id(current))
        inner = next(inner_errors(current, context=False), None)
        if inner is None:
            break
        current = inner
    return current


#: What Ray Data appends to an error of a read or map task it gave up retrying
#: (ray/data/_internal/util.py, _annotate_exception_with_retry_context, Ray 2.60): "Failed to
#: read stream iteratively after 1/10 attempts ..." and a hint to configure retries. For an error
#: of the data's own (a bad row), which no retry cures, the hint misleads.
_RAY_DATA_RETRY_NOTE = re.compile(r"\nFailed to [^\n]* after \d+/\d+ attempts \(total backoff")


def clear_message(error: BaseException) -> str:
    """The message of a clear error as the user should read it: without Ray Data's retry notes."""
    return _RAY_DATA_RETRY_NOTE.split(str(error), maxsplit=1)[0]
