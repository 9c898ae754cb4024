"""What a run prints: rerank-ray's own lines, warnings that matter and errors; the rest only when
verbose (``--verbose`` or ``RERANK_RAY_VERBOSE=1``).

Ray forwards every line its processes write (``log_to_driver``): transformers' load report of
each worker, Ray Train's controller, Ray Data's operators, deprecation warnings of the libraries.
By default a run does not forward them (they stay in Ray's session logs, whose folder the run
names); the workers hand their own lines to the driver through a :class:`Relay` (a Ray queue)
instead, and the driver prints them: a live progress bar when stdout is a terminal, the progress
line otherwise (logs, Ray jobs).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import IO, Any

from rerank_ray.errors import clear_error

VERBOSE_ENV = "RERANK_RAY_VERBOSE"

#: Driver-side notices hidden unless verbose: defaults announced, not problems to act on.
_HIDDEN_NOTICES = (
    "Token authentication is enabled for this Ray cluster",  # Ray's default since 2.5x, said once per start
    "Progress bars disabled",  # we turn Ray Data's bars off on purpose (our progress line replaces them)
)

_outlet: Any = None  # the worker side of the relay, set by attach()


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def set_verbose(on: bool) -> None:
    """Also reaches the workers: the embedded Ray passes the variable on in its runtime env."""
    if on:
        os.environ[VERBOSE_ENV] = "1"


class _DropNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(notice in message for notice in _HIDDEN_NOTICES)


class _DropOurErrors(logging.Filter):
    """Ray Data logs a task's error with its traceback ("An exception was raised from a task of
    operator ... Dataset execution will now abort") before it raises it to the caller. When the
    error is one of ours (a bad row beyond the sample, met by the driver's count pass), the
    command prints its message alone and exits 2: the traceback stays in Ray Data's log file.
    Ray Data's "Exception occurred in Ray Data or Ray Core internal code ... please open an issue"
    (ray/data/exceptions.py, Ray 2.60) is logged without the error, inside the ``except`` that
    caught it: a filter runs in that call, so ``sys.exc_info()`` still holds it."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        return clear_error(error) is None


def quiet_ray_logs() -> None:
    """Before ray.init on the driver: Ray's INFO lines off the console (Ray Data's stay in its
    session log file, ``ray-data.log``), and the hidden notices dropped. Warnings stay: Ray Data's
    "cluster resources are not enough ... may hang forever" is one a user must see."""
    if verbose():
        return
    import ray.data  # noqa: F401  (configures the "ray.data" logger and its handlers on import)

    logging.getLogger("ray").setLevel(logging.WARNING)
    for name in ("ray", "ray.data", "ray._private.authentication.authentication_token_setup"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotices) for f in logger.filters):
            logger.addFilter(_DropNotices())
        for handler in logger.handlers:
            if not isinstance(handler, logging.FileHandler):
                handler.setLevel(max(handler.level, logging.WARNING))
                handler.addFilter(_DropNotices())
                handler.addFilter(_DropOurErrors())


# ---------------------------------------------------------------- worker side
def attach(queue: Any) -> None:
    """In a worker: send this process's lines to the driver's relay (None: print them)."""
    global _outlet
    _outlet = queue


def say(text: str) -> None:
    """One line of rerank-ray's own: to the driver's relay when there is one, else printed."""
    _send({"text": text})


def progress(text: str, step: int, total: int, fields: dict[str, Any]) -> None:
    """The progress line, with the figures a progress bar shows."""
    _send({"text": text, "step": step, "total": total, **fields})


def _send(item: dict[str, Any]) -> None:
    global _outlet
    if _outlet is not None:
        try:
            _outlet.put_nowait(item)
            return
        except Exception:  # the driver (and its queue) gone: keep printing into the worker's log
            _outlet = None
    print(item["text"], flush=True)


# ---------------------------------------------------------------- driver side
class Relay:
    """The driver's end: a Ray queue the workers put their lines into, and a thread printing them.

    Ray Train's driver blocks in ``fit()`` and gets no report before the end (Ray Train 2.60's
    callbacks run in the controller actor), so the lines travel through a queue actor of their own.
    """

    def __init__(self, stream: IO[str] | None = None):
        import ray
        from ray.util.queue import Queue
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # On the driver's node: a queue on another node dies with that node, and the run with it
        # (tests/test_cluster.py loses a node mid-run); the driver's node lives as long as the driver.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
        self.view = View(stream or sys.stdout)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="rerank-ray-console", daemon=True)

    def __enter__(self) -> Relay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        try:  # every put of a worker returned before fit() did: what is left is in the queue now
            for item in self.queue.get_nowait_batch(self.queue.qsize()):
                self.view.show(item)
        finally:
            self.view.close()
            self.queue.shutdown()

    def _pump(self) -> None:
        from ray.util.queue import Empty

        while not self._stop.is_set():
            try:
                item = self.queue.get(block=True, timeout=0.5)
            except Empty:
                continue
            except Exception:  # Ray shutting down under us: the exit drains what it can
                return
            self.view.show(item)


class View:
    """Prints relayed lines: a tqdm bar for the progress on a terminal, plain lines otherwise."""

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.live = stream.isatty() if hasattr(stream, "isatty") else False
        self._bar: Any = None

    def show(self, item: dict[str, Any]) -> None:
        if "step" not in item or not self.live:
            self._write(item["text"])
            return
        bar = self._progress_bar(item["total"], item["step"])
        bar.n = item["step"]
        bar.set_postfix_str(
            f"epoch {item['epoch']:.2f} | loss {item['loss']:.4f} | {item['pairs_per_second']:.1f} {item.get('unit', 'pairs')}/s",
            refresh=False,
        )
        bar.refresh()

    def _progress_bar(self, total: int, step: int) -> Any:
        if self._bar is None or self._bar.total != total:
            from tqdm import tqdm

            self.close()
            self._bar = tqdm(total=total, initial=step, unit="step", file=self.stream, dynamic_ncols=True)
        return self._bar

    def _write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
