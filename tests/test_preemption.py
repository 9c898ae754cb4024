"""SIGTERM to a worker and to the driver (rerank_ray.training.preemption), in subprocesses."""

from __future__ import annotations

WORKER_SIGTERM = """
import os, signal, sys, time
from rerank_ray.training import preemption

preemption._WORKER_TRAINING.set()
preemption._install_worker_handler()
os.kill(os.getpid(), signal.SIGTERM)  # while training: noted, the process goes on
time.sleep(0.2)
print("noted" if preemption.worker_signalled() else "missed", flush=True)
preemption._WORKER_TRAINING.clear()
os.kill(os.getpid(), signal.SIGTERM)  # after training: the handler before (here the default) ends it
time.sleep(5)
print("still alive", flush=True)
"""


def test_a_workers_sigterm_is_noted_while_it_trains_and_ends_it_after():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", WORKER_SIGTERM], capture_output=True, text=True, timeout=60)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("[rerank-ray] this worker got SIGTERM: checkpoint at the next progress step")
    assert lines[1:] == ["noted"], done.stdout + done.stderr
    assert done.returncode == -15  # ended by the SIGTERM after training


DRIVER_SIGTERM = """
import os, signal, sys, time
from rerank_ray.training import preemption

with preemption.stop_on_sigterm(sys.argv[1]) as received:
    os.kill(os.getpid(), signal.SIGTERM)  # the first: noted, the stop marker written, the driver goes on
    time.sleep(0.2)
    print("asked" if received and preemption.stop_requested(sys.argv[1]) else "missed", flush=True)
    os.kill(os.getpid(), signal.SIGTERM)  # the second: the handler before (here the default) ends it
    time.sleep(5)
    print("still alive", flush=True)
"""


def test_the_drivers_first_sigterm_asks_the_run_to_stop_and_a_second_ends_it(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", DRIVER_SIGTERM, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    lines = done.stdout.splitlines()
    assert lines[0].startswith("[rerank-ray] SIGTERM: stopping at the next progress step")
    assert lines[1:] == ["asked"], done.stdout + done.stderr
    assert done.returncode == -15
